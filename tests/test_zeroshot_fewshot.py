"""zeroshot (nli, similarity, prompt) and fewshot (setfit, prompt, incontext) on tiny random models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from warmstart.cli import main
from warmstart.errors import UserError
from warmstart.fewshot_methods import contrastive_pairs, sample_k
from warmstart.inference import softmax


@pytest.fixture(scope="module")
def tiny_nli(tiny_models, tmp_path_factory):
    """A random BERT NLI head whose entailment class is id 2 and named in capitals, as some checkpoints do."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny-nli")
    tok = AutoTokenizer.from_pretrained(tiny_models["bert"])
    tok.save_pretrained(folder)
    id2label = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}
    config = BertConfig.from_pretrained(tiny_models["bert"], num_labels=3, id2label=id2label,
                                        label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(1)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


TEXTS = ["A wonderful film with a moving story.", "Dull and far too long.", "The actors did what they could.",
         "I would watch it again tomorrow, and the day after."]


def test_nli_scores_all_pairs_in_one_pass_with_the_entailment_id_from_label2id(tiny_nli):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from warmstart.zeroshot_methods import load_method

    method = load_method("nli", str(tiny_nli))
    assert method.entail == 2 and method.contra == 0
    labels = ["positive", "negative", "neutral"]
    p = method.scores(TEXTS, labels, batch_size=5)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_nli).eval()
    tok = AutoTokenizer.from_pretrained(tiny_nli)
    for i, t in enumerate(TEXTS):  # the reference: one pair at a time, as the pipeline does it
        with torch.no_grad():
            logits = torch.stack([model(**tok(t, f"This text is {lab}.", return_tensors="pt")).logits[0]
                                  for lab in labels]).numpy()
        np.testing.assert_allclose(p[i], softmax(logits[None, :, 2])[0], rtol=1e-4, atol=1e-5)
        multi = method.scores([t], labels, multi_label=True)[0]
        np.testing.assert_allclose(multi, softmax(logits[:, [0, 2]])[:, 1], rtol=1e-4, atol=1e-5)


def test_a_classifier_without_an_entailment_label_is_not_an_nli_model(tiny_models, tmp_path):
    from warmstart.models import load_classifier
    from warmstart.zeroshot_methods import load_method

    clf = tmp_path / "clf"
    load_classifier(str(tiny_models["bert"]), ["neg", "pos"]).save_pretrained(clf)
    import shutil

    for f in tiny_models["bert"].glob("*tok*"):
        shutil.copy(f, clf)
    with pytest.raises(UserError, match="not an NLI model"):
        load_method("nli", str(clf))
    with pytest.raises(UserError, match="needs --model"):
        load_method("nli")


def test_similarity_uses_description_ensembles(tiny_models):
    from warmstart.zeroshot_methods import load_method

    m = load_method("similarity", str(tiny_models["bert"]))
    m.descriptions = {"good": ["great", "excellent film"]}
    v = m.label_vectors(["good", "bad"])
    e = m.embedder.embed(["great", "excellent film", "This text is bad."])
    ref_good = e[:2].mean(0) / np.linalg.norm(e[:2].mean(0))
    np.testing.assert_allclose(v[0], ref_good, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v[1], e[2], rtol=1e-5, atol=1e-6)
    p = m.scores(TEXTS, ["good", "bad"])
    assert p.shape == (4, 2) and np.allclose(p.sum(1), 1)


