"""PromptScorer on a tiny random GPT-2: prefix KV cache, multi-token labels, head/head+tail cutting,
calibration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TEXTS
from warmstart.errors import UserError


def test_prefix_cache_gives_the_same_scores_as_the_whole_prompt(tiny_gpt2):
    from warmstart.lowshot.prompting import PromptScorer
    from warmstart.models.causal import CausalLM

    s = PromptScorer(CausalLM.load(str(tiny_gpt2)), max_length=40)
    prefix = s.ids(
        "Review: great fun\nSentiment: positive\n\nReview: awful\nSentiment: negative\n\n"
    )
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
    from warmstart.lowshot.zeroshot import load_method

    # A random LM's answer depends mostly on the prompt's last tokens, which are the same for every
    # text: the prompt is biased towards one label whatever the text says. Calibration divides that
    # bias out.
    template = "{text}\nIn one word, the answer is"
    raw = load_method("prompt", str(tiny_gpt2), template=template, max_length=30, calibrate=False)
    cal = load_method("prompt", str(tiny_gpt2), template=template, max_length=30, calibrate=True)
    texts = pd.read_csv(__import__("conftest").IMDB, nrows=40)["review"].tolist()
    labels = ["yes", "no"]
    p_raw, p_cal = raw.scores(texts, labels), cal.scores(texts, labels)
    assert np.bincount(p_raw.argmax(1), minlength=2).max() >= 0.9 * len(
        texts
    )  # biased: one label for all
    assert (p_cal.argmax(1) != p_raw.argmax(1)).mean() > 0.3  # calibration moved many predictions
    from warmstart.lowshot.prompting import CONTENT_FREE

    # by construction, a content-free input is exactly undecided after calibration
    np.testing.assert_allclose(
        cal.scores(list(CONTENT_FREE), labels).mean(0), [0.5, 0.5], atol=0.15
    )


def test_prompts_are_cut_to_the_models_positions_and_overlong_labels_are_refused(tiny_gpt2):
    from warmstart.lowshot.zeroshot import load_method

    m = load_method("prompt", str(tiny_gpt2), max_length=1000)  # tiny GPT-2 reads 128 positions
    long_text = " ".join(["word"] * 400)
    p = m.scores([long_text, "short"], ["yes", "no"])
    assert p.shape == (2, 2) and np.allclose(p.sum(1), 1)
    with pytest.raises(UserError, match="reads at most 128"):
        m.scores([long_text], ["yes", " ".join(["very"] * 40)])


def test_head_tail_truncation_keeps_the_first_quarter_and_the_end(tiny_gpt2):
    from warmstart.lowshot.zeroshot import load_method

    head = load_method("prompt", str(tiny_gpt2), template="{text} Answer:", max_length=12).scorer
    both = load_method(
        "prompt", str(tiny_gpt2), template="{text} Answer:", max_length=12, truncate="head+tail"
    ).scorer
    ids = list(range(100, 140))
    assert head.cut(ids, 12) == ids[:12]
    assert both.cut(ids, 12) == ids[:3] + ids[-9:] and both.cut(ids[:10], 12) == ids[:10]
    text = " ".join(f"w{i}" for i in range(60))
    tail = both.ids(" Answer:")
    q = both.prompt_ids("{text} Answer:", text)
    assert len(q) == 12 + len(tail) and q[-len(tail) :] == tail
    assert q[:3] == both.ids(text)[:3] and q[3:12] == both.ids(text)[-9:]
    with pytest.raises(UserError, match="head or head\\+tail"):
        load_method("prompt", str(tiny_gpt2), max_length=12, truncate="middle")
