"""Extractive question answering (`finetune --task qa`): answer spans mapped through windows and the
fast tokenizer's offsets, the official SQuAD metric, a tiny model that learns to answer, the saved
folder read by plain transformers, evaluate/predict/serve/ONNX, bad input, resume after kill."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import warmstart
from conftest import kill_after_checkpoint
from warmstart.cli import main
from warmstart.data.squad import QAExamples, encode_qa, read_qa
from warmstart.errors import UserError
from warmstart.inference.qa import best_spans, questions
from warmstart.metrics import normalize_answer, squad_f1, squad_metrics
from warmstart.models.registry import load_tokenizer

# -- span mapping --------------------------------------------------------------------------------


def one(question: str, context: str, answer: str) -> QAExamples:
    start = context.index(answer)
    return QAExamples("t", [question], [context], [[(answer, start)]], ["q1"], ["q1"], [False])


def window_answers(tok, ex: QAExamples, max_length: int, stride: int) -> list[str | None]:
    """What each window's training positions point at: the text they span, None for [CLS]."""
    w = encode_qa(tok, ex, max_length, stride, train=True)
    out = []
    for r in range(len(w.data)):
        s_pos, e_pos = w.data.features["start_positions"][r], w.data.features["end_positions"][r]
        if s_pos == w.cls:
            assert e_pos == w.cls
            out.append(None)
            continue
        s, _ = w.span[r]
        off = w.offsets[w.example[r]]
        first, last = s + s_pos - w.first[r], s + e_pos - w.first[r]
        out.append(ex.contexts[0][off[first, 0] : off[last, 1]])
    return out


FILLER = " ".join(f"word{i} is here." for i in range(40))


def test_answer_straddling_a_window_edge_is_found_only_in_windows_holding_all_of_it(tiny_models):
    tok = load_tokenizer(str(tiny_models["bert"]))
    answer = "the great northern lighthouse of old harbour"
    ex = one("what stands there?", f"{FILLER} {answer} and {FILLER}", answer)
    spans = window_answers(tok, ex, max_length=48, stride=12)
    assert len(spans) > 3
    assert answer in spans  # some window holds the whole answer and points at it exactly
    # and some window holds only part of it: it points at [CLS], never at a cut answer
    w = encode_qa(tok, ex, 48, 12, train=True)
    off = w.offsets[0]
    a0 = ex.answers[0][0][1]
    cut = [
        r
        for r, (s, e) in enumerate(w.span)
        if off[s, 0] < a0 + len(answer)
        and off[e - 1, 1] > a0  # overlaps the answer...
        and not (off[s, 0] <= a0 and off[e - 1, 1] >= a0 + len(answer))  # ...but not all of it
    ]
    assert cut, "the test needs a window that cuts the answer"
    assert all(spans[r] is None for r in cut)
    assert all(s in (None, answer) for s in spans)


def test_answer_at_the_very_end_of_the_context(tiny_models):
    tok = load_tokenizer(str(tiny_models["bert"]))
    answer = "harbour lights"
    ex = one("what ends it?", f"{FILLER} and at last the {answer}", answer)
    spans = window_answers(tok, ex, max_length=40, stride=10)
    assert spans[-1] == answer
    assert ex.contexts[0].endswith(spans[-1])


def test_offsets_into_text_with_accents_and_emoji_give_the_original_characters(tiny_models):
    tok = load_tokenizer(str(tiny_models["bert"]))
    context = "Zoë met the crêpe maker 😀 at the Café Noël in Besançon 🎉, ünder the bridge."
    answer = "Café Noël in Besançon 🎉"
    ex = one("where?", context, answer)
    assert window_answers(tok, ex, max_length=64, stride=16) == [answer]
    # Decoding: logits peaked on the answer's first and last tokens give its exact characters.
    w = encode_qa(tok, ex, 64, 16)
    logits = np.zeros((len(w.data.features["input_ids"][0]), 2), dtype=np.float32)
    targets = window_answers(tok, ex, 64, 16)
    assert targets == [answer]
    enc = encode_qa(tok, ex, 64, 16, train=True)
    logits[enc.data.features["start_positions"][0], 0] = 10
    logits[enc.data.features["end_positions"][0], 1] = 10
    (got,) = best_spans(w, [logits], ex)
    assert got.answer == answer and context[got.start : got.end] == answer


def test_a_span_longer_than_max_answer_length_is_never_chosen(tiny_models):
    tok = load_tokenizer(str(tiny_models["bert"]))
    ex = questions([("q?", "one two three four five six seven eight nine ten")])
    w = encode_qa(tok, ex, 64, None)
    n = w.span[0][1] - w.span[0][0]  # the context's tokens, all in one window
    logits = np.zeros((len(w.data.features["input_ids"][0]), 2), dtype=np.float32)
    logits[w.first[0], 0] = 10  # the first token starts the span
    logits[w.first[0] + n - 1, 1] = 10  # the last token ends it: n tokens
    assert best_spans(w, [logits], ex, max_answer_length=n)[0].answer == ex.contexts[0]
    shorter = best_spans(w, [logits], ex, max_answer_length=n - 1)[0].answer
    assert shorter != ex.contexts[0] and shorter in ex.contexts[0]