def test_prefix_cache_gives_the_same_scores_as_the_whole_prompt(tiny_gpt2):
    from warmstart.lm import CausalLM
    from warmstart.prompting import PromptScorer

    s = PromptScorer(CausalLM.load(str(tiny_gpt2)), max_length=40)
    prefix = s.ids("Review: great fun\nSentiment: positive\n\nReview: awful\nSentiment: negative\n\n")
    queries = [s.ids(f"Review: {t}\nSentiment:") for t in TEXTS]
    single = s.label_ids([" positive", " negative"])
    multi = s.label_ids([" very good", " not good at all"])
    assert all(len(x) == 1 for x in single) and any(len(x) > 1 for x in multi)
    for labels in (single, multi):
        cached = s.score(queries, labels, prefix, batch_size=3)
        whole = s.score([prefix + q for q in queries], labels, None, batch_size=1)
        np.testing.assert_allclose(cached, whole, rtol=1e-4, atol=1e-4)
    # the multi-token path by hand: log p(t1 | q) + log p(t2 | q t1) + ...
    q, lab = queries[0], multi[1]
    with torch.no_grad():
        logp = torch.log_softmax(s.model(torch.tensor([q + lab])).logits[0], -1)
    ref = sum(float(logp[len(q) - 1 + j, tok]) for j, tok in enumerate(lab))
    assert s.score([q], [lab])[0, 0] == pytest.approx(ref, abs=1e-4)


def test_calibration_changes_predictions_of_a_biased_prompt(tiny_gpt2):
    from warmstart.zeroshot_methods import load_method

    # A random LM's answer depends mostly on the prompt's last tokens, which are the same for every text:
    # the prompt is biased towards one label whatever the text says. Calibration divides that bias out.
    template = "{text}\nIn one word, the answer is"
    raw = load_method("prompt", str(tiny_gpt2), template=template, max_length=30, calibrate=False)
    cal = load_method("prompt", str(tiny_gpt2), template=template, max_length=30, calibrate=True)
    texts = pd.read_csv(__import__("conftest").IMDB, nrows=40)["review"].tolist()
    labels = ["yes", "no"]
    p_raw, p_cal = raw.scores(texts, labels), cal.scores(texts, labels)
    assert np.bincount(p_raw.argmax(1), minlength=2).max() >= 0.9 * len(texts)  # biased: one label for all
    assert (p_cal.argmax(1) != p_raw.argmax(1)).mean() > 0.3  # calibration moved many predictions
    from warmstart.prompting import CONTENT_FREE

    # by construction, a content-free input is exactly undecided after calibration
    np.testing.assert_allclose(cal.scores(list(CONTENT_FREE), labels).mean(0), [0.5, 0.5], atol=0.15)


def test_k_shot_sampling_is_reproducible_and_balanced():
    y = np.array([0] * 30 + [1] * 5 + [2] * 12)
    a, b = sample_k(y, 5, seed=3), sample_k(y, 5, seed=3)
    assert a.tolist() == b.tolist()
    assert np.bincount(y[a]).tolist() == [5, 5, 5] and len(set(a.tolist())) == 15
    assert sample_k(y, 5, seed=4).tolist() != a.tolist()
    with pytest.raises(UserError, match="class '1' has 5 examples.*fewer than --k 6"):
        sample_k(y, 6, seed=0)
    pairs = contrastive_pairs(y[a], per_example=4, seed=0)
    assert len(pairs) == 60
    assert all((y[a][i] == y[a][j]) == (t == 1.0) and i != j for i, j, t in pairs)
    assert sum(t for _, _, t in pairs) == 30  # half same-class, half other-class


@pytest.fixture
def pool_and_test(tmp_path, imdb_head):
    df = pd.read_csv(imdb_head)
    pool, test = tmp_path / "pool.csv", tmp_path / "test.csv"
    df.iloc[:300].to_csv(pool, index=False)
    df.iloc[300:340].to_csv(test, index=False)
    return pool, test


