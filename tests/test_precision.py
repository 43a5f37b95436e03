"""--precision auto on a CPU: measured on the model's own shapes, cached per CPU/torch/model/shape,
written to the run's config and metrics, kept by a resumed run, and without effect on the random
numbers training draws."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification

import warmstart
from warmstart.config import FinetuneConfig, build, read_config_file
from warmstart.models import precision as measured
from warmstart.training.common import choose_precision


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WARMSTART_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def model(tiny_models):
    return AutoModelForSequenceClassification.from_pretrained(tiny_models["bert"], num_labels=2)


def fake_timings(
    monkeypatch, fp32_s: float, bf16_s: float, eager: float = 1.0, matmul: float = 0.5
) -> list:
    """Step times of a made-up CPU; ``matmul``: how many times slower its bf16 matrix products
    are."""
    calls = []

    def timed(model, mode, shape, attention=None, with_bf16=True):
        calls.append((mode, shape, attention))
        bf16 = bf16_s if with_bf16 else float("inf")
        return (fp32_s / eager, bf16 / eager) if attention == "eager" else (fp32_s, bf16)

    monkeypatch.setattr(measured, "_time_both", timed)
    monkeypatch.setattr(measured, "bf16_matmul_slowdown", lambda: matmul)
    return calls


def test_auto_precision_is_measured_once_then_read_from_the_cache(cache, model):
    first = measured.measure(model, "train", 16, 100)
    assert first.precision in ("fp32", "bf16") and not first.cached and first.fp32_ms > 0
    # bf16 is timed on the model unless this CPU's bf16 matrix products are hopelessly slow (no bf16
    # instructions).
    assert (first.bf16_ms > 0) == (measured.bf16_matmul_slowdown() < measured.HOPELESS)
    assert first.shape == (
        16,
        104,
    )  # the run's rows (under the token budget), tokens rounded up to a multiple of 8
    assert (cache / "precision.json").is_file()
    again = measured.measure(model, "train", 16, 99)  # the same timed shape: no new timing
    assert again.cached and (again.precision, again.speedup, again.fp32_ms) == (
        first.precision,
        first.speedup,
        first.fp32_ms,
    )
    other = measured.measure(model, "infer", 16, 100)  # inference is its own entry
    assert not other.cached and other.mode == "infer"
    # Inference times at most 8 rows whatever the batch, so that every command scoring a model
    # decides alike.
    assert (
        other.shape == (measured.MAX_ROWS, 128) == measured.measure(model, "infer", 64, 120).shape
    )


def test_bf16_is_chosen_only_when_measured_at_least_the_margin_faster(cache, model, monkeypatch):
    calls = fake_timings(monkeypatch, 1.0, 0.5)
    assert measured.measure(model, "train", 4, 64).precision == "bf16"
    fake_timings(monkeypatch, 1.0, 1.0 / (measured.MARGIN - 0.05))
    assert measured.measure(model, "train", 4, 256).precision == "fp32"
    assert calls == [
        ("train", (4, 64), None),
        ("train", (4, 64), "eager"),
    ]  # the second: the attention kernel


def test_a_cpu_without_bf16_instructions_times_only_fp32_and_says_why(cache, model, monkeypatch):
    # An AMD EPYC Zen 3 (AVX2 only): a bf16 matrix product ~70x slower than fp32's, one bf16 step of
    # a model minutes.
    fake_timings(monkeypatch, 1.0, 0.5, eager=1.5, matmul=70.0)
    timed = []
    real = measured._time_both
    monkeypatch.setattr(
        measured, "_time_both", lambda *a, **k: timed.append(k["with_bf16"]) or real(*a, **k)
    )
    choice = measured.measure(model, "train", 4, 64)
    assert (
        timed == [False, False]
        and choice.precision == "fp32"
        and choice.bf16_ms == 0 == choice.speedup
    )
    assert choice.attention() == "eager"  # the fp32 kernels are still compared
    assert "bf16 not timed on the model: a bf16 matrix product is 70x slower" in choice.describe()
    assert choice.record()["bf16_matmul_slowdown"] == 70.0
    assert measured.measure(
        model, "train", 4, 64
    ).cached  # and the answer is cached like a measured one


def test_the_cache_tells_apart_cpus_of_one_name():
    # "AMD EPYC" named both a Zen 3 without bf16 and a Zen 4 with it: the key carries family/model
    # and torch's ISA.
    assert torch.backends.cpu.get_cpu_capability() in measured.cpu_name()


def test_measuring_leaves_the_random_state_as_it_was(cache, model):
    torch.manual_seed(3)
    before = torch.get_rng_state()
    measured.measure(model, "train", 2, 32)
    assert torch.equal(torch.get_rng_state(), before)


def test_finetune_writes_the_measured_choice_to_its_config_and_metrics(
    cache, tiny_models, imdb_head, tmp_path, monkeypatch
):
    fake_timings(monkeypatch, 1.0, 0.5)  # a CPU where bf16 is twice as fast
    out = tmp_path / "run"
    r = warmstart.finetune(
        data=str(imdb_head),
        split="60,30",
        model=str(tiny_models["bert"]),
        epochs=1,
        out=str(out),
        progress=False,
    )
    text = (out / "config.yaml").read_text()
    assert text.startswith("# precision auto → bf16: bf16 2.00x fp32's speed")
    assert yaml.safe_load(text)["precision"] == "bf16"
    assert r.metrics["precision"] == "bf16" and r.metrics["precision_auto"]["bf16_speedup"] == 2.0
    # The resolved config still loads as a config: it repeats the run in bf16 wherever it runs.
    assert build(FinetuneConfig, read_config_file(str(out / "config.yaml"))).precision == "bf16"


def test_a_resumed_run_keeps_the_precision_and_attention_its_start_chose(cache, model, monkeypatch):
    calls = fake_timings(monkeypatch, 1.0, 0.5, eager=2.0)
    resumed = copy.deepcopy(model)
    cfg = SimpleNamespace(
        precision="auto", attn_implementation="auto", resume=True, cpu=True, batch_size=8
    )
    run = SimpleNamespace(
        saved_config=lambda: {"precision": "fp32", "attn_implementation": "sdpa"},
        say=lambda message: None,
    )
    # The choice is returned, never written into the options (they are resolved once, by the task).
    chosen = choose_precision(cfg, resumed, [50, 60], run)
    assert chosen.measured is None
    assert (chosen.precision, chosen.attention, resumed.config._attn_implementation) == (
        "fp32",
        "sdpa",
        "sdpa",
    )
    assert cfg.precision == "auto"  # only read
    assert calls == []
    fresh = SimpleNamespace(
        precision="auto", attn_implementation="auto", resume=False, cpu=True, batch_size=8
    )
    chosen = choose_precision(fresh, resumed, [50, 60], run)
    assert chosen.measured.precision == "bf16" == chosen.precision
    # Eager measured 2x faster: the run trains with it.
    assert chosen.attention == "eager" == resumed.config._attn_implementation


def test_eager_attention_is_chosen_only_when_measured_at_least_its_margin_faster(
    cache, model, monkeypatch
):
    fake_timings(monkeypatch, 1.0, 0.5, eager=measured.ATTENTION_MARGIN - 0.02)
    said = []
    run = SimpleNamespace(saved_config=dict, say=said.append)
    cfg = SimpleNamespace(
        precision="fp32", attn_implementation="auto", resume=False, cpu=True, batch_size=8
    )
    trained = copy.deepcopy(model)
    chosen = choose_precision(cfg, trained, [50, 60], run)
    assert (chosen.precision, chosen.attention, trained.config._attn_implementation) == (
        "fp32",
        "sdpa",
        "sdpa",
    )
    assert said[0].startswith("precision fp32 (given)") and "attention sdpa" in said[0]
    given = SimpleNamespace(
        precision="fp32", attn_implementation="eager", resume=False, cpu=True, batch_size=8
    )
    choose_precision(given, trained, [50, 60], run)
    assert (
        trained.config._attn_implementation == "eager" and len(said) == 1
    )  # given: nothing measured


def test_training_with_eager_attention_saves_a_model_that_loads_with_the_default_kernel(
    cache, tiny_models, imdb_head, tmp_path
):
    out = tmp_path / "run"
    warmstart.finetune(
        data=str(imdb_head),
        split="60,30",
        model=str(tiny_models["bert"]),
        epochs=1,
        attn_implementation="eager",
        out=str(out),
        progress=False,
    )
    assert yaml.safe_load((out / "config.yaml").read_text())["attn_implementation"] == "eager"
    reloaded = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert reloaded.config._attn_implementation == "sdpa"


def test_generation_precision_is_measured_and_greedy_text_matches_plain_generate(
    cache, tiny_gpt2, monkeypatch
):
    from warmstart.config import GenerateConfig
    from warmstart.inference.decoding import complete, generation_config
    from warmstart.models.causal import CausalLM

    calls = fake_timings(monkeypatch, 1.0, 0.5)
    lm = CausalLM.load(str(tiny_gpt2), cpu=True)
    assert lm.precision == "bf16" and lm.model.dtype == torch.bfloat16 and calls[0][0] == "generate"
    assert CausalLM.load(str(tiny_gpt2), cpu=True, precision="fp32").model.dtype == torch.float32
    # warmstart's decoding path (budgets, stopping criteria, padding) gives plain generate's greedy
    # tokens.
    ids = lm.tokenizer("The film was")["input_ids"]
    plain = lm.model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=12,
        min_new_tokens=12,
        do_sample=False,
    )[0, len(ids) :].tolist()
    cfg = GenerateConfig(
        prompts=["The film was"], model=str(tiny_gpt2), max_new_tokens=12, strategy="greedy"
    )
    gc = generation_config(cfg, lm.model.generation_config, [])
    gc.min_new_tokens = 12
    ours = complete(lm, ["The film was"], [ids], [12], gc, [])
    assert (
        ours[0].completions[0] == lm.tokenizer.decode(ids + plain)[len(lm.tokenizer.decode(ids)) :]
    )


def test_generate_cli_takes_a_precision(tiny_gpt2, capsys):
    from warmstart.cli import main

    assert (
        main(
            [
                "generate",
                "Once",
                "--model",
                str(tiny_gpt2),
                "--max-new-tokens",
                "4",
                "--precision",
                "fp32",
                "--cpu",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("Once")
