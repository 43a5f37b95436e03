"""Token classification (`finetune --task tokens`): words aligned to sub-tokens and back, long
sentences cut into windows that lose no word, word-level tagging metrics, offsets into the original
text, reading CoNLL/JSONL/Brown data, bad input as one line, and the trained tagger end to end (both
engines, resume, predict, ONNX, /tag) on the real WNUT 2016 and Brown data with a tiny BERT."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import warmstart
from conftest import SHARED, kill_after_checkpoint
from warmstart.cli import main
from warmstart.data.batching import IGNORE
from warmstart.data.tagged import (
    Sentences,
    base_tag,
    entity_types,
    orphan_inside_tags,
    read_sentences,
    scheme_of,
    split_words,
)
from warmstart.data.windows import owners, windows
from warmstart.data.wordpieces import encode_words
from warmstart.inference.tagger import Tagged, Tagger, entities
from warmstart.metrics import tagging_metrics

WNUT = SHARED / "data" / "wnut16" / "train.conll"
BROWN = SHARED / "data" / "brown-pos" / "news.conll"
VOLATILE = {"epoch_seconds", "elapsed_seconds", "samples_per_s"}
# Brown news, first 300 sentences: 200 to train on, 50 to validate, 50 to test; base tags (about
# 75).
BROWN_RUN = [
    "--task",
    "tokens",
    "--data",
    str(BROWN),
    "--limit",
    "300",
    "--split",
    "200,50,50",
    "--base-tags",
    "--max-length",
    "64",
    "--lr",
    "3e-3",
    "--epochs",
    "3",
    "--no-progress",
]
TEXTS = [
    "José Müller met Ann at the Café Zürich ☕ in New York, then Ann left New York.",
    "@bob check http://t.co/x1 lol 😀😀 #fun state-of-the-art!!",
    "¿Qué? ¡Olé!",
    "the the the the",
]


def write_conll(path: Path, sents: Sentences) -> Path:
    path.write_text(
        "".join(
            "".join(f"{w}\t{t}\n" for w, t in zip(ws, ts)) + "\n"
            for ws, ts in zip(sents.tokens, sents.tags)
        ),
        encoding="utf-8",
    )
    return path


def label_logits(ww, width: int) -> list[np.ndarray]:
    """Per window, one-hot "logits" per token: the token's label where it has one, else the extra
    class ``width - 1`` (which no word may end up with)."""
    rows = []
    for lab in ww.data.features["labels"]:
        lab = np.asarray(lab)
        r = np.zeros((len(lab), width), dtype=np.float32)
        r[np.arange(len(lab)), np.where(lab == IGNORE, width - 1, lab)] = 1.0
        rows.append(r)
    return rows


def word_owner(ww, sentence: int) -> np.ndarray:
    """For each word of ``sentence``, the window answering for it (from the windows' own
    bookkeeping)."""
    out = np.full(ww.n_words[sentence], -1)
    for k in np.flatnonzero(ww.sentence == sentence):
        for w in np.flatnonzero(ww.owned[k]):
            assert out[ww.first_word[k] + w] == -1, "a word answered for twice"
            out[ww.first_word[k] + w] = k
    return out


# --- words <-> sub-tokens
# -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_tokenizer(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models["bert"])


def test_only_the_first_piece_of_a_word_is_labelled_unless_all_subtokens(bert_tokenizer):
    tok = bert_tokenizer
    long_words = [
        w
        for w in ("cinematographer", "unbelievably", "extraordinary", "Mississippi")
        if len(tok.tokenize(w)) >= 3
    ]
    assert len(long_words) >= 2, "the tiny WordPiece vocabulary should split these words"
    words = ["the", long_words[0], "was", long_words[1]]
    tags = [0, 1, 0, 0]  # O B-X O O; 1 -> 2 is B-X -> I-X
    enc = tok(words, is_split_into_words=True)
    word_ids = enc.word_ids()
    pieces = [word_ids.count(i) for i in range(len(words))]
    assert pieces[1] >= 3 and pieces[3] >= 3

    first = encode_words(tok, [words], 64, tags=[tags])
    assert first.data.features["input_ids"] == [enc["input_ids"]]
    labels = first.data.features["labels"][0]
    expected = [
        IGNORE if w is None or (i > 0 and word_ids[i - 1] == w) else tags[w]
        for i, w in enumerate(word_ids)
    ]
    assert labels == expected
    assert labels[0] == labels[-1] == IGNORE  # [CLS], [SEP]
    assert labels.count(1) == 1 and sum(x != IGNORE for x in labels) == len(words)

    every = encode_words(tok, [words], 64, tags=[tags], all_subtokens=True, inside={1: 2})
    labels = every.data.features["labels"][0]
    by_word = {w: [lab for lab, x in zip(labels, word_ids) if x == w] for w in range(len(words))}
    assert by_word[1] == [1] + [2] * (pieces[1] - 1)  # B- then I- on the later pieces
    assert by_word[3] == [0] * pieces[3]  # an O word stays O on every piece
    assert labels[0] == labels[-1] == IGNORE


@pytest.mark.parametrize("seed", range(6))
def test_windows_cover_every_unit_exactly_once(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        n = int(rng.integers(1, 120))
        sizes = rng.integers(1, 7, n)
        if rng.random() < 0.3:  # a unit larger than the whole budget (a long URL)
            sizes[rng.integers(0, n)] = 60
        budget = int(rng.integers(1, 40))
        stride = int(rng.integers(0, budget + 2))
        spans = windows(sizes, budget, stride)
        own = owners(sizes, spans)
        assert spans[0][0] == 0 and spans[-1][1] == n
        for k, (s, e) in enumerate(spans):
            assert 0 <= s < e <= n
            assert sizes[s:e].sum() <= budget or e - s == 1, (sizes.tolist(), budget, stride, spans)
            if k:
                ps, pe = spans[k - 1]
                # each window starts later, holds a unit the previous one did not, and leaves no
                # unit between
                assert ps < s <= pe < e, (sizes.tolist(), budget, stride, spans)
        assert own.shape == (n,) and (own >= 0).all()
        for i, k in enumerate(own):
            s, e = spans[k]
            assert s <= i < e
        assert (np.diff(own) >= 0).all()


def test_a_long_sentence_loses_no_word(bert_tokenizer):
    wnut = read_sentences(WNUT, limit=40)
    words = [w for s in wnut.tokens for w in s][:300]
    gold_tags = [t for s in wnut.tags for t in s][:300]
    names = sorted(set(gold_tags))
    gold = [names.index(t) for t in gold_tags]
    ww = encode_words(bert_tokenizer, [words], 32, tags=[gold])
    assert ww.windowed == 1 and len(ww.data) >= 10
    assert all(len(ids) <= 32 for ids in ww.data.features["input_ids"])
    assert sum(int((np.asarray(lab) != IGNORE).sum()) for lab in ww.data.features["labels"]) == 300
    assert (word_owner(ww, 0) >= 0).all()
    scores = ww.word_scores(label_logits(ww, len(names) + 1))
    assert len(scores) == 1 and scores[0].shape == (300, len(names) + 1)
    assert scores[0].argmax(-1).tolist() == gold


def test_a_word_longer_than_the_window_and_words_the_tokenizer_drops_still_get_a_tag(
    bert_tokenizer,
):
    rng = np.random.default_rng(0)
    huge = "".join(rng.choice(list("qxzjkvw"), 60))  # 60 pieces: more than a 16-token window holds
    words = ["a", "b", huge, "c", "\u200b", "\u0301", "d"] + [
        "e"
    ] * 20  # a zero-width space, a lone accent
    assert len(bert_tokenizer.tokenize(huge)) > 16 and bert_tokenizer.tokenize("\u200b") == []
    ww = encode_words(bert_tokenizer, [words], 16, tags=[list(range(len(words)))])
    assert all(len(ids) <= 16 for ids in ww.data.features["input_ids"]) and ww.windowed == 1
    scores = ww.word_scores(label_logits(ww, len(words) + 1))
    assert scores[0].argmax(-1).tolist() == list(range(len(words)))


# --- metrics
# --------------------------------------------------------------------------------------------------


def test_tagging_metrics_match_hand_counts():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O"], ["O", "I-PER", "I-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-ORG"], ["O", "I-ORG", "I-ORG", "O"], ["O", "I-PER", "I-PER"]]
    # gold entities: PER, LOC | ORG | PER (an I- after O starts one, as in conlleval) = 4 predicted:
    # PER, ORG | ORG (from I-ORG) | PER = 4; right: PER, ORG (sentence 2), PER (sentence 3) = 3
    m = tagging_metrics(gold, pred, "IOB2")
    assert m["entities"] == 4 and m["n"] == 11 and m["sentences"] == 3
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(9 / 11)
    assert m["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    assert m["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_type"]["ORG"]["precision"] == pytest.approx(1 / 2)
    assert m["per_type"]["ORG"]["recall"] == 1.0 and m["per_type"]["ORG"]["f1"] == pytest.approx(
        2 / 3
    )
    assert m["f1_macro"] == pytest.approx((1 + 0 + 2 / 3) / 3)

    # IOBES is read strictly: B-LOC I-LOC never closed by E-LOC is no entity
    m = tagging_metrics(
        [["S-PER", "O", "B-LOC", "E-LOC"]], [["S-PER", "O", "B-LOC", "I-LOC"]], "IOBES"
    )
    assert (m["precision"], m["recall"]) == (1.0, 0.5) and m["f1"] == pytest.approx(2 / 3)

    plain = tagging_metrics([["nn", "vb", "at"], ["nn"]], [["nn", "nn", "at"], ["vb"]], "plain")
    assert plain["accuracy"] == 0.5 and "f1" not in plain
    # at: P=R=1; nn: P=1/2, R=1/2; vb: P=R=0
    assert plain["precision_macro"] == pytest.approx(0.5) and plain[
        "recall_macro"
    ] == pytest.approx(0.5)
    assert plain["f1_macro"] == pytest.approx(0.5)


def test_an_entity_across_a_window_border_is_one_correct_entity(bert_tokenizer):
    words = (
        "we drove down to the coast and then on past the old mill until the road ran out near the"
        " sea where a small boat was waiting for us with its sails half up and the tide was turning".split()
    )
    ww = encode_words(bert_tokenizer, [words], 16)
    owner = word_owner(ww, 0)
    border = (
        int(np.flatnonzero(np.diff(owner))[0]) + 1
    )  # the first word answered for by the second window
    tags = ["O"] * len(words)
    tags[border - 2 : border + 2] = ["B-LOC", "I-LOC", "I-LOC", "I-LOC"]
    assert len(set(owner[border - 2 : border + 2])) == 2
    names = ["O", "B-LOC", "I-LOC"]
    ww = encode_words(bert_tokenizer, [words], 16, tags=[[names.index(t) for t in tags]])
    pred = [[names[i] for i in ww.word_scores(label_logits(ww, len(names) + 1))[0].argmax(-1)]]
    m = tagging_metrics([tags], pred, "IOB2")
    assert m["entities"] == 1 and m["per_type"]["LOC"]["support"] == 1
    assert (m["precision"], m["recall"], m["f1"]) == (1.0, 1.0, 1.0)


# --- offsets
# --------------------------------------------------------------------------------------------------


def test_word_and_entity_offsets_index_the_original_text():
    text = (
        "José Müller 😀 visited Zürich, Zürich! Then Zürich again: don't stop... naïve café-au-lait"
    )
    split = split_words(text)
    assert all(text[s:e] == w for w, s, e in split)
    assert [w for w, _, _ in split][:8] == [
        "José",
        "Müller",
        "😀",
        "visited",
        "Zürich",
        ",",
        "Zürich",
        "!",
    ]
    starts = [s for _, s, _ in split]
    assert starts == sorted(starts) and len(set(starts)) == len(
        starts
    )  # repeated words get their own offsets
    assert [s for w, s, _ in split if w == "Zürich"] == [
        i for i in range(len(text)) if text.startswith("Zürich", i)
    ]
    assert "don" in [w for w, _, _ in split] and "'t" in [w for w, _, _ in split]

    words = [w for w, _, _ in split]
    tags = ["O"] * len(words)
    tags[0:2] = ["B-PER", "I-PER"]
    tags[4], tags[6] = "B-LOC", "B-LOC"
    scores = [0.5] * len(words)
    scores[0:2] = [0.6, 0.9]
    t = Tagged(text, words, [(s, e) for _, s, e in split], tags, scores)
    found = entities(t, "IOB2")
    assert [(e["type"], e["text"]) for e in found] == [
        ("PER", "José Müller"),
        ("LOC", "Zürich"),
        ("LOC", "Zürich"),
    ]
    assert all(text[e["start"] : e["end"]] == e["text"] for e in found)
    assert found[1]["start"] != found[2]["start"]
    per = {agg: entities(t, "IOB2", agg)[0]["score"] for agg in ("first", "average", "max")}
    assert per == pytest.approx({"first": 0.6, "average": 0.75, "max": 0.9})
    with pytest.raises(ValueError):
        entities(t, "IOB2", "median")


# --- reading
# --------------------------------------------------------------------------------------------------


def test_wnut_reads_as_2000_tweets_of_iob2_tags():
    wnut = read_sentences(WNUT)
    assert len(wnut) == 2000 and wnut.n_words == 38_792
    tags = sorted({t for s in wnut.tags for t in s})
    assert scheme_of(tags) == "IOB2" and len(entity_types(tags)) == 10
    assert wnut.starts[:1] == [1] and wnut.unit == "line"
    lines = WNUT.read_text(encoding="utf-8").splitlines()
    assert (
        lines[wnut.starts[1] - 1].split("\t")[0] == wnut.tokens[1][0]
    )  # starts are lines of the file


def test_conll_docstart_jsonl_and_columns(tmp_path):
    conll = tmp_path / "c.conll"
    conll.write_text(
        "-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\n-DOCSTART- -X- -X- O\n\n"
        "Peter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n\nBRUSSELS NNP B-NP B-LOC\n",
        encoding="utf-8",
    )
    s = read_sentences(conll)
    assert s.tokens == [["EU", "rejects"], ["Peter", "Blackburn"], ["BRUSSELS"]]
    assert s.tags == [["B-ORG", "O"], ["B-PER", "I-PER"], ["B-LOC"]]
    assert s.starts == [3, 8, 11]
    assert read_sentences(conll, tag_column=1).tags[0] == ["NNP", "VBZ"]
    assert read_sentences(conll, labelled=False).tags is None

    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(
        '{"tokens": ["Ann", "lives", "in", "Oslo"], "tags": ["B-PER", "O", "O", "B-LOC"]}\n'
        '{"tokens": ["ok"], "tags": ["O"]}\n',
        encoding="utf-8",
    )
    s = read_sentences(jsonl)
    assert s.tokens == [["Ann", "lives", "in", "Oslo"], ["ok"]] and s.tags == [
        ["B-PER", "O", "O", "B-LOC"],
        ["O"],
    ]
    assert s.where(1).endswith("row 2")


def test_brown_base_tags_drop_the_modifiers():
    assert [
        base_tag(t)
        for t in ("np-tl", "fw-in", "dod*", "vbz+rb", "nn-hl+bez", "fw-nn-tl", "*", "--", "np$")
    ] == ["np", "in", "dod", "vbz+rb", "nn+bez", "nn", "*", "--", "np$"]
    raw = read_sentences(BROWN)
    base = read_sentences(BROWN, base_tags=True)
    assert raw.tokens == base.tokens
    pairs = {(r, b) for rs, bs in zip(raw.tags, base.tags) for r, b in zip(rs, bs)}
    assert {("np-tl", "np"), ("fw-in", "in"), ("dod*", "dod")} <= pairs
    raw_tags, base_tags = {r for r, _ in pairs}, {b for _, b in pairs}
    assert len(base_tags) < len(raw_tags) and not any(t.endswith(("-tl", "-hl")) for t in base_tags)


def test_scheme_and_orphan_inside_tags():
    assert scheme_of(["O", "B-PER", "I-PER"]) == "IOB2"
    assert scheme_of(["O", "S-PER", "B-LOC", "I-LOC", "E-LOC"]) == "IOBES"
    assert scheme_of(["nn", "vb", "at"]) == "plain" and scheme_of(["O"]) == "plain"
    assert scheme_of(["O", "B-PER", "np"]) == "plain"
    # I-PER after O, I-PER after B-LOC, I-ORG first: three orphans; I-PER after I-PER is not one
    assert (
        orphan_inside_tags([["O", "I-PER", "I-PER", "B-LOC", "I-PER"], ["I-ORG"], ["B-X", "I-X"]])
        == 3
    )


# --- bad input
# ------------------------------------------------------------------------------------------------


def _one_line_error(capsys, *expected: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for e in expected:
        assert e in err, err
    return err


BAD = {
    "count_mismatch": (
        "t.jsonl",
        (
            '{"tokens": ["a", "b"], "tags": ["O", "O"]}\n'
            '{"tokens": ["Ann", "in", "Oslo"], "tags": ["B-PER", "O"]}\n'
        ),
        ["t.jsonl', row 2: 3 tokens but 2 tags"],
    ),
    "empty_sentence": (
        "t.jsonl",
        '{"tokens": ["a"], "tags": ["O"]}\n{"tokens": [], "tags": []}\n',
        ["t.jsonl', row 2: the sentence is empty"],
    ),
    "one_column_line": (
        "t.conll",
        "Ann\tB-PER\nsings\tO\n\nOslo\n",
        ["t.conll', line 4", "'Oslo'"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_tagged_data_is_one_line_naming_file_and_place(case, tmp_path, capsys):
    name, content, expected = BAD[case]
    (tmp_path / name).write_text(content, encoding="utf-8")
    out = tmp_path / "run"
    assert (
        main(
            [
                "finetune",
                "--task",
                "tokens",
                "--data",
                str(tmp_path / name),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    _one_line_error(capsys, *expected)
    assert not out.exists()


def test_tag_options_are_refused_for_sequence_classification(tmp_path, capsys):
    data = tmp_path / "a.csv"
    data.write_text("review,sentiment\nA fine film.,1\nA dull film.,0\n", encoding="utf-8")
    out = tmp_path / "run"
    assert (
        main(["finetune", "--data", str(data), "--base-tags", "--out", str(out), "--no-progress"])
        == 2
    )
    _one_line_error(capsys, "--base-tags", "--task tokens")
    assert not out.exists()


# --- a trained tagger
# -----------------------------------------------------------------------------------------


def runs_as_chunks(tags: list[str]) -> list[str]:
    """IOB2 tags from part-of-speech tags: each run of words with the same tag is one chunk of that
    type."""
    return [("I-" if i and tags[i - 1] == t else "B-") + t for i, t in enumerate(tags)]


@pytest.fixture(scope="module")
def chunk_tagger(tiny_models, tmp_path_factory) -> Path:
    """A tiny BERT tagger with IOB2 tags that it predicts in some variety (a few epochs on WNUT's
    tweets only ever predict O): Brown's first 300 news sentences, each run of words of one base tag
    a chunk ("np np" -> B-np I-np)."""
    folder = tmp_path_factory.mktemp("chunk-tagger")
    brown = read_sentences(BROWN, limit=300, base_tags=True)
    data = write_conll(
        folder / "chunks.conll",
        Sentences("", brown.tokens, [runs_as_chunks(t) for t in brown.tags], brown.starts),
    )
    result = warmstart.finetune(
        task="tokens",
        data=str(data),
        split="200,50,50",
        model=str(tiny_models["bert"]),
        max_length=64,
        lr=3e-3,
        epochs=3,
        progress=False,
        out=str(folder / "run"),
    )
    assert result.metrics["test"]["scheme"] == "IOB2"
    return result.model_dir


@pytest.fixture(scope="module")
def unseen_sentences() -> list[list[str]]:
    return read_sentences(BROWN).take(slice(1000, 1100)).tokens


def test_evaluate_refuses_a_tag_the_model_does_not_know(chunk_tagger, tmp_path, capsys):
    data = tmp_path / "e.conll"
    data.write_text("The\tB-at\nman\tB-nn\n\nin\tB-in\nOslo\tB-city\n", encoding="utf-8")
    out = tmp_path / "m.json"
    assert (
        main(
            [
                "evaluate",
                str(chunk_tagger),
                "--data",
                str(data),
                "--backend",
                "torch",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    _one_line_error(capsys, "e.conll', line 5 (word 'Oslo')", "'B-city'")  # the word's own line
    assert not out.exists()


def _most_frequent_tag_accuracy() -> float:
    part = read_sentences(BROWN, limit=300, base_tags=True)
    train, test = part.take(slice(0, 200)), part.take(slice(250, 300))
    tag = Counter(t for s in train.tags for t in s).most_common(1)[0][0]
    return sum(t == tag for s in test.tags for t in s) / test.n_words


@pytest.mark.parametrize("engine", ["native", "trainer"])
def test_part_of_speech_tagger_learns_and_saves_a_plain_hf_model(
    engine, tiny_models, tmp_path, capsys
):
    from transformers import AutoModelForTokenClassification

    run = tmp_path / engine
    assert (
        main(
            [
                "finetune",
                *BROWN_RUN,
                "--model",
                str(tiny_models["bert"]),
                "--engine",
                engine,
                "--out",
                str(run),
            ]
        )
        == 0
    )
    capsys.readouterr()
    metrics = json.loads((run / "metrics.json").read_text())
    baseline = _most_frequent_tag_accuracy()
    assert metrics["test"]["n"] == read_sentences(BROWN, limit=300).take(slice(250, 300)).n_words
    assert metrics["test"]["accuracy"] > baseline + 0.2, (metrics["test"]["accuracy"], baseline)
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    for e in metrics["epochs"]:
        assert 0 < e["valid_accuracy"] <= 1 and e["valid_loss"] > 0 and "valid_f1_macro" in e

    # the valid accuracy recorded for the best epoch is what the saved (best) model scores on the
    # valid part
    parts = read_sentences(BROWN, limit=300, base_tags=True)
    valid = write_conll(tmp_path / "valid.conll", parts.take(slice(200, 250)))
    again = warmstart.evaluate(
        model=str(run), data=str(valid), backend="torch", progress=False
    ).metrics
    recorded = metrics["epochs"][metrics["best_epoch"] - 1]["valid_accuracy"]
    assert abs(again["accuracy"] - recorded) <= 2 / again["n"], (again["accuracy"], recorded)

    model = AutoModelForTokenClassification.from_pretrained(run / "model")
    assert sorted(model.config.id2label.values()) == sorted({t for s in parts.tags for t in s})

    if engine == "native":  # predict: words with offsets into the text as given
        out = tmp_path / "pred.jsonl"
        assert main(["predict", str(run), *TEXTS, "--backend", "torch", "--out", str(out)]) == 0
        records = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
        assert [r["text"] for r in records] == TEXTS
        assert [w["word"] for w in records[2]["words"]] == ["¿", "Qué", "?", "¡", "Olé", "!"]
        assert [w["start"] for w in records[3]["words"]] == [
            0,
            4,
            8,
            12,
        ]  # the same word four times
        for r in records:
            assert [w["word"] for w in r["words"]] == [w for w, _, _ in split_words(r["text"])]
            for w in r["words"]:
                assert r["text"][w["start"] : w["end"]] == w["word"]
                assert w["tag"] in model.config.label2id and 0 < w["score"] <= 1
            assert r["entities"] == []  # part-of-speech tags form no entities


def test_tagger_resumes_after_kill_to_the_same_metrics(tiny_models, tmp_path):
    args = [
        "finetune",
        "--task",
        "tokens",
        "--data",
        str(BROWN),
        "--limit",
        "160",
        "--split",
        "100,30,30",
        "--base-tags",
        "--max-length",
        "64",
        "--lr",
        "3e-3",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--save-steps",
        "5",
        "--logging-steps",
        "5",
        "--model",
        str(tiny_models["bert"]),
        "--no-progress",
    ]
    killed = tmp_path / "killed"
    ckpt = kill_after_checkpoint(args, killed)
    assert 0 < ckpt["step"] and ckpt["epoch"] < 2

    assert (
        main(["finetune", "--config", str(killed / "config.yaml"), "--resume", "--no-progress"])
        == 0
    )
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    resumed = json.loads((killed / "metrics.json").read_text())
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert resumed["test"] == full["test"]
    assert [{k: v for k, v in e.items() if k not in VOLATILE} for e in resumed["epochs"]] == [
        {k: v for k, v in e.items() if k not in VOLATILE} for e in full["epochs"]
    ]


def test_onnx_tagger_gives_the_torch_tags(chunk_tagger, unseen_sentences):
    pytest.importorskip("onnxruntime")
    torch_tagger = Tagger.load(str(chunk_tagger), cpu=True, backend="torch")
    ref = torch_tagger.word_probabilities(unseen_sentences)
    assert (
        torch_tagger.last_windowed > 0
    )  # some sentences are longer than the 64 tokens it was trained with
    onnx = Tagger.load(str(chunk_tagger), cpu=True, backend="onnx", quantize="none")
    assert onnx.plan.name == "onnx-fp32" and onnx.tags == torch_tagger.tags
    got = onnx.word_probabilities(unseen_sentences)
    assert [len(p) for p in got] == [len(s) for s in unseen_sentences]
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(ref), atol=1e-4)
    tags = [t.tags for t in torch_tagger.tag(words=unseen_sentences)]
    assert len({t for s in tags for t in s}) >= 5  # not one tag everywhere
    assert [t.tags for t in onnx.tag(words=unseen_sentences)] == tags

    int8 = Tagger.load(str(chunk_tagger), cpu=True, backend="onnx", quantize="int8")
    same = [
        a == b for t, s in zip(int8.tag(words=unseen_sentences), tags) for a, b in zip(t.tags, s)
    ]
    assert len(same) == sum(len(s) for s in unseen_sentences) and np.mean(same) >= 0.95


def test_tag_endpoint_batched_equals_unbatched(chunk_tagger, unseen_sentences):
    from fastapi.testclient import TestClient

    from warmstart.config import ServeConfig
    from warmstart.serving import ServedModel, create_app

    served = ServedModel.load(str(chunk_tagger), cpu=True, backend="torch")
    assert served.kind == "tagger"
    texts = [" ".join(s) for s in unseen_sentences[:40]] + TEXTS
    bodies = [
        {"texts": texts[i : i + 1 + i % 3], "aggregation": ("first", "average", "max")[i % 3]}
        for i in range(0, len(texts), 2)
    ]
    results, passes = {}, {}
    for batching in (True, False):
        app = create_app(
            served,
            ServeConfig(model=served.name, batching=batching, max_batch_size=16, max_wait_ms=50),
        )
        with TestClient(app) as client, ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(lambda b: client.post("/tag", json=b), bodies))
            if batching:
                wrong = client.post("/predict", json={"texts": ["hi"]})
        assert all(r.status_code == 200 for r in responses), [
            r.text for r in responses if r.status_code != 200
        ]
        results[batching] = [r.json()["results"] for r in responses]
        passes[batching] = app.state.batchers["tag"].passes
    assert passes[False] == len(bodies) and passes[True] < len(bodies)
    assert sum(len(r["entities"]) for rs in results[True] for r in rs) > len(texts)
    for batched, alone, body in zip(results[True], results[False], bodies):
        assert [r["text"] for r in batched] == body["texts"]
        for b, a in zip(batched, alone):
            assert [(w["word"], w["start"], w["end"], w["tag"]) for w in b["words"]] == [
                (w["word"], w["start"], w["end"], w["tag"]) for w in a["words"]
            ]
            assert np.allclose(
                [w["score"] for w in b["words"]], [w["score"] for w in a["words"]], atol=1e-5
            )
            assert [(e["type"], e["start"], e["end"]) for e in b["entities"]] == [
                (e["type"], e["start"], e["end"]) for e in a["entities"]
            ]
            assert np.allclose(
                [e["score"] for e in b["entities"]], [e["score"] for e in a["entities"]], atol=1e-5
            )
            assert all(b["text"][w["start"] : w["end"]] == w["word"] for w in b["words"])
    assert wrong.status_code == 404 and "/tag" in wrong.json()["error"]


def test_iobes_entities_are_read_strictly_as_the_metrics_read_them():
    text = "Ann Lee met Bob in Oslo"
    words = text.split()
    spans = [(text.index(w), text.index(w) + len(w)) for w in words]
    # B-PER E-PER well formed; "Bob" an ill-formed I-PER alone (not an entity in strict IOBES);
    # S-LOC Oslo
    tags = ["B-PER", "E-PER", "O", "I-PER", "O", "S-LOC"]
    t = Tagged(text, words, spans, tags, [0.9, 0.7, 0.99, 0.5, 0.99, 0.8])
    got = [(e["type"], e["text"]) for e in entities(t, "IOBES")]
    assert got == [("PER", "Ann Lee"), ("LOC", "Oslo")]
    m = tagging_metrics([tags], [tags], "IOBES")
    assert m["entities"] == len(got) and m["f1"] == 1.0


def test_integer_tags_are_named_in_order_by_label_names(tiny_models, tmp_path):
    rows = [
        {"tokens": ["Ann", "lives", "in", "Oslo"], "ner_tags": [1, 0, 0, 3]},
        {"tokens": ["Bob", "Lee", "left"], "ner_tags": [1, 2, 0]},
    ] * 20
    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = warmstart.finetune(
        task="tokens",
        data=str(data),
        model=str(tiny_models["bert"]),
        epochs=1,
        label_names="O,B-PER,I-PER,B-LOC",
        out=str(tmp_path / "run"),
        progress=False,
    )
    config = json.loads((r.model_dir / "config.json").read_text())
    assert set(config["id2label"].values()) == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC"}


def test_a_conll_file_without_task_tokens_says_how_to_read_it(tmp_path, capsys):
    data = tmp_path / "t.conll"
    data.write_text("Ann\tB-PER\n\n")
    assert main(["finetune", "--data", str(data), "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, "t.conll", "--task tokens")
    assert (
        main(["finetune", "--data", str(data), "--base-tags", "--out", str(tmp_path / "run")]) == 2
    )
    _one_line_error(capsys, "--base-tags only apply to --task tokens")
    assert not (tmp_path / "run").exists()
