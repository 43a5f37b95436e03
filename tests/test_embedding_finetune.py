"""`finetune --task embedding`: the in-batch loss is sentence-transformers' MultipleNegativesRankingLoss,
cached negatives give the gradients of the whole batch, judged-relevant documents are never
negatives, and the saved folder is a sentence-transformers model that `embed` reads identically.
Models: a 2-layer BERT of width 32 (tests/test_retrieval.py's fixtures); data: a Cranfield slice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

import test_retrieval
from conftest import kill_after_checkpoint
from warmstart.cli import main
from warmstart.kinds.embedding import ContrastiveEncoder, in_batch_loss

# The Cranfield slice and the tiny BERT, shared with test_retrieval (session fixtures).
cranfield_slice = test_retrieval.cranfield_slice
tiny_bert = test_retrieval.tiny_bert


def test_the_in_batch_loss_is_sentence_transformers_multiple_negatives_ranking_loss():
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    g = torch.Generator().manual_seed(0)
    anchors, positives, negatives = (torch.randn(6, 16, generator=g) for _ in range(3))
    theirs = MultipleNegativesRankingLoss(model=None, scale=20.0).compute_loss_from_embeddings(
        [anchors, positives, negatives], None
    )
    ours = in_batch_loss(anchors, torch.cat([positives, negatives]), 20.0)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_a_document_judged_relevant_to_an_anchor_is_not_its_negative():
    g = torch.Generator().manual_seed(1)
    anchors, positives = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 1] = True  # row 1's positive is relevant to anchor 0 as well
    masked = in_batch_loss(anchors, positives, 20.0, mask)
    # The same as anchor 0 never seeing candidate 1: its row of logits without that column.
    scores = (
        20.0
        * torch.nn.functional.normalize(anchors, dim=-1)
        @ (torch.nn.functional.normalize(positives, dim=-1).T)
    )
    rows = [torch.log_softmax(scores[0, [0, 2, 3]], 0)[0]] + [
        torch.log_softmax(scores[i], 0)[i] for i in range(1, 4)
    ]
    assert float(masked) == pytest.approx(float(-torch.stack(rows).mean()), rel=1e-5)
    assert float(masked) < float(in_batch_loss(anchors, positives, 20.0))


def _tiny_encoder(mini_batch_size: int | None) -> ContrastiveEncoder:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ContrastiveEncoder(
        BertModel(config), "mean", True, 20.0, learn_scale=True, mini_batch_size=mini_batch_size
    )


def test_cached_negatives_give_the_gradients_of_the_whole_batch():
    g = torch.Generator().manual_seed(2)
    batch = {}
    for col in ("a", "p", "n0"):
        batch[f"{col}_input_ids"] = torch.randint(1, 50, (8, 7), generator=g)
        batch[f"{col}_attention_mask"] = torch.ones(8, 7, dtype=torch.long)
    grads = []
    for mini in (None, 3):
        model = _tiny_encoder(mini)
        loss = model(**batch).loss
        (loss * 0.5).backward()  # as under gradient accumulation: the engine scales the loss
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    whole, cached = grads
    assert set(whole) == set(cached) and "log_scale" in whole
    for name in whole:
        assert torch.allclose(whole[name], cached[name], atol=1e-5), name


@pytest.fixture(scope="session")
def embedding_run(tmp_path_factory, cranfield_slice, tiny_bert):
    out = tmp_path_factory.mktemp("embedding") / "run"
    args = [
        "finetune",
        "--task",
        "embedding",
        "--model",
        str(tiny_bert),
        "--data",
        str(cranfield_slice),
        "--test",
        str(cranfield_slice),
        "--max-train-samples",
        "5",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--max-length",
        "48",
        "--precision",
        "fp32",
        "--attn-implementation",
        "sdpa",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    return out


def test_a_saved_embedding_model_loads_in_sentence_transformers_as_embed_reads_it(
    embedding_run, tmp_path
):
    from sentence_transformers import SentenceTransformer

    model = embedding_run / "model"
    modules = json.loads((model / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[1] for m in modules] == ["Transformer", "Pooling", "Normalize"]
    texts = ["lift of a wing in a slipstream", "heat conduction in composite slabs", "x"]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    out = tmp_path / "emb.npy"
    assert (
        main(
            [
                "embed",
                "--model",
                str(model),
                "--data",
                str(tmp_path / "texts.txt"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    ours = np.load(out)
    theirs = SentenceTransformer(str(model), device="cpu").encode(texts)
    cos = (ours * theirs).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cos.min() > 0.999, cos


def test_a_finetuned_embedding_run_scores_its_test_queries(embedding_run, cranfield_slice):
    metrics = json.loads((embedding_run / "metrics.json").read_text())
    assert metrics["test"]["queries"] == 10
    assert 0.0 <= metrics["test"]["ndcg@10"] <= 1.0
    assert metrics["train_samples"] > 0


@pytest.mark.slow
def test_an_embedding_run_killed_after_a_checkpoint_resumes_to_the_same_end(
    tmp_path,
    cranfield_slice,
    tiny_bert,
):
    args = [
        "finetune",
        "--task",
        "embedding",
        "--model",
        str(tiny_bert),
        "--data",
        str(cranfield_slice),
        "--max-train-samples",
        "10",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--max-length",
        "32",
        "--save-steps",
        "2",
        "--precision",
        "fp32",
        "--attn-implementation",
        "sdpa",
        "--no-progress",
    ]
    state = kill_after_checkpoint(args, tmp_path / "killed")
    assert state["step"] >= 2
    assert main([*args, "--out", str(tmp_path / "killed"), "--resume"]) == 0
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    a = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    b = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    assert a["epochs"][-1]["train_loss"] == pytest.approx(b["epochs"][-1]["train_loss"], rel=1e-4)
