"""`generate`: a tiny random GPT-2 with the real GPT-2 BPE files (loaded through the same path as a
user's gpt2 folder) for the mechanics, and the bundled SmolLM2-135M-Instruct where a real language
model matters."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from warmstart.cli import main
from warmstart.errors import UserError

SEED_SENTENCE = "This is another step towards true AI"
SEED_IDS = [1212, 318, 1194, 2239, 3371, 2081, 9552]  # the seed's GPT-2 encoding of SEED_SENTENCE
PROMPTS = [
    "Hello",
    "The movie was",
    SEED_SENTENCE,
    "Once upon a time, in a land far away, there lived",
]


def gen(model: Path | str, prompts: list[str], **kw):
    from warmstart import generate

    return generate(prompts=prompts, model=str(model), **kw)


def test_gpt2_tokenizer_gives_the_seeds_ids(tiny_gpt2):
    from warmstart.models.causal import CausalLM

    lm = CausalLM.load(str(tiny_gpt2))
    assert lm.tokenizer(SEED_SENTENCE)["input_ids"] == SEED_IDS
    assert (
        lm.tokenizer.pad_token_id == lm.tokenizer.eos_token_id == 50256
    )  # GPT-2 has no pad token: set silently
    assert gen(tiny_gpt2, [SEED_SENTENCE], max_new_tokens=2)[0].prompt_tokens == len(SEED_IDS)


def test_seed_makes_sampling_reproducible(tiny_gpt2):
    kw = dict(num_return_sequences=3, max_new_tokens=12)
    a = gen(tiny_gpt2, PROMPTS[:2], seed=0, **kw)
    b = gen(tiny_gpt2, PROMPTS[:2], seed=0, **kw)
    c = gen(tiny_gpt2, PROMPTS[:2], seed=1, **kw)
    assert [g.completions for g in a] == [g.completions for g in b]
    assert [g.completions for g in a] != [g.completions for g in c]
    assert len(set(a[0].completions)) > 1  # several completions with auto strategy means sampling


@pytest.mark.parametrize(
    "max_length, max_new_tokens, expected",
    [
        (12, None, 12 - 7),  # prompt + completion <= max_length
        (None, 3, 3),
        (12, 3, 3),  # both: the stricter holds ...
        (9, 10, 2),  # ... whichever it is (HF's pipeline would give 10 here)
        (None, None, 100),  # neither: 100 new tokens
    ],
)
def test_the_stricter_of_max_length_and_max_new_tokens_holds(
    tiny_gpt2, max_length, max_new_tokens, expected
):
    g = gen(tiny_gpt2, [SEED_SENTENCE], max_length=max_length, max_new_tokens=max_new_tokens)[0]
    assert (g.prompt_tokens, g.completion_tokens, g.finish_reasons) == (7, [expected], ["length"])


def test_max_length_counts_each_prompts_own_tokens_in_a_batch(tiny_gpt2):
    gens = gen(tiny_gpt2, PROMPTS, max_length=20, batch_size=4)
    assert len({g.prompt_tokens for g in gens}) == len(PROMPTS)  # really padded
    assert [g.prompt_tokens + g.completion_tokens[0] for g in gens] == [20] * len(PROMPTS)


def test_batching_with_left_padding_matches_one_prompt_at_a_time(tiny_gpt2):
    batched = gen(tiny_gpt2, PROMPTS, max_new_tokens=10, batch_size=4, strategy="greedy")
    single = gen(tiny_gpt2, PROMPTS, max_new_tokens=10, batch_size=1)
    assert [
        g.prompt for g in batched
    ] == PROMPTS  # input order kept (batches are sorted by length inside)
    assert [g.completions for g in batched] == [g.completions for g in single]
    assert [g.completion_tokens for g in batched] == [[10]] * len(PROMPTS)


def test_beam_search_returns_the_requested_sequences(tiny_gpt2):
    g = gen(tiny_gpt2, PROMPTS[:2], num_beams=3, num_return_sequences=2, max_length=15)
    assert [len(x.completions) for x in g] == [2, 2]
    assert all(x.prompt_tokens + n <= 15 for x in g for n in x.completion_tokens)


def test_stop_strings_end_the_completion_before_them(tiny_gpt2):
    full = gen(tiny_gpt2, [SEED_SENTENCE], max_new_tokens=30, seed=3, strategy="sample")[0]
    text = full.completions[0]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), f"pick another seed: {text!r}"
    cut = gen(
        tiny_gpt2, [SEED_SENTENCE], max_new_tokens=30, seed=3, strategy="sample", stop=[stop]
    )[0]
    assert cut.completions == [text[: text.index(stop)]]
    assert cut.finish_reasons == ["stop"]
    assert 0 < cut.completion_tokens[0] < full.completion_tokens[0]


def test_streaming_writes_tokens_as_they_come_and_the_same_text(tiny_gpt2):
    from warmstart.tasks.generate import format_generations

    class Recorder(io.StringIO):
        writes = 0

        def write(self, s: str) -> int:
            self.writes += 1
            return super().write(s)

    out = Recorder()
    base = gen(tiny_gpt2, PROMPTS[:2], max_new_tokens=25)
    stop = base[1].completions[0][10:13]
    gens = gen(tiny_gpt2, PROMPTS[:2], max_new_tokens=25, stop=[stop], stream_to=out)
    assert gens[1].finish_reasons == ["stop"]
    assert out.getvalue() == format_generations(gens, "text")
    assert out.writes > 10  # piece by piece, not once at the end


def test_jsonl_and_txt_input_files_give_the_same_jsonl_rows_without_warnings(
    tiny_gpt2, tmp_path, capfd
):
    src = tmp_path / "prompts.jsonl"
    src.write_text(
        json.dumps({"prompt": SEED_SENTENCE}) + "\n\n" + json.dumps("Hello") + "\n",
        encoding="utf-8",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(
            [
                "generate",
                "--input",
                str(src),
                "--model",
                str(tiny_gpt2),
                "--format",
                "jsonl",
                "--max-new-tokens",
                "4",
                "--num-return-sequences",
                "2",
                "--seed",
                "0",
            ]
        )
    out, err = capfd.readouterr()
    assert rc == 0
    assert err == "" and not caught  # no pad-token or generation-config warnings
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in rows] == [SEED_SENTENCE, "Hello"]
    assert set(rows[0]) == {
        "prompt",
        "completions",
        "prompt_tokens",
        "completion_tokens",
        "finish_reasons",
    }
    assert rows[0]["prompt_tokens"] == 7 and rows[1]["prompt_tokens"] == 1
    assert all(len(r["completions"]) == 2 and r["completion_tokens"] == [4, 4] for r in rows)

    txt, dest = tmp_path / "prompts.txt", tmp_path / "out.jsonl"
    txt.write_text(f"{SEED_SENTENCE}\n\nHello\n", encoding="utf-8")
    assert (
        main(
            [
                "generate",
                "--input",
                str(txt),
                "--model",
                str(tiny_gpt2),
                "--format",
                "jsonl",
                "--max-new-tokens",
                "4",
                "--num-return-sequences",
                "2",
                "--seed",
                "0",
                "--out",
                str(dest),
            ]
        )
        == 0
    )
    assert capfd.readouterr().out == ""
    assert dest.read_text(encoding="utf-8") == out


def test_text_output_shows_prompt_and_completion(tiny_gpt2, capsys):
    assert (
        main(
            [
                "generate",
                "Hello",
                "The movie was",
                "--model",
                str(tiny_gpt2),
                "--max-new-tokens",
                "3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    gens = gen(tiny_gpt2, ["Hello", "The movie was"], max_new_tokens=3)
    assert (
        out == f"--- prompt 1 ---\nHello{gens[0].completions[0]}\n\n--- prompt 2 ---\nThe movie was"
        f"{gens[1].completions[0]}\n"
    )


def test_generate_bad_input_exits_2_with_one_error_line_and_no_output(
    tiny_gpt2, tiny_models, tmp_path, capsys
):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "ok"}\n{"prompt": "  "}\n', encoding="utf-8")
    m = ["--model", str(tiny_gpt2)]
    cases = {
        "prompt 2 is empty": ["generate", "fine", "", *m],
        "is not available offline": ["generate", "hi", "--model", "no-such-org/no-such-model"],
        "not a causal language model": ["generate", "hi", "--model", str(tiny_models["bert"])],
        "no chat template": ["generate", "hi", "--chat", *m],
        "greedy decoding gives one completion": [
            "generate",
            "hi",
            "--strategy",
            "greedy",
            "--num-return-sequences",
            "2",
            *m,
        ],
        "leaves no room": ["generate", SEED_SENTENCE, "--max-length", "7", *m],
        "more than this model's limit of 128": ["generate", "hi", "--max-new-tokens", "200", *m],
        "option 'temperature' must be ≥ 0.01 and ≤ 100, got 0.0": [
            "generate",
            "hi",
            "--temperature",
            "0",
            *m,
        ],
        "option 'temperature' must be ≥ 0.01 and ≤ 100, got 5e-324": [
            "generate",
            "hi",
            "--temperature",
            "5e-324",
            *m,
        ],
        "option 'temperature' must be ≥ 0.01 and ≤ 100, got 1e+308": [
            "generate",
            "hi",
            "--temperature",
            "1e308",
            *m,
        ],
        "option 'repetition_penalty' must be ≥ 0.01 and ≤ 100": [
            "generate",
            "hi",
            "--repetition-penalty",
            "1e308",
            *m,
        ],
        "option 'temperature' must be a finite number, got inf": [
            "generate",
            "hi",
            "--temperature",
            "inf",
            *m,
        ],
        "row 2": ["generate", "--input", str(empty), *m],
        "does not exist": ["generate", "--input", str(tmp_path / "missing.txt"), *m],
    }
    for expected, argv in cases.items():
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert captured.out == ""
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (
            argv,
            captured.err,
        )
    with pytest.raises(UserError, match="is empty"):
        gen(tiny_gpt2, [" "])


# ---- the bundled SmolLM2-135M-Instruct
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory) -> dict:
    """Convert smollm2 once into a fresh WARMSTART_HOME, after first killing a conversion half-way
    through."""
    from warmstart.models import bundled as lm

    home = tmp_path_factory.mktemp("warmstart-home")
    old = os.environ.get("WARMSTART_HOME")
    os.environ["WARMSTART_HOME"] = str(home)
    target = home / "models" / lm.SMOLLM2_DIR
    proc = subprocess.Popen(
        [sys.executable, "-c", "from warmstart.models import bundled; bundled.smollm2()"],
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    deadline = time.time() + 120
    while (
        not list(target.parent.glob(f".{target.name}.tmp*"))
        and proc.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.05)
    time.sleep(0.5)  # let it write into the temporary folder
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    info = {
        "home": home,
        "target": target,
        "killed_left_target": target.exists(),
        "killed_left_tmp": bool(list(target.parent.glob(f".{target.name}.tmp*"))),
    }
    started = time.perf_counter()
    lm.smollm2()
    info["convert_s"] = time.perf_counter() - started
    info["stale_after"] = list(target.parent.glob(f".{target.name}.*"))
    yield info
    if old is None:
        os.environ.pop("WARMSTART_HOME", None)
    else:
        os.environ["WARMSTART_HOME"] = old


def test_smollm2_conversion_is_atomic_and_a_second_load_reuses_it(smollm2):
    from warmstart.models.bundled import SOURCE_FILE
    from warmstart.models.causal import CausalLM

    assert (
        smollm2["killed_left_tmp"] and not smollm2["killed_left_target"]
    )  # killed mid-way: no broken model
    assert smollm2["stale_after"] == []  # the killed run's temporary folder was cleaned up
    target = smollm2["target"]
    assert {"config.json", "model.safetensors", "tokenizer.json", SOURCE_FILE} <= {
        p.name for p in target.iterdir()
    }
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    lm = CausalLM.load("smollm2", precision="fp32")
    assert (
        target / "model.safetensors"
    ).stat().st_mtime_ns == stamp  # not converted again (no timing asserted)
    assert lm.model.config.model_type == "llama" and lm.model.num_parameters() > 100_000_000


def test_the_smollm2_alias_fine_tunes_and_the_saved_model_reloads_in_plain_transformers(
    smollm2, tmp_path
):
    """The converted folder's config no longer says 'quantized with gguf': saving a fine-tuned copy
    crashed."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    import warmstart
    from conftest import SST2

    assert (
        getattr(AutoConfig.from_pretrained(smollm2["target"]), "quantization_config", None) is None
    )
    result = warmstart.finetune(
        model="smollm2",
        data=str(SST2),
        limit=40,
        split="24,16",
        max_steps=2,
        batch_size=8,
        max_length=32,
        out=str(tmp_path / "run"),
        progress=False,
        precision="fp32",
    )
    model = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    assert model.config.model_type == "llama" and model.config.num_labels == 2