def test_squad_v2_null_answer_wins_past_the_threshold_tuned_for_best_f1(tiny_models):
    from warmstart.data.squad import answer_tokens
    from warmstart.inference.qa import best_threshold

    tok = load_tokenizer(str(tiny_models["bert"]))
    context = "the harbour lights were lit at nine"
    ex = QAExamples(
        "t",
        ["when were they lit?", "who built the moon?"],
        [context, context],
        [[("nine", context.index("nine"))], []],
        ["a", "b"],
        ["a", "b"],
        [False, True],
    )
    w = encode_qa(tok, ex, 64, None, train=True)
    logits = []
    for r in range(2):
        row = np.zeros((len(w.data.features["input_ids"][r]), 2), dtype=np.float32)
        first, last = answer_tokens(w.offsets[r], ("nine", context.index("nine")))
        row[w.first[r] + first, 0] = row[w.first[r] + last, 1] = 4.0  # "nine" scores 8 in both
        row[w.cls, :] = 1.0 if r == 0 else 6.0  # the null scores 2 and 12
        logits.append(row)
    always = best_spans(w, logits, ex, null_threshold=float("inf"))
    assert [a.null_score_diff for a in always] == [-6.0, 4.0]
    t = best_threshold(always, [["nine"], []])
    assert -6.0 <= t < 4.0  # any threshold between the two gets both right
    got = best_spans(w, logits, ex, null_threshold=t)
    assert [a.answer for a in got] == ["nine", ""] and got[1].start == -1
    assert squad_metrics([a.answer for a in got], [["nine"], []])["f1"] == 100.0


# -- the official metric ---------------------------------------------------------------------------


def test_official_squad_metric_on_known_cases():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple and a pear") == "apple and pear"
    # P = 2/2, R = 2/3: F1 0.8 (the official script's arithmetic)
    assert squad_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert squad_f1("dog", "cat") == 0.0
    m = squad_metrics(["Denver Broncos", "in 1990"], [["Denver Broncos", "Broncos"], ["1989"]])
    assert m["exact_match"] == 50.0 and m["f1"] == 50.0
    # best over the references: the second one matches exactly
    assert squad_metrics(["broncos"], [["Denver Broncos", "the Broncos"]])["exact_match"] == 100.0
    # SQuAD v2: a question without an answer is right only when nothing is answered
    v2 = squad_metrics(["", "x", "Paris"], [[], [], ["Paris"]])
    assert v2["NoAns_total"] == 2 and v2["NoAns_exact"] == 50.0
    assert v2["HasAns_total"] == 1 and v2["HasAns_f1"] == 100.0
    assert v2["exact_match"] == pytest.approx(200 / 3)


# -- a tiny model learns to answer ---------------------------------------------------------------

CITIES = ["paris", "london", "berlin", "madrid", "rome", "vienna", "oslo", "dublin"]
WORDS = ["film", "story", "actor", "music", "scene", "ending", "plot", "script"]


def synthetic(n: int, seed: int) -> list[dict]:
    """Questions whose answer follows a cue word, at a varying place in a longish context."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        city = rng.choice(CITIES)
        before = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14)))
        after = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 14)))
        context = f"{before} . we met in {city} . {after} ."
        rows.append(
            {
                "id": f"q{i}",
                "question": "where did we meet ?",
                "context": context,
                "answers": {"text": [city], "answer_start": [context.index(f"in {city}") + 3]},
            }
        )
    return rows


def write_jsonl(rows: list[dict], path) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def qa_run(tiny_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa")
    train = write_jsonl(synthetic(160, 0), folder / "train.jsonl")
    test = write_jsonl(synthetic(40, 1), folder / "test.jsonl")
    result = warmstart.finetune(
        task="qa",
        data=train,
        test=test,
        model=str(tiny_models["bert"]),
        max_length=40,
        stride=12,
        epochs=3,
        precision="fp32",
        lr=3e-3,
        batch_size=16,
        out=str(folder / "run"),
        progress=False,
    )
    return result, test


def test_a_tiny_model_learns_to_answer(qa_run):
    result, _ = qa_run
    # A random 2-layer model answers nothing right; after training it finds the city.
    assert result.metrics["test"]["exact_match"] >= 80.0
    config = json.loads((result.model_dir / "config.json").read_text())
    assert config["architectures"] == ["BertForQuestionAnswering"]


def test_saved_model_gives_the_same_answers_in_plain_transformers(qa_run):
    """transformers 5 removed pipeline("question-answering"); where it exists it must agree, and
    everywhere the folder must load with AutoModelForQuestionAnswering and give, through the HF
    recipe's own tokenisation and best-span rule, the answers warmstart predict gives."""
    import torch
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer, pipeline

    result, test = qa_run
    rows = [json.loads(x) for x in open(test)][:8]
    ours = warmstart.predict(model=str(result.run_dir), input=test, limit=8, backend="torch")
    try:
        qa = pipeline("question-answering", model=str(result.model_dir))
    except KeyError:  # removed from transformers 5
        qa = None
    tok = AutoTokenizer.from_pretrained(result.model_dir)
    model = AutoModelForQuestionAnswering.from_pretrained(result.model_dir).eval()
    for row, answer in zip(rows, ours):
        if qa is not None:
            assert qa(question=row["question"], context=row["context"])["answer"] == answer.answer
        enc = tok(row["question"], row["context"], return_offsets_mapping=True, return_tensors="pt")
        offsets = enc.pop("offset_mapping")[0]
        in_context = torch.tensor([s == 1 for s in enc.sequence_ids(0)])
        with torch.no_grad():
            out = model(**enc)
        start = out.start_logits[0].masked_fill(~in_context, -1e9)
        end = out.end_logits[0].masked_fill(~in_context, -1e9)
        scores = start[:, None] + end[None, :]
        scores = scores.masked_fill(~torch.ones_like(scores, dtype=torch.bool).triu(), -1e9)
        s, e = divmod(int(scores.argmax()), scores.shape[1])
        assert row["context"][offsets[s][0] : offsets[e][1]] == answer.answer
        assert answer.answer == row["context"][answer.start : answer.end]


