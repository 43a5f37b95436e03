"""--label-smoothing: the training loss of every kind that trains on classes or tokens, in both
engines, computed as the Trainer's LabelSmoother computes it; the valid loss stays plain
cross-entropy."""

from __future__ import annotations

import functools
import random
from pathlib import Path

import pytest
import torch
from transformers.modeling_outputs import ModelOutput
from transformers.trainer_pt_utils import LabelSmoother

import warmstart
from test_causal_lm import tiny_llama  # noqa: F401  (the fixture, shared)
from warmstart.cli import main
from warmstart.data.batching import IGNORE
from warmstart.training.common import smoothed_loss


@pytest.mark.parametrize("shift", [False, True])
def test_smoothed_loss_is_the_trainers_label_smoother(shift):
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    labels = torch.randint(0, 11, (3, 7))
    labels[0, 4:] = IGNORE
    labels[2, :2] = IGNORE
    out = ModelOutput(logits=logits)
    ours = smoothed_loss(0.1, shift=shift)(out, {"labels": labels})
    theirs = LabelSmoother(epsilon=0.1)(out, labels, shift_labels=shift)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)
    assert smoothed_loss(0.0) is None  # no smoothing and no class weights: the model's own loss


def test_smoothing_and_class_weights_combine():
    logits, labels, w = (
        torch.randn(6, 3),
        torch.tensor([0, 1, 2, 2, 1, 0]),
        torch.tensor([1.0, 2.0, 0.5]),
    )
    got = smoothed_loss(0.2, w)(ModelOutput(logits=logits), {"labels": labels})
    assert got.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, labels, weight=w, label_smoothing=0.2).item()
    )


@pytest.fixture(scope="module")
def copy_pairs(tmp_path_factory) -> Path:
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdef") for _ in range(rng.randint(2, 5))) for _ in range(60)]
    path = tmp_path_factory.mktemp("pairs") / "copy.tsv"
    path.write_text("src\ttgt\n" + "".join(f"{w}\t{w}\n" for w in words))
    return path


@pytest.fixture(scope="module")
def copier(copy_pairs, tmp_path_factory) -> Path:
    """A tiny BART that has learnt to copy a little: its predictions are far from uniform."""
    out = tmp_path_factory.mktemp("copier") / "run"
    warmstart.finetune(
        data=str(copy_pairs),
        task="seq2seq",
        from_scratch=True,
        tokenizer="char",
        split="50,10",
        epochs=4,
        batch_size=10,
        lr=3e-3,
        precision="fp32",
        metrics="exact_match",
        progress=False,
        out=str(out),
    )
    return out


@pytest.mark.parametrize("engine", ["native", "trainer"])
def test_label_smoothing_is_the_loss_trained_on_in_both_engines_and_not_the_valid_loss(
    copy_pairs, copier, tmp_path, engine
):
    # A learning rate too small to move the weights: both runs see the same model, so the smoothed
    # run's train loss must be the higher (spreading probability away from a confident model's
    # labels costs), while their valid losses (plain cross-entropy) agree.
    def run(factor: float):
        return warmstart.finetune(
            data=str(copy_pairs),
            task="seq2seq",
            model=str(copier),
            split="50,10",
            epochs=1,
            batch_size=10,
            lr=1e-12,
            precision="fp32",
            metrics="exact_match",
            eval_samples=2,
            label_smoothing=factor,
            engine=engine,
            progress=False,
            out=str(tmp_path / f"ls{factor}"),
        ).metrics["epochs"][0]

    plain, smoothed = run(0.0), run(0.3)
    assert smoothed["valid_loss"] == pytest.approx(plain["valid_loss"], rel=1e-5)
    assert smoothed["train_loss"] > plain["train_loss"] + 0.1, (plain, smoothed)
    assert (tmp_path / "ls0.3" / "config.yaml").read_text().count("label_smoothing: 0.3") == 1


@pytest.mark.parametrize("engine", ["native", "trainer"])
def test_a_causal_lm_is_not_given_the_labels_when_the_loss_is_computed_for_it(
    tiny_llama,  # noqa: F811
    copy_pairs,
    tmp_path,
    monkeypatch,
    engine,
):
    # Given labels, the model computes its own cross-entropy too: for SmolLM2 a second fp32 pass
    # over logits of 49,152 words per token, thrown away. Without smoothing the Trainer trains on the
    # model's own loss; the native engine never passes labels.
    from transformers import LlamaForCausalLM

    given = []
    forward = LlamaForCausalLM.forward

    @functools.wraps(forward)  # the Trainer keeps the batch columns the forward's signature names
    def recording(self, *args, **kwargs):
        if self.training:
            given.append(kwargs.get("labels") is not None)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(LlamaForCausalLM, "forward", recording)
    for factor in (0.1, 0.0):
        given.clear()
        result = warmstart.finetune(
            data=str(copy_pairs),
            task="causal-lm",
            model=str(tiny_llama),
            split="50,10",
            template="copy: {source} =",
            epochs=1,
            batch_size=10,
            lr=1e-3,
            precision="fp32",
            attn_implementation="sdpa",  # no timed steps
            metrics="exact_match",
            eval_samples=2,
            label_smoothing=factor,
            engine=engine,
            progress=False,
            out=str(tmp_path / f"ls{factor}"),
        )
        # The native engine computes every causal-LM loss itself, from the labelled positions
        # alone (models/token_logprobs.py); the Trainer lets the model compute it when it can.
        own = factor == 0.0 and engine == "trainer"
        assert len(given) == 5 and set(given) == {own}, (factor, given)
        assert result.metrics["epochs"][0]["train_loss"] > 0


@pytest.mark.parametrize(
    "problem,labels", [("regression", ["0.5", "1.5"]), ("multi-label", ['["a"]', '["a","b"]'])]
)
def test_label_smoothing_is_refused_where_there_are_no_classes(tmp_path, capsys, problem, labels):
    path = tmp_path / "t.csv"
    path.write_text(
        "text,label\n"
        + "".join(f"row {i},{labels[i % 2]}\n" for i in range(12))
        .replace('["a","b"]', '"[""a"",""b""]"')
        .replace('["a"]', '"[""a""]"')
    )
    code = main(
        [
            "finetune",
            "--data",
            str(path),
            "--problem",
            problem,
            "--label-smoothing",
            "0.1",
            "--split",
            "8,2,2",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"error: --label-smoothing does not apply to {problem}"], err
