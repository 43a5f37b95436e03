"""`finetune --task causal-lm`: a decoder-only model tuned on text pairs, the loss on the completion
alone, scored on generated text each epoch, saved so that `generate` prompts it as it was trained. A
tiny random Llama with a character-level tokenizer built here stands in for SmolLM2."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

import warmstart
from warmstart.cli import main
from warmstart.config import FinetuneConfig
from warmstart.data.batching import IGNORE
from warmstart.kinds.causal_lm import CausalLMTuning, pack, pad_rows
from warmstart.models.causal import instruction_ids

LETTERS = "abcdef"
CHARS = LETTERS + " =:<>/uasycopy"
CHAT = (
    "{% for m in messages %}<{{ m['role'][0] }}>{{ m['content'] }}</>{% endfor %}"
    "{% if add_generation_prompt %}<a>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random 2-layer LlamaForCausalLM and a one-character-a-token tokenizer with a small chat
    template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(CHARS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=64,
    )
    fast.chat_template = CHAT
    folder = tmp_path_factory.mktemp("tiny-llama")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def copy_pairs(tmp_path_factory):
    """Short strings whose target is the string itself: train, valid and test tables."""
    rng = random.Random(0)
    words = ["".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 4))) for _ in range(700)]
    folder = tmp_path_factory.mktemp("copy")
    pd.DataFrame({"src": words, "tgt": words}).to_csv(folder / "pairs.tsv", sep="\t", index=False)
    return folder / "pairs.tsv"


def test_loss_mask_covers_exactly_the_completion(tiny_llama, copy_pairs, tmp_path):
    from transformers import AutoTokenizer

    for chat in (False, True):
        cfg = FinetuneConfig(
            task="causal-lm",
            data=str(copy_pairs),
            split="20,5",
            model=str(tiny_llama),
            source_column="src",
            target_column="tgt",
            template="copy: {source} =",
            chat=chat,
            out=str(tmp_path / "r"),
        )
        kind = CausalLMTuning(cfg)
        tok = AutoTokenizer.from_pretrained(tiny_llama)
        data = kind.encode(tok, "train", 64, cfg)
        for i in range(len(data)):
            row = data[i]
            source, target = kind.parts["train"].sources[i], kind.parts["train"].targets[i]
            prompt = instruction_ids(tok, source, "copy: {source} =", chat)
            n = len(prompt)
            assert row["input_ids"][:n] == prompt  # the prompt exactly as generate tokenises it
            assert row["labels"][:n] == [IGNORE] * n  # never a loss on the prompt
            assert (
                row["labels"][n:] == row["input_ids"][n:]
            )  # the completion: every token of it, EOS last
            assert (
                tok.decode(row["labels"][n:-1]) == target and row["labels"][-1] == tok.eos_token_id
            )
        if chat:
            assert tok.decode(prompt).startswith("<u>copy: ") and tok.decode(prompt).endswith(
                "</><a>"
            )
    batch = pad_rows([data[0], data[1]], tok.pad_token_id, packed=False)
    assert batch["input_ids"].shape[1] % 8 == 0
    assert (
        batch["labels"][batch["attention_mask"] == 0] == IGNORE
    ).all()  # padding is never learned


def test_packed_rows_keep_examples_apart(tiny_llama):
    """Two examples packed in one row give the logits each gives alone: attention does not cross
    them."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    a, b = [5, 6, 7, 8, 9], [10, 11, 12]
    rows = pack([a, b], [a, b], length=16)
    assert rows["input_ids"] == [a + b] and rows["position_ids"] == [[0, 1, 2, 3, 4, 0, 1, 2]]
    batch = pad_rows([{k: v[0] for k, v in rows.items()}], 0, packed=True)
    assert "attention_mask" not in batch
    with torch.no_grad():
        # As in training: no key/value cache (kinds.causal_lm turns it off)
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]
        alone = [model(input_ids=torch.tensor([x])).logits[0] for x in (a, b)]
    torch.testing.assert_close(packed[:8], torch.cat(alone), rtol=1e-4, atol=1e-4)


