"""fewshot (setfit, prompt, incontext), k-shot sampling and the prompt head on tiny random
models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from warmstart.cli import main
from warmstart.errors import UserError
from warmstart.lowshot.fewshot import contrastive_pairs, sample_k
from warmstart.models import ALIASES


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
    r = fewshot(
        method="setfit",
        data=str(pool),
        test=str(test),
        k=4,
        repeats=2,
        pairs_per_example=4,
        model=str(tiny_models["bert"]),
        labels="negative,positive",
        max_length=32,
        lr=1e-3,
        out=str(tmp_path / "fs"),
        progress=False,
    )
    m = json.loads((r.run_dir / "metrics.json").read_text())
    assert m["shots"] == 8 and len(m["repeats"]) == 2 and m["test_rows"] == 40
    assert m["repeats"][0]["seed"] == 42 and m["repeats"][1]["seed"] == 43
    assert m["repeats"][0]["example_rows"] != m["repeats"][1]["example_rows"]
    accs = [x["accuracy"] for x in m["repeats"]]
    assert m["accuracy_mean"] == pytest.approx(np.mean(accs)) and m[
        "accuracy_std"
    ] == pytest.approx(np.std(accs))
    assert all(np.isfinite(x["final_pair_loss"]) for x in m["repeats"])


def test_incontext_runs_with_random_and_similar_examples(
    tiny_gpt2, tiny_models, pool_and_test, tmp_path, monkeypatch
):
    from warmstart import fewshot

    pool, test = pool_and_test
    kw = dict(
        method="incontext",
        data=str(pool),
        test=str(test),
        k=2,
        model=str(tiny_gpt2),
        labels="negative,positive",
        max_length=20,
        example_max_length=8,
        progress=False,
    )
    a = fewshot(out=str(tmp_path / "a"), **kw)
    assert a.metrics["repeats"][0]["prompt_tokens"] > 4 * 8
    # "similar" ranks the examples with MiniLM; a tiny encoder stands in for it here
    monkeypatch.setitem(ALIASES, "minilm", ("encoder", lambda: tiny_models["bert"]))
    b = fewshot(out=str(tmp_path / "b"), select="similar", **kw)
    assert (
        0 <= b.accuracy <= 1
        and b.metrics["repeats"][0]["example_rows"] == a.metrics["repeats"][0]["example_rows"]
    )


def test_fewshot_bad_input_exits_2_naming_k_or_the_missing_column(
    tiny_models, pool_and_test, tmp_path, capsys
):
    m = str(tiny_models["bert"])
    pool, test = pool_and_test
    assert (
        main(
            [
                "fewshot",
                "--data",
                str(pool),
                "--test",
                str(test),
                "--k",
                "1000",
                "--model",
                m,
                "--out",
                str(tmp_path / "f"),
            ]
        )
        == 2
    )
    assert "fewer than --k 1000" in capsys.readouterr().err
    assert (
        main(
            [
                "fewshot",
                "--data",
                str(pool),
                "--test",
                str(test),
                "--label-column",
                "stars",
                "--out",
                str(tmp_path / "g"),
            ]
        )
        == 2
    )
    assert "has no column 'stars'" in capsys.readouterr().err


CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_incontext_chat_puts_examples_in_earlier_turns(tiny_gpt2, pool_and_test, tmp_path):
    import shutil

    from transformers import AutoTokenizer, GPT2LMHeadModel

    from warmstart import fewshot
    from warmstart.lowshot.fewshot import chat_incontext
    from warmstart.lowshot.prompting import PromptScorer
    from warmstart.models.causal import CausalLM

    folder = tmp_path / "chat-gpt2"
    shutil.copytree(tiny_gpt2, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = CHATML
    tok.add_special_tokens(
        {"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]}
    )  # one token each
    tok.save_pretrained(folder)
    model = GPT2LMHeadModel.from_pretrained(folder)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(folder)
    lm = CausalLM.load(str(folder))
    s = PromptScorer(lm, max_length=20)
    prefix, query = chat_incontext(
        lm, s, "Review: {text}", ["great fun", "awful"], ["positive", "negative"], 8, "It is"
    )
    text = lm.tokenizer.decode(prefix) + query.format(text="QUERY")
    assert (
        text == "<|im_start|>user\nReview: great fun<|im_end|>\n<|im_start|>assistant\nIt is"
        " positive.<|im_end|>\n<|im_start|>user\nReview:"
        " awful<|im_end|>\n<|im_start|>assistant\nIt is"
        " negative.<|im_end|>\n<|im_start|>user\nReview:"
        " QUERY<|im_end|>\n<|im_start|>assistant\nIt is"
    )
    pool, test = pool_and_test
    r = fewshot(
        method="incontext",
        chat=True,
        data=str(pool),
        test=str(test),
        k=2,
        model=str(folder),
        labels="negative,positive",
        max_length=8,
        example_max_length=4,
        answer_prefix="It is",
        template="Review: {text}",
        out=str(tmp_path / "fs"),
        progress=False,
    )
    assert 0 <= r.accuracy <= 1 and r.metrics["repeats"][0]["prompt_tokens"] > 4 * 4
    with pytest.raises(UserError, match="no chat template"):
        fewshot(
            method="incontext",
            chat=True,
            data=str(pool),
            test=str(test),
            k=2,
            model=str(tiny_gpt2),
            max_length=16,
            out=str(tmp_path / "fs2"),
            progress=False,
        )


def test_prompt_head_learns_a_biased_prompts_offset_from_the_examples():
    from warmstart.lowshot.fewshot import score_features, score_head

    # A prompt whose log-odds carry the label (signal) but are shifted 3 nats towards "positive":
    # argmax says positive for almost every text; a head fitted on 16 examples per class removes the
    # shift.
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


def test_fewshot_prompt_scores_the_test_texts_once_for_all_draws(
    tiny_gpt2, pool_and_test, tmp_path, monkeypatch
):
    from warmstart import fewshot
    from warmstart.lowshot.zeroshot import PromptMethod

    scored: list[int] = []
    real = PromptMethod.label_probabilities

    def spy(self, texts, *a, **kw):
        scored.append(len(texts))
        return real(self, texts, *a, **kw)

    monkeypatch.setattr(PromptMethod, "label_probabilities", spy)
    pool, test = pool_and_test
    r = fewshot(
        method="prompt",
        data=str(pool),
        test=str(test),
        k=3,
        repeats=3,
        model=str(tiny_gpt2),
        labels="negative,positive",
        max_length=20,
        out=str(tmp_path / "fs"),
        progress=False,
    )
    m = json.loads((r.run_dir / "metrics.json").read_text())
    assert m["method"] == "prompt" and m["shots"] == 6 and len(m["repeats"]) == 3
    rows = [set(x["example_rows"]) for x in m["repeats"]]
    # the 40 test texts once, then each draw's examples that no earlier draw had
    assert scored[0] == 40 and sum(scored[1:]) == len(set.union(*rows)) and len(scored) <= 4
    assert all(0 <= x["accuracy"] <= 1 for x in m["repeats"])
    assert (
        "method: prompt" in (r.run_dir / "config.yaml").read_text()
        and 0 <= m["zero_shot_accuracy"] <= 1
    )


def test_fewshot_prompt_weighs_a_similarity_score_when_given_descriptions(
    tiny_gpt2, tiny_models, pool_and_test, tmp_path, monkeypatch
):
    from warmstart import fewshot
    from warmstart.lowshot.fewshot import score_head

    heads = []
    monkeypatch.setattr(
        "warmstart.lowshot.fewshot.score_head", lambda *a: heads.append(score_head(*a)) or heads[-1]
    )
    monkeypatch.setitem(ALIASES, "minilm", ("encoder", lambda: tiny_models["bert"]))  # for MiniLM
    pool, test = pool_and_test
    kw = dict(
        method="prompt",
        data=str(pool),
        test=str(test),
        k=3,
        model=str(tiny_gpt2),
        labels="negative,positive",
        max_length=20,
        progress=False,
    )
    r = fewshot(
        out=str(tmp_path / "fs"),
        descriptions=["negative=A bad film.", "positive=A good film.", "positive=I loved it."],
        **kw,
    )
    assert heads[-1].coef_.shape == (1, 2)  # the prompt's log-odds and the similarity's
    assert (
        0 <= r.metrics["similarity_zero_shot_accuracy"] <= 1
        and 0 <= r.metrics["zero_shot_accuracy"] <= 1
    )
    fewshot(out=str(tmp_path / "plain"), **kw)
    assert heads[-1].coef_.shape == (1, 1) and "similarity_zero_shot_accuracy" not in json.loads(
        (tmp_path / "plain" / "metrics.json").read_text()
    )
    with pytest.raises(UserError, match="'neutral' is not one of the labels"):
        fewshot(out=str(tmp_path / "bad"), descriptions=["neutral=So-so."], **kw)
    assert not (tmp_path / "bad").exists()  # refused before any output
    with pytest.raises(UserError, match="--descriptions does not apply to --method setfit"):
        fewshot(
            **{**kw, "method": "setfit"},
            out=str(tmp_path / "bad2"),
            descriptions=["negative=A bad film."],
        )
