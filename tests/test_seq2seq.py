"""Text-to-text: pairs read with clear errors, metrics of generated text, and encoder-decoder
fine-tuning (--task seq2seq) through the real code paths on tiny models built from their config
classes."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

import warmstart
from warmstart.cli import main
from warmstart.config import FinetuneConfig, make
from warmstart.data.batching import IGNORE
from warmstart.data.pairs import read_pairs
from warmstart.data.tables import split_examples
from warmstart.errors import UserError
from warmstart.kinds import KINDS
from warmstart.metrics import text_metrics
from warmstart.models.scratch import symbol_tokenizer

VERSES = Path(__file__).resolve().parents[2] / "shared" / "data" / "bible-en-es" / "verses.tsv"


def test_text_metrics_score_exact_copies_perfectly_and_count_edits():
    refs = ["the cat sat on the mat", "a b c d"]
    perfect = text_metrics(refs, refs, ["bleu", "chrf", "exact_match", "cer", "wer"])
    assert perfect == {
        "bleu": pytest.approx(100),
        "chrf": pytest.approx(100),
        "exact_match": 1.0,
        "cer": 0.0,
        "wer": 0.0,
    }
    m = text_metrics(["the cat sat on the mat", "a b x d"], refs, ["exact_match", "wer", "cer"])
    assert m["exact_match"] == 0.5
    assert m["wer"] == pytest.approx(1 / 10)  # one word wrong of 6 + 4
    assert m["cer"] == pytest.approx(1 / 29)  # one character of 22 + 7
    assert set(text_metrics(["x"], ["y"], ["chrf"])) == {"chrf"}


def test_text_metrics_refuse_an_unknown_name():
    with pytest.raises(ValueError, match="unknown text metric"):
        text_metrics(["a"], ["a"], ["rouge"])


def test_pairs_name_file_row_and_column_of_an_empty_target(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("en\tes\nhello\thola\nbye\t  \n")
    with pytest.raises(UserError, match=r"p.tsv', row 2, column 'es': target text is empty"):
        read_pairs(str(path), "en", "es")
    with pytest.raises(UserError, match="no source column found; name it with --source-column"):
        read_pairs(str(path))
    pairs = read_pairs(str(path), "en", targets=False)
    assert pairs.sources == ["hello", "bye"] and pairs.targets is None


def test_a_pronouncing_dictionary_reads_as_word_and_phoneme_pairs(tmp_path):
    path = tmp_path / "tiny.dict"
    path.write_text("read R IY1 D\nread(2) R EH1 D\nwarm W AO1 R M # comment\n")
    pairs = read_pairs(str(path))
    assert pairs.sources == ["read", "read", "warm"]
    assert pairs.targets == ["R IY1 D", "R EH1 D", "W AO1 R M"]


def test_a_word_with_two_pronunciations_is_right_when_either_is_written():
    refs = [["R IY1 D", "R EH1 D"], ["W AO1 R M"]]
    m = text_metrics(["R EH1 D", "W AO1 R N"], refs, ["exact_match", "wer", "bleu"])
    assert m["exact_match"] == 0.5
    assert m["wer"] == pytest.approx(
        1 / 7
    )  # "R EH1 D" needs no edit; one phoneme of four is wrong in "warm"
    # the closest reference, not the first: "R EH0 D" is one edit from "R EH1 D" and from "R IY1 D"
    # ...
    assert text_metrics(["R EH1 T"], [["R IY1 D", "R EH1 D"]], ["wer"])["wer"] == pytest.approx(
        1 / 3
    )
    # ... and a single reference scores as before
    assert text_metrics(["R EH1 D"], ["R IY1 D"], ["wer"]) == text_metrics(
        ["R EH1 D"], [["R IY1 D"]], ["wer"]
    )
    assert (
        m["bleu"]
        == text_metrics(["R EH1 D", "W AO1 R N"], [["R EH1 D"], ["W AO1 R M"]], ["bleu"])["bleu"]
    )


def test_a_split_keeps_every_pronunciation_of_a_word_on_one_side(tmp_path):
    words = short_strings(300, 3, "abcdefghij")
    lines = [f"{w} {' '.join(w.upper())}" for w in words] + [
        f"{w}(2) {w.upper()[0]}" for w in words[::3]
    ]
    path = tmp_path / "two.dict"
    path.write_text("\n".join(lines) + "\n")
    parts = split_examples(read_pairs(str(path)), "0.8,0.1,0.1", True, 0)
    seen = [set(p.sources) for p in parts]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert sum(len(p) for p in parts) == len(lines)
    test, refs = parts[2].distinct()
    assert len(test) == len(seen[2]) and sorted(sum(refs, [])) == sorted(parts[2].targets)
    assert any(len(r) == 2 for r in refs)


def test_a_split_that_leaves_a_part_empty_names_it(tmp_path):
    path = tmp_path / "few.tsv"
    path.write_text(
        "src\ttgt\n" + "".join(f"{w}\t{w}{i}\n" for w in ("abc", "hello", "xyz") for i in range(10))
    )
    with pytest.raises(
        UserError, match="few.tsv: --split '25,5' leaves the valid part empty: a source's rows"
    ):
        split_examples(read_pairs(str(path)), "25,5", False, 0)


def test_the_symbols_tokenizer_makes_each_phoneme_one_token_and_spells_words():
    tok = symbol_tokenizer(["read R IY1 D", "ready R EH1 D IY0"] * 20 + ["xylophone"])
    phonemes = tok("R EH1 D IY0")["input_ids"]
    assert tok.convert_ids_to_tokens(phonemes)[1:-1] == ["R", "EH1", "D", "IY0"]
    assert tok.decode(phonemes, skip_special_tokens=True) == "R EH1 D IY0"
    word = tok("xylophone read")["input_ids"]
    # a word seen once is spelled out; one seen 20 times ("read") is a symbol like a phoneme
    assert len(word) == 2 + 9 + 1 and tok.decode(word, skip_special_tokens=True) == "xylophone read"


# --- fine-tuning
# ---------------------------------------------------------------------------------------------


def short_strings(n: int, seed: int, alphabet: str = "abcdef") -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(2, 5))) for _ in range(n)]


@pytest.fixture(scope="module")
def copy_pairs(tmp_path_factory) -> Path:
    """260 short random strings paired with themselves: 220 to train on, 40 held out."""
    words = short_strings(260, 0)
    path = tmp_path_factory.mktemp("pairs") / "copy.tsv"
    path.write_text("src\ttgt\n" + "".join(f"{w}\t{w}\n" for w in words))
    return path


COPY = dict(
    task="seq2seq",
    split="220,40",
    batch_size=8,
    lr=3e-3,
    warmup_ratio=0.05,
    precision="fp32",
    metrics="exact_match,cer",
    metric_for_best="cer",
    progress=False,
)


@pytest.fixture(scope="module")
def scratch_run(tmp_path_factory, copy_pairs):
    out = tmp_path_factory.mktemp("scratch") / "run"
    return warmstart.finetune(
        data=str(copy_pairs),
        from_scratch=True,
        tokenizer="char",
        epochs=5,
        save_steps=10,
        save_total_limit=50,
        out=str(out),
        **COPY,
    )


def test_padded_target_positions_are_ignored_by_the_loss(copy_pairs):
    cfg = make(
        FinetuneConfig,
        None,
        dict(data=str(copy_pairs), task="seq2seq", from_scratch=True, tokenizer="char"),
    )
    kind = KINDS["seq2seq"](cfg)
    _, model, tokenizer = kind.load_model_and_tokenizer(cfg)
    data = kind.encode(tokenizer, "train", 64, cfg)
    job = kind.job(cfg, tokenizer, {"train": data})
    order = sorted(range(len(data)), key=lambda i: len(data[i]["labels"]))
    short, long = order[0], order[-1]
    batch = job.collate([data[short], data[long]])
    n = len(data[short]["labels"])
    assert n < len(data[long]["labels"])
    assert batch["labels"][0, :n].tolist() == data[short]["labels"]
    assert (batch["labels"][0, n:] == IGNORE).all()
    assert (batch["labels"][1] != IGNORE).sum() == len(data[long]["labels"])
    if (
        not torch.cuda.is_available()
    ):  # on a CPU padded to the batch's longest row, not up to a multiple of 8
        assert batch["labels"].shape[1] == len(data[long]["labels"])
        assert batch["input_ids"].shape[1] == max(len(data[i]["input_ids"]) for i in (short, long))
    model.eval()
    with torch.no_grad():
        both = model(**batch).loss
        alone = [model(**job.collate([data[i]])).loss for i in (short, long)]
    counts = [len(data[i]["labels"]) for i in (short, long)]
    # Padding changes nothing: the batch's loss is the token-weighted mean of each pair's loss
    # alone.
    assert both.item() == pytest.approx(
        sum(a.item() * c for a, c in zip(alone, counts)) / sum(counts), rel=1e-4
    )


def test_a_bart_from_scratch_learns_to_copy_and_writes_its_run_folder(scratch_run):
    epochs = scratch_run.metrics["epochs"]
    assert epochs[0]["valid_exact_match"] < 0.5 and epochs[-1]["valid_exact_match"] >= 0.9, epochs
    assert epochs[-1]["valid_cer"] < epochs[0]["valid_cer"]
    run = scratch_run.run_dir
    for name in (
        "model/config.json",
        "model/generation_config.json",
        "model/tokenizer.json",
        "predictions.jsonl",
        "valid_predictions.jsonl",
        "metrics.json",
        "history.jsonl",
        "config.yaml",
    ):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    # One line per distinct valid source (the 40 held-out strings, a repeated one written once).
    assert (
        len(rows)
        == scratch_run.metrics["valid_best"]["n"]
        == len({r["source"] for r in rows})
        >= 38
    )
    assert set(rows[0]) >= {"source", "reference", "prediction"}
    # No test part: predictions.jsonl is the best model's valid outputs, scored like an epoch.
    best = scratch_run.metrics["valid_best"]
    assert best["exact_match"] == pytest.approx(
        np.mean([r["prediction"] == r["reference"] for r in rows])
    )
    # The token limit comes from the training targets (at most 5 characters + framing), never a
    # library's 20.
    assert json.loads((run / "model/generation_config.json").read_text())["max_new_tokens"] == 11


def test_resume_from_a_mid_run_checkpoint_ends_with_the_same_metrics(
    scratch_run, copy_pairs, tmp_path
):
    cut = tmp_path / "cut"
    shutil.copytree(scratch_run.run_dir, cut)
    (cut / "metrics.json").unlink()
    steps = sorted(int(p.name.split("-")[1]) for p in (cut / "checkpoints").iterdir())
    mid = next(s for s in steps if s % 10 == 0 and s % 28)  # inside an epoch (28 batches each)
    for p in (cut / "checkpoints").iterdir():
        if p.name != f"checkpoint-{mid}":
            shutil.rmtree(p)
    again = warmstart.finetune(
        data=str(copy_pairs),
        from_scratch=True,
        tokenizer="char",
        epochs=5,
        save_steps=10,
        save_total_limit=50,
        out=str(cut),
        resume=True,
        **COPY,
    )
    a, b = scratch_run.metrics["epochs"], again.metrics["epochs"]
    keys = ("train_loss", "valid_loss", "valid_exact_match", "valid_cer")
    assert [[e[k] for k in keys] for e in a] == [[e[k] for k in keys] for e in b]
    assert again.metrics["valid_best"] == scratch_run.metrics["valid_best"]


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory) -> Path:
    """A random 2+2-layer T5 built from its config class, with a character tokenizer in T5's framing
    (text then </s>; <pad> starts the decoder), saved like a user's model folder."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    vocab = {t: i for i, t in enumerate(["<pad>", "</s>", "<unk>", *"abcdefghij"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=64,
    )
    folder = tmp_path_factory.mktemp("tiny-t5")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(vocab),
        d_model=64,
        d_kv=32,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        dropout_rate=0.0,
    )
    T5ForConditionalGeneration(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sort_pairs(tmp_path_factory) -> Path:
    """Short strings paired with their letters sorted. A T5's cross-attention carries no position
    (its relative position bias is in self-attention only), so a tiny T5 learns to copy an order
    slowly; sorting needs none."""
    words = short_strings(260, 1)
    path = tmp_path_factory.mktemp("pairs") / "sort.tsv"
    path.write_text("src\ttgt\n" + "".join(f"{w}\t{''.join(sorted(w))}\n" for w in words))
    return path


def test_a_saved_t5_learns_with_the_trainer_engine_and_predicts_as_it_was_scored(
    tiny_t5, sort_pairs, tmp_path
):
    r = warmstart.finetune(
        data=str(sort_pairs),
        model=str(tiny_t5),
        engine="trainer",
        epochs=5,
        out=str(tmp_path / "t5"),
        **COPY,
    )
    epochs = r.metrics["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5]
    assert epochs[-1]["valid_exact_match"] > epochs[0]["valid_exact_match"] + 0.15, (
        epochs
    )  # 0.18 → 0.36 here
    assert (
        type(AutoModelForSeq2SeqLM.from_pretrained(r.model_dir)).__name__
        == "T5ForConditionalGeneration"
    )
    rows = [json.loads(line) for line in (r.run_dir / "predictions.jsonl").read_text().splitlines()]
    preds = warmstart.predict(model=str(r.run_dir), texts=[x["source"] for x in rows])
    assert [p.output for p in preds] == [x["prediction"] for x in rows]


def test_evaluate_honours_max_new_tokens_and_says_which_outputs_it_cut(
    scratch_run, copy_pairs, tmp_path
):
    test = tmp_path / "test.tsv"
    lines = copy_pairs.read_text().splitlines(keepends=True)
    test.write_text("".join(lines[:1] + lines[-40:]))  # the header and the 40 valid pairs
    full = warmstart.evaluate(
        model=str(scratch_run.run_dir),
        data=str(test),
        out=str(tmp_path / "m.json"),
        metrics="exact_match,cer",
        progress=False,
    )
    assert full.metrics["max_new_tokens"] == 11 and full.metrics["cut_at_limit"] == 0
    assert full.metrics["exact_match"] == scratch_run.metrics["valid_best"]["exact_match"]
    rows = [
        json.loads(line) for line in (tmp_path / "m.predictions.jsonl").read_text().splitlines()
    ]
    distinct = len(
        {line.split("\t")[0] for line in lines[-40:]}
    )  # a source given twice is written once
    assert len(rows) == full.metrics["n"] == distinct and all(
        r["finish_reason"] == "eos" for r in rows
    )
    # Two new tokens: BART's <s>, then one character; every output is cut there and says so.
    cut = warmstart.evaluate(
        model=str(scratch_run.run_dir),
        data=str(test),
        max_new_tokens=2,
        predictions=str(tmp_path / "cut.jsonl"),
        metrics="exact_match",
        progress=False,
    )
    rows = [json.loads(line) for line in (tmp_path / "cut.jsonl").read_text().splitlines()]
    assert all(len(r["prediction"]) <= 1 and r["finish_reason"] == "length" for r in rows)
    assert cut.metrics["cut_at_limit"] == distinct and cut.metrics["exact_match"] == 0.0


def test_generate_and_predict_write_what_evaluate_scored(scratch_run, capsys):
    rows = [
        json.loads(line)
        for line in (scratch_run.run_dir / "predictions.jsonl").read_text().splitlines()
    ][:4]
    sources = [r["source"] for r in rows]
    assert (
        main(["generate", "--model", str(scratch_run.run_dir), *sources, "--format", "jsonl"]) == 0
    )
    gens = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [g["completions"][0] for g in gens] == [r["prediction"] for r in rows]
    assert [
        p.output for p in warmstart.predict(model=str(scratch_run.model_dir), texts=sources)
    ] == [r["prediction"] for r in rows]


@pytest.mark.parametrize(
    "flags, named",
    [
        (["--temperature", "0.7"], "--temperature"),
        (["--chat"], "--chat"),
        (["--repetition-penalty", "1.2"], "--repetition-penalty"),
        (["--num-return-sequences", "2"], "--num-return-sequences"),
    ],
)
def test_generate_refuses_causal_lm_options_for_a_text_to_text_model(
    scratch_run, capsys, flags, named
):
    assert main(["generate", "--model", str(scratch_run.run_dir), "abc", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "text-to-text" in err[0], err


def test_outputs_stop_where_the_decoders_positions_end():
    """A BART pre-trained with 16 positions asked for 40 new tokens writes 15 (its start token takes
    one) and says it was cut, rather than indexing past its position table."""
    from warmstart.inference.seq2seq import write_texts
    from warmstart.models.seq2seq import new_bart

    model, tok = new_bart(["abc", "hello world"] * 5, "char", "tiny", 8000, 16)
    with torch.no_grad():
        model.final_logits_bias[0, tok.convert_tokens_to_ids("a")] = 100.0  # never ends by itself
    written = write_texts(model, tok, ["hello"], 16, 40)
    assert (
        written[0].tokens == 15
        and written[0].finish_reason == "length"
        and written[0].text == "a" * 15
    )


def test_serve_generate_writes_what_evaluate_scored_and_refuses_causal_lm_options(scratch_run):
    from fastapi.testclient import TestClient

    from warmstart.config import ServeConfig
    from warmstart.serving import ServedModel, create_app

    served = ServedModel.load(str(scratch_run.run_dir), cpu=True)
    assert served.kind == "text-to-text" and served.endpoints == ("generate",)
    rows = [
        json.loads(line)
        for line in (scratch_run.run_dir / "predictions.jsonl").read_text().splitlines()
    ][:3]
    with TestClient(create_app(served, ServeConfig(model=served.name))) as api:
        for r in rows:
            answer = api.post("/generate", json={"prompt": r["source"]})
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["completions"] == [r["prediction"]] and body["finish_reasons"] == [
                r["finish_reason"]
            ]
        cut = api.post("/generate", json={"prompt": rows[0]["source"], "max_new_tokens": 1}).json()
        assert cut["finish_reasons"] == ["length"] and cut["completion_tokens"][0] <= 1
        beams = api.post("/generate", json={"prompt": rows[0]["source"], "num_beams": 3})
        assert beams.status_code == 200
        assert beams.json()["completions"] == [
            served.text_to_text.write([rows[0]["source"]], num_beams=3)[0].text
        ]
        for options, field in (
            ({"temperature": 0.7}, "temperature"),
            ({"chat": True}, "chat"),
            ({"stream": True}, "stream"),
            ({"num_return_sequences": 2}, "num_return_sequences"),
        ):
            refused = api.post("/generate", json={"prompt": "abc", **options})
            assert (
                refused.status_code == 422
                and field in refused.text
                and "text-to-text" in refused.text
            )
        assert api.post("/predict", json={"texts": ["abc"]}).status_code == 404


@pytest.fixture(scope="module")
def verses(tmp_path_factory) -> Path:
    """The first 150 English-Spanish verse pairs."""
    lines = VERSES.read_text(encoding="utf-8").splitlines(keepends=True)[:151]
    path = tmp_path_factory.mktemp("verses") / "verses.tsv"
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_a_bart_from_pretrain_denoise_fine_tunes_on_translation(verses, tmp_path):
    corpus = tmp_path / "corpus.txt"
    pairs = read_pairs(str(verses), "en", "es")
    corpus.write_text("\n".join(pairs.sources + pairs.targets) + "\n", encoding="utf-8")
    bart = warmstart.pretrain(
        data=str(corpus),
        objective="denoise",
        from_scratch=True,
        size="tiny",
        vocab_size=800,
        block_size=64,
        max_steps=8,
        batch_size=16,
        precision="fp32",
        out=str(tmp_path / "bart"),
        progress=False,
    )
    r = warmstart.finetune(
        data=str(verses),
        task="seq2seq",
        source_column="en",
        target_column="es",
        model=str(bart.run_dir),
        split="130,20",
        epochs=1,
        batch_size=16,
        lr=1e-3,
        max_length=64,
        max_new_tokens=12,
        eval_samples=6,
        precision="fp32",
        out=str(tmp_path / "mt"),
        progress=False,
    )
    epoch = r.metrics["epochs"][0]
    assert {
        "valid_loss",
        "valid_bleu",
        "valid_chrf",
        "valid_exact_match",
        "valid_cer",
        "valid_wer",
    } <= set(epoch)
    assert r.metrics["valid_best"]["n"] == 6  # --eval-samples: the texts generated
    config = json.loads((r.model_dir / "config.json").read_text())
    assert config["model_type"] == "bart"
    assert (
        config["vocab_size"]
        == json.loads((bart.model_dir / "config.json").read_text())["vocab_size"]
    )


def test_bert2bert_warm_started_from_an_encoder_reloads_in_plain_transformers(
    tiny_models, copy_pairs, tmp_path
):
    from transformers import AutoTokenizer

    r = warmstart.finetune(
        data=str(copy_pairs),
        model=str(tiny_models["bert"]),
        epochs=1,
        max_train_samples=64,
        max_valid_samples=8,
        out=str(tmp_path / "b2b"),
        **{**COPY, "lr": 1e-3},
    )
    model = AutoModelForSeq2SeqLM.from_pretrained(r.model_dir).eval()
    tok = AutoTokenizer.from_pretrained(r.model_dir)
    assert type(model).__name__ == "EncoderDecoderModel"
    assert model.generation_config.decoder_start_token_id == tok.cls_token_id
    assert model.generation_config.eos_token_id == tok.sep_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert (
        model.decoder.get_output_embeddings().weight is model.decoder.get_input_embeddings().weight
    )
    texts = ["abc", "fade", "bb"]
    plain = []
    for t in texts:  # one at a time, as below: no padding to tell the two apart
        with torch.no_grad():
            out = model.generate(**tok(t, return_tensors="pt", return_token_type_ids=False))
        plain.append(tok.decode(out[0], skip_special_tokens=True))
    ours = warmstart.predict(model=str(r.run_dir), texts=texts, batch_size=1)
    assert [p.output for p in ours] == plain


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


PAIRS = "en\tes\nhello\thola\nbye\tadiós\nyes\tsí\nno\tno\n"
BAD = {
    "unknown_source_column": (
        lambda t, m: ["--data", write(t, "p.tsv", PAIRS), "--source-column", "fr"],
        "p.tsv' has no column 'fr' (columns: 'en', 'es')",
    ),
    "no_target_column": (
        lambda t, m: ["--data", write(t, "p.tsv", PAIRS), "--source-column", "en"],
        "no target column found; name it with --target-column (columns: 'en', 'es')",
    ),
    "empty_target": (
        lambda t, m: [
            "--data",
            write(t, "p.tsv", PAIRS + "maybe\t \n"),
            "--source-column",
            "en",
            "--target-column",
            "es",
        ],
        "p.tsv', row 5, column 'es': target text is empty",
    ),
    "decoder_only": (
        lambda t, m: [
            "--data",
            write(t, "p.tsv", PAIRS),
            "--source-column",
            "en",
            "--target-column",
            "es",
            "--model",
            str(m["gpt2"]),
        ],
        "a decoder-only language model: --task seq2seq needs an encoder-decoder",
    ),
    "encoder_without_decoder_form": (
        lambda t, m: [
            "--data",
            write(t, "p.tsv", PAIRS),
            "--source-column",
            "en",
            "--target-column",
            "es",
            "--model",
            str(m["distilbert"]),
        ],
        "an encoder that cannot be warm-started as a decoder",
    ),
    "unknown_metric": (
        lambda t, m: ["--data", write(t, "p.tsv", PAIRS), "--metrics", "bleu,rouge"],
        "--metrics 'bleu,rouge': unknown rouge",
    ),
    "best_not_measured": (
        lambda t, m: [
            "--data",
            write(t, "p.tsv", PAIRS),
            "--metrics",
            "bleu",
            "--metric-for-best",
            "wer",
        ],
        "--metric-for-best wer is not measured",
    ),
    "scratch_option_alone": (
        lambda t, m: ["--data", write(t, "p.tsv", PAIRS), "--tokenizer", "char"],
        "--tokenizer only apply with --from-scratch",
    ),
    "scratch_and_model": (
        lambda t, m: [
            "--data",
            write(t, "p.tsv", PAIRS),
            "--from-scratch",
            "--model",
            str(m["bert"]),
        ],
        "--from-scratch builds a new BART and --model names one",
    ),
    "classifier_option": (
        lambda t, m: ["--data", write(t, "p.tsv", PAIRS), "--label-column", "es"],
        "--label-column does not apply to --task seq2seq",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_text_to_text_input_exits_2_with_one_clear_sentence(
    case, tmp_path, tiny_models, tiny_gpt2, capsys
):
    argv, expected = BAD[case]
    out = tmp_path / "run"
    code = main(
        [
            "finetune",
            "--task",
            "seq2seq",
            *argv(tmp_path, {**tiny_models, "gpt2": tiny_gpt2}),
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists(), "a failed run must not leave a run folder"


def test_text_to_text_options_are_refused_for_classification(tmp_path, capsys):
    data = write(tmp_path, "a.csv", "review,sentiment\nA fine film.,1\nA dull film.,0\n")
    assert (
        main(["finetune", "--data", data, "--num-beams", "4", "--out", str(tmp_path / "run")]) == 2
    )
    assert "--num-beams does not apply to --task sequence" in capsys.readouterr().err