def copy_args(tiny_llama, copy_pairs, out, *extra):
    return [
        "finetune",
        "--task",
        "causal-lm",
        "--data",
        str(copy_pairs),
        "--split",
        "600,40,60",
        "--model",
        str(tiny_llama),
        "--source-column",
        "src",
        "--target-column",
        "tgt",
        "--template",
        "copy: {source} =",
        "--epochs",
        "10",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--metrics",
        "exact_match,cer",
        "--precision",
        "fp32",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def copy_run(tiny_llama, copy_pairs, tmp_path_factory):
    out = tmp_path_factory.mktemp("copy-run") / "run"
    assert main(copy_args(tiny_llama, copy_pairs, out, "--packing", "--max-length", "48")) == 0
    return out


def test_a_tiny_llama_learns_to_copy_short_strings(copy_run):
    metrics = json.loads((copy_run / "metrics.json").read_text())
    epochs = metrics["epochs"]
    assert epochs[-1]["valid_exact_match"] > epochs[0]["valid_exact_match"]
    assert (
        metrics["test"]["exact_match"] >= 0.5 and metrics["test"]["max_new_tokens"] == 8
    )  # 1.5 x (4 + EOS)
    preds = [json.loads(x) for x in (copy_run / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == metrics["rows"]["test"] >= 58 and set(preds[0]) == {
        "source",
        "reference",
        "prediction",
    }
    assert (copy_run / "valid_predictions.jsonl").is_file()


def test_the_saved_model_generates_in_its_trained_format(copy_run):
    """generate applies the saved template: the bare source is enough, and the answers are the test
    pass's."""
    preds = [json.loads(x) for x in (copy_run / "predictions.jsonl").read_text().splitlines()][:8]
    config = json.loads((copy_run / "model" / "config.json").read_text())
    assert (
        config["instruction_template"] == "copy: {source} =" and config["instruction_chat"] is False
    )
    gens = warmstart.generate(
        model=str(copy_run),
        prompts=[p["source"] for p in preds],
        strategy="greedy",
        max_new_tokens=8,
        precision="fp32",
    )
    assert [g.completions[0] for g in gens] == [p["prediction"] for p in preds]


def test_evaluate_and_predict_score_the_saved_model_as_its_test_pass_did(copy_run, tmp_path):
    preds = [json.loads(x) for x in (copy_run / "predictions.jsonl").read_text().splitlines()]
    test = tmp_path / "test.tsv"
    test.write_text("src\ttgt\n" + "".join(f"{p['source']}\t{p['reference']}\n" for p in preds))
    result = warmstart.evaluate(
        model=str(copy_run),
        data=str(test),
        source_column="src",
        target_column="tgt",
        metrics="exact_match,cer",
        precision="fp32",
        out=str(tmp_path / "m.json"),
        progress=False,
    )
    first = {
        p["source"]: p for p in reversed(preds)
    }  # a source given twice is written and scored once
    assert result.metrics["n"] == len(first) and result.metrics["max_new_tokens"] == 8
    assert result.metrics["exact_match"] == pytest.approx(
        np.mean([p["prediction"] == p["reference"] for p in first.values()])
    )
    rows = [json.loads(x) for x in (tmp_path / "m.predictions.jsonl").read_text().splitlines()]
    assert {r["source"]: r["prediction"] for r in rows} == {
        s: p["prediction"] for s, p in first.items()
    }
    out = warmstart.predict(
        model=str(copy_run), texts=[p["source"] for p in preds[:5]], precision="fp32"
    )
    assert [p.output for p in out] == [p["prediction"] for p in preds[:5]]


def test_lora_causal_lm_with_chat_and_the_trainer_engine(tiny_llama, copy_pairs, tmp_path):
    out = tmp_path / "lora"
    result = warmstart.finetune(
        task="causal-lm",
        data=str(copy_pairs),
        split="96,16,16",
        model=str(tiny_llama),
        source_column="src",
        target_column="tgt",
        chat=True,
        system="be brief",
        epochs=1,
        batch_size=16,
        lora_r=4,
        lora_save="adapter",
        engine="trainer",
        metrics="exact_match",
        precision="fp32",
        out=str(out),
        progress=False,
    )
    lora = result.metrics["lora"]
    assert lora["targets"] == ["q_proj", "v_proj"] and lora["head"] == []
    assert (result.model_dir / "adapter_config.json").is_file()
    assert "valid_exact_match" in result.metrics["epochs"][0]
    gens = warmstart.generate(
        model=str(out), prompts=["abc"], strategy="greedy", max_new_tokens=4, precision="fp32"
    )
    # the saved chat format and system message, applied by generate (and replaced by another system
    # message)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "model")

    def chat_tokens(system: str) -> int:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": "abc"}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tok(text, add_special_tokens=False)["input_ids"])

    assert gens[0].prompt_tokens == chat_tokens("be brief")
    other = warmstart.generate(
        model=str(out),
        prompts=["abc"],
        chat=True,
        system="be very brief",
        strategy="greedy",
        max_new_tokens=4,
        precision="fp32",
    )
    assert other[0].prompt_tokens == chat_tokens("be very brief") == chat_tokens("be brief") + 5


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--target-column", "nope"], "nope"),
        (["--template", "copy this"], "has no {source}"),
        (["--text-column", "src"], "--text-column does not apply to --task causal-lm"),
        (["--system", "be brief"], "needs --chat"),
    ],
)
def test_bad_causal_lm_input_gets_one_clear_error(
    tiny_llama, copy_pairs, tmp_path, capsys, extra, message
):
    args = [
        "finetune",
        "--task",
        "causal-lm",
        "--data",
        str(copy_pairs),
        "--split",
        "20,5",
        "--model",
        str(tiny_llama),
        "--source-column",
        "src",
        "--target-column",
        "tgt",
        "--out",
        str(tmp_path / "r"),
        "--no-progress",
        *extra,
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "r").exists()


def test_an_encoder_or_an_empty_target_is_refused(
    tiny_models, tiny_llama, copy_pairs, tmp_path, capsys
):
    args = [
        "finetune",
        "--task",
        "causal-lm",
        "--data",
        str(copy_pairs),
        "--split",
        "20,5",
        "--source-column",
        "src",
        "--target-column",
        "tgt",
        "--no-progress",
    ]
    assert main([*args, "--model", str(tiny_models["bert"]), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a BertModel, not a causal language model" in err[0], err
    empty = tmp_path / "empty.tsv"
    empty.write_text("src\ttgt\nabc\tabc\nbca\t \n", encoding="utf-8")
    assert (
        main(
            [
                "finetune",
                "--task",
                "causal-lm",
                "--data",
                str(empty),
                "--model",
                str(tiny_llama),
                "--out",
                str(tmp_path / "b"),
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty.tsv" in err[0] and "row 2" in err[0] and "empty" in err[0], err


def test_causal_lm_resume_after_kill_gives_the_same_metrics(tiny_llama, copy_pairs, tmp_path):
    from conftest import kill_after_checkpoint

    args = [
        "finetune",
        "--task",
        "causal-lm",
        "--data",
        str(copy_pairs),
        "--split",
        "160,16,16",
        "--model",
        str(tiny_llama),
        "--source-column",
        "src",
        "--target-column",
        "tgt",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--lora-r",
        "4",
        "--save-steps",
        "5",
        "--metrics",
        "exact_match,chrf",
        "--precision",
        "fp32",
        "--no-progress",
    ]
    killed = tmp_path / "killed"
    ckpt = kill_after_checkpoint(args, killed)
    assert 0 < ckpt["step"] < 20
    assert (
        main(["finetune", "--config", str(killed / "config.yaml"), "--resume", "--no-progress"])
        == 0
    )
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    resumed, full = (
        json.loads((d / "metrics.json").read_text()) for d in (killed, tmp_path / "full")
    )
    assert resumed["test"] == full["test"]
    volatile = {"epoch_seconds", "elapsed_seconds", "samples_per_s"}
    assert [{k: v for k, v in e.items() if k not in volatile} for e in resumed["epochs"]] == [
        {k: v for k, v in e.items() if k not in volatile} for e in full["epochs"]
    ]