def test_setfit_trains_the_encoder_and_reports_mean_and_std(tiny_models, pool_and_test, tmp_path):
    from warmstart import fewshot

    pool, test = pool_and_test
    r = fewshot(method="setfit", data=str(pool), test=str(test), k=4, repeats=2, pairs_per_example=4,
                model=str(tiny_models["bert"]), labels="negative,positive", max_length=32, lr=1e-3,
                out=str(tmp_path / "fs"), progress=False)
    m = json.loads((r.run_dir / "metrics.json").read_text())
    assert m["shots"] == 8 and len(m["repeats"]) == 2 and m["test_rows"] == 40
    assert m["repeats"][0]["seed"] == 42 and m["repeats"][1]["seed"] == 43
    assert m["repeats"][0]["example_rows"] != m["repeats"][1]["example_rows"]
    accs = [x["accuracy"] for x in m["repeats"]]
    assert m["accuracy_mean"] == pytest.approx(np.mean(accs)) and m["accuracy_std"] == pytest.approx(np.std(accs))
    assert all(np.isfinite(x["final_pair_loss"]) for x in m["repeats"])


def test_incontext_runs_with_random_and_similar_examples(tiny_gpt2, tiny_models, pool_and_test, tmp_path,
                                                        monkeypatch):
    from warmstart import fewshot

    pool, test = pool_and_test
    kw = dict(method="incontext", data=str(pool), test=str(test), k=2, model=str(tiny_gpt2),
              labels="negative,positive", max_length=20, example_max_length=8, progress=False)
    a = fewshot(out=str(tmp_path / "a"), **kw)
    assert a.metrics["repeats"][0]["prompt_tokens"] > 4 * 8
    # "similar" ranks the examples with MiniLM; a tiny encoder stands in for it here
    monkeypatch.setattr("warmstart.features.resolve_any", lambda name: str(tiny_models["bert"]))
    b = fewshot(out=str(tmp_path / "b"), select="similar", **kw)
    assert 0 <= b.accuracy <= 1 and b.metrics["repeats"][0]["example_rows"] == a.metrics["repeats"][0]["example_rows"]