def test_seed_example_gives_different_completions_within_max_length(smollm2, capsys):
    argv = [
        "generate",
        "Humanity today is a ",
        "--max-length",
        "50",
        "--num-return-sequences",
        "5",
        "--seed",
        "0",
        # auto would measure int8 and int4 exports of SmolLM2 first (test_quantize does that)
        "--quantize",
        "none",
    ]
    assert main([*argv, "--format", "jsonl"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(row["completions"]) == 5 and len(set(row["completions"])) > 1
    assert all(row["prompt_tokens"] + n <= 50 for n in row["completion_tokens"])
    assert all(
        r == "eos" or row["prompt_tokens"] + n == 50
        for n, r in zip(row["completion_tokens"], row["finish_reasons"])
    )


def test_chat_uses_the_chat_template(smollm2):
    from warmstart.models.causal import CausalLM

    question = "What is the capital of France?"
    g = gen("smollm2", [question], chat=True, max_new_tokens=20, quantize="none")[0]
    tok = CausalLM.load("smollm2").tokenizer
    templated = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    assert "<|im_start|>assistant" in templated
    n_templated = len(tok(templated, add_special_tokens=False)["input_ids"])
    assert g.prompt_tokens == n_templated > len(tok(question)["input_ids"])
    assert "Paris" in g.completions[0]