def test_evaluate_predict_and_onnx_int8_answer_alike(qa_run, tmp_path, capsys):
    result, test = qa_run
    torch_metrics = warmstart.evaluate(model=str(result.run_dir), data=test, backend="torch")
    assert torch_metrics.metrics["exact_match"] == result.metrics["test"]["exact_match"]
    onnx = warmstart.evaluate(model=str(result.run_dir), data=test, backend="onnx", quantize="int8")
    assert onnx.metrics["backend"] == "onnx-int8"
    assert abs(onnx.metrics["f1"] - torch_metrics.metrics["f1"]) <= 10.0
    code = main(
        [
            "predict",
            str(result.run_dir),
            "--question",
            "where did we meet ?",
            "--context",
            "film plot . we met in oslo . music .",
            "--backend",
            "torch",
        ]
    )
    assert code == 0
    (record,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert record["answer"] == "oslo" and (record["start"], record["end"]) == (22, 26)


def test_serve_answers_on_the_answer_route(qa_run):
    from fastapi.testclient import TestClient

    from warmstart.config import ServeConfig
    from warmstart.serving import ServedModel, create_app

    result, _ = qa_run
    served = ServedModel.load(str(result.run_dir))
    client = TestClient(create_app(served, ServeConfig(model=served.name)))
    context = "plot . we met in rome . scene ."
    r = client.post("/answer", json={"question": "where did we meet ?", "context": context})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == "rome" and context[body["start"] : body["end"]] == "rome"
    assert client.post("/predict", json={"texts": ["x"]}).status_code == 404
    assert client.post("/answer", json={"question": " ", "context": context}).status_code == 422


# -- bad input -------------------------------------------------------------------------------------


def test_an_answer_not_in_its_context_is_one_line_naming_file_and_row(tmp_path, capsys):
    rows = synthetic(3, 0)
    rows[1]["answers"] = {"text": ["atlantis"], "answer_start": [4]}
    path = write_jsonl(rows, tmp_path / "bad.jsonl")
    assert main(["finetune", "--task", "qa", "--data", path, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "bad.jsonl" in err and "row 2" in err and "'atlantis'" in err


def test_squad_json_answer_offset_off_by_one_names_the_question(tmp_path):
    doc = {
        "version": "1.1",
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": "The sky is blue.",
                        "qas": [
                            {
                                "id": "abc",
                                "question": "What colour?",
                                "answers": [{"text": "blue", "answer_start": 10}],
                            }
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UserError, match=r"question 'abc'.*'blue'.*it is at 11"):
        read_qa(str(path))
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 11
    path.write_text(json.dumps(doc))
    assert read_qa(str(path)).answers == [[("blue", 11)]]


# -- resume after kill -------------------------------------------------------------------------------


@pytest.mark.slow
def test_qa_run_resumed_after_kill_ends_like_an_uninterrupted_one(tiny_models, tmp_path):
    train = write_jsonl(synthetic(320, 0), tmp_path / "train.jsonl")
    test = write_jsonl(synthetic(40, 1), tmp_path / "test.jsonl")
    args = [
        "finetune",
        "--task",
        "qa",
        "--data",
        train,
        "--test",
        test,
        "--model",
        str(tiny_models["bert"]),
        "--max-length",
        "48",
        "--epochs",
        "3",
        "--lr",
        "3e-3",
        "--save-steps",
        "7",
        "--no-progress",
    ]
    killed = tmp_path / "killed"
    kill_after_checkpoint(args, killed)
    assert main(["finetune", "--config", str(killed / "config.yaml"), "--resume"]) == 0
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    resumed = json.loads((killed / "metrics.json").read_text())
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert resumed["test"] == full["test"]