def test_zeroshot_evaluates_with_a_label_column_and_predicts_without(tiny_models, imdb_head, tmp_path, capsys):
    m = str(tiny_models["bert"])
    assert main(["zeroshot", "--method", "similarity", "--model", m, "--labels", "negative,positive",
                 "--data", str(imdb_head), "--limit", "30", "--out", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n"] == 30 and metrics["label_column"] == "sentiment" and "texts_per_s" in metrics
    assert main(["zeroshot", "--method", "similarity", "--model", m, "--labels", "good,bad", "Fine film."]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert row["label"] in ("good", "bad") and set(row["probabilities"]) == {"good", "bad"}


def test_zeroshot_and_fewshot_bad_input_exit_2(tiny_models, imdb_head, pool_and_test, tmp_path, capsys):
    m = str(tiny_models["bert"])
    assert main(["zeroshot", "--model", m, "--labels", "", "some text"]) == 2
    assert "no candidate labels" in capsys.readouterr().err
    assert main(["zeroshot", "--model", m, "--labels", "a,b", "--data", str(imdb_head),
                 "--label-column", "stars"]) == 2
    assert "has no column 'stars'" in capsys.readouterr().err
    odd = tmp_path / "odd.csv"
    pd.DataFrame({"text": ["fine", "bad", "ok"], "label": ["good", "bad", "meh"]}).to_csv(odd, index=False)
    assert main(["zeroshot", "--model", m, "--labels", "good,bad", "--data", str(odd)]) == 2
    assert "row 3, column 'label': label 'meh' is not one of the labels (good, bad)" in capsys.readouterr().err
    pool, test = pool_and_test
    assert main(["fewshot", "--data", str(pool), "--test", str(test), "--k", "1000", "--model", m,
                 "--out", str(tmp_path / "f")]) == 2
    assert "fewer than --k 1000" in capsys.readouterr().err
    assert main(["fewshot", "--data", str(pool), "--test", str(test), "--label-column", "stars",
                 "--out", str(tmp_path / "g")]) == 2
    assert "has no column 'stars'" in capsys.readouterr().err


def test_prompts_are_cut_to_the_models_positions_and_overlong_labels_are_refused(tiny_gpt2):
    from warmstart.zeroshot_methods import load_method

    m = load_method("prompt", str(tiny_gpt2), max_length=1000)  # tiny GPT-2 reads 128 positions
    long_text = " ".join(["word"] * 400)
    p = m.scores([long_text, "short"], ["yes", "no"])
    assert p.shape == (2, 2) and np.allclose(p.sum(1), 1)
    with pytest.raises(UserError, match="reads at most 128"):
        m.scores([long_text], ["yes", " ".join(["very"] * 40)])


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_incontext_chat_puts_examples_in_earlier_turns(tiny_gpt2, pool_and_test, tmp_path):
    import shutil

    from transformers import AutoTokenizer, GPT2LMHeadModel

    from warmstart import fewshot
    from warmstart.fewshot_methods import chat_incontext
    from warmstart.lm import CausalLM
    from warmstart.prompting import PromptScorer

    folder = tmp_path / "chat-gpt2"
    shutil.copytree(tiny_gpt2, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = CHATML
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})  # one token each
    tok.save_pretrained(folder)
    model = GPT2LMHeadModel.from_pretrained(folder)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(folder)
    lm = CausalLM.load(str(folder))
    s = PromptScorer(lm, max_length=20)
    prefix, query = chat_incontext(lm, s, "Review: {text}", ["great fun", "awful"], ["positive", "negative"], 8,
                                   "It is")
    text = lm.tokenizer.decode(prefix) + query.format(text="QUERY")
    assert text == ("<|im_start|>user\nReview: great fun<|im_end|>\n<|im_start|>assistant\nIt is positive.<|im_end|>\n"
                    "<|im_start|>user\nReview: awful<|im_end|>\n<|im_start|>assistant\nIt is negative.<|im_end|>\n"
                    "<|im_start|>user\nReview: QUERY<|im_end|>\n<|im_start|>assistant\nIt is")
    pool, test = pool_and_test
    r = fewshot(method="incontext", chat=True, data=str(pool), test=str(test), k=2, model=str(folder),
                labels="negative,positive", max_length=8, example_max_length=4, answer_prefix="It is",
                template="Review: {text}", out=str(tmp_path / "fs"), progress=False)
    assert 0 <= r.accuracy <= 1 and r.metrics["repeats"][0]["prompt_tokens"] > 4 * 4
    with pytest.raises(UserError, match="no chat template"):
        fewshot(method="incontext", chat=True, data=str(pool), test=str(test), k=2, model=str(tiny_gpt2),
                max_length=16, out=str(tmp_path / "fs2"), progress=False)


def test_prompt_head_learns_a_biased_prompts_offset_from_the_examples():
    from warmstart.fewshot_methods import score_features, score_head

    # A prompt whose log-odds carry the label (signal) but are shifted 3 nats towards "positive": argmax
    # says positive for almost every text; a head fitted on 16 examples per class removes the shift.
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    logodds = np.where(y == 1, 1.0, -1.0) + rng.normal(0, 0.8, len(y)) + 3.0
    probs = np.stack([1 / (1 + np.exp(logodds)), 1 / (1 + np.exp(-logodds))], axis=1)
    np.testing.assert_allclose(score_features(probs)[:, 0], logodds, rtol=1e-6)
    assert (probs.argmax(1) == 1).mean() > 0.95
    shots = sample_k(y[:100], 16, seed=0)
    head = score_head(probs[shots], y[shots], seed=0)
    best = (np.where(logodds > 3.0, 1, 0) == y)[100:].mean()  # the threshold that knows the shift
    assert (head.predict(score_features(probs[100:])) == y[100:]).mean() > best - 0.05


def test_fewshot_prompt_scores_the_test_texts_once_for_all_draws(tiny_gpt2, pool_and_test, tmp_path, monkeypatch):
    from warmstart import fewshot
    from warmstart.zeroshot_methods import PromptMethod

    scored: list[int] = []
    real = PromptMethod.label_probabilities

    def spy(self, texts, *a, **kw):
        scored.append(len(texts))
        return real(self, texts, *a, **kw)

    monkeypatch.setattr(PromptMethod, "label_probabilities", spy)
    pool, test = pool_and_test
    r = fewshot(method="prompt", data=str(pool), test=str(test), k=3, repeats=3, model=str(tiny_gpt2),
                labels="negative,positive", max_length=20, out=str(tmp_path / "fs"), progress=False)
    m = json.loads((r.run_dir / "metrics.json").read_text())
    assert m["method"] == "prompt" and m["shots"] == 6 and len(m["repeats"]) == 3
    rows = [set(x["example_rows"]) for x in m["repeats"]]
    # the 40 test texts once, then each draw's examples that no earlier draw had
    assert scored[0] == 40 and sum(scored[1:]) == len(set.union(*rows)) and len(scored) <= 4
    assert all(0 <= x["accuracy"] <= 1 for x in m["repeats"])
    assert "method: prompt" in (r.run_dir / "config.yaml").read_text() and 0 <= m["zero_shot_accuracy"] <= 1


def test_head_tail_truncation_keeps_the_first_quarter_and_the_end(tiny_gpt2):
    from warmstart.zeroshot_methods import load_method

    head = load_method("prompt", str(tiny_gpt2), template="{text} Answer:", max_length=12).scorer
    both = load_method("prompt", str(tiny_gpt2), template="{text} Answer:", max_length=12, truncate="head+tail").scorer
    ids = list(range(100, 140))
    assert head.cut(ids, 12) == ids[:12]
    assert both.cut(ids, 12) == ids[:3] + ids[-9:] and both.cut(ids[:10], 12) == ids[:10]
    text = " ".join(f"w{i}" for i in range(60))
    tail = both.ids(" Answer:")
    q = both.prompt_ids("{text} Answer:", text)
    assert len(q) == 12 + len(tail) and q[-len(tail):] == tail
    assert q[:3] == both.ids(text)[:3] and q[3:12] == both.ids(text)[-9:]
    with pytest.raises(UserError, match="head or head\\+tail"):
        load_method("prompt", str(tiny_gpt2), max_length=12, truncate="middle")


def test_fewshot_prompt_weighs_a_similarity_score_when_given_descriptions(tiny_gpt2, tiny_models, pool_and_test,
                                                                          tmp_path, monkeypatch):
    from warmstart import fewshot
    from warmstart.fewshot_methods import score_head

    heads = []
    monkeypatch.setattr("warmstart.tasks.fewshot.score_head", lambda *a: heads.append(score_head(*a)) or heads[-1])
    monkeypatch.setattr("warmstart.features.resolve_any", lambda name: str(tiny_models["bert"]))  # for MiniLM
    pool, test = pool_and_test
    kw = dict(method="prompt", data=str(pool), test=str(test), k=3, model=str(tiny_gpt2), labels="negative,positive",
              max_length=20, progress=False)
    r = fewshot(out=str(tmp_path / "fs"), descriptions=["negative=A bad film.", "positive=A good film.",
                                                        "positive=I loved it."], **kw)
    assert heads[-1].coef_.shape == (1, 2)  # the prompt's log-odds and the similarity's
    assert 0 <= r.metrics["similarity_zero_shot_accuracy"] <= 1 and 0 <= r.metrics["zero_shot_accuracy"] <= 1
    fewshot(out=str(tmp_path / "plain"), **kw)
    assert heads[-1].coef_.shape == (1, 1) and "similarity_zero_shot_accuracy" not in json.loads(
        (tmp_path / "plain" / "metrics.json").read_text())
    with pytest.raises(UserError, match="'neutral' is not one of the labels"):
        fewshot(out=str(tmp_path / "bad"), descriptions=["neutral=So-so."], **kw)
    assert not (tmp_path / "bad").exists()  # refused before any output
    with pytest.raises(UserError, match="--descriptions is for --method prompt"):
        fewshot(**{**kw, "method": "setfit"}, out=str(tmp_path / "bad2"), descriptions=["negative=A bad film."])
