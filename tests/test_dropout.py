"""--dropout (hidden states) and --attention-dropout reach the layers of every architecture, before
they are built; on a CPU, training draws dropout masks the faster way (training/dropout.py)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    AutoModelForMaskedLM,
    BartConfig,
    BertConfig,
    EncoderDecoderConfig,
    GPT2Config,
    LlamaConfig,
    T5Config,
)

import warmstart
from warmstart import objectives
from warmstart.config import PretrainConfig, make
from warmstart.errors import UserError
from warmstart.models import set_dropout
from warmstart.models.seq2seq import new_bart
from warmstart.tasks.pretrain import load_model
from warmstart.training import dropout as dropout_module
from warmstart.training.dropout import cpu_dropout
from warmstart.training.dropout import dropout as fast_dropout


def rates(model: torch.nn.Module) -> set[float]:
    """Every dropout rate in the module tree: nn.Dropout layers and the float rates BART's layers
    keep."""
    found = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
    found |= {m.dropout for m in model.modules() if isinstance(getattr(m, "dropout", None), float)}
    return found


def test_dropout_reaches_every_family_and_both_halves_of_an_encoder_decoder():
    bert = BertConfig()
    pair = EncoderDecoderConfig.from_encoder_decoder_configs(
        BertConfig(), BertConfig(is_decoder=True)
    )
    configs = {
        "bert": bert,
        "bart": BartConfig(),
        "gpt2": GPT2Config(),
        "t5": T5Config(),
        "bert2bert": pair,
    }
    for c in configs.values():
        set_dropout(c, (0.0, 0.25))
    assert (bert.hidden_dropout_prob, bert.attention_probs_dropout_prob) == (0.25, 0.0)
    assert (configs["bart"].dropout, configs["bart"].attention_dropout) == (0.25, 0.0)
    assert (
        configs["gpt2"].resid_pdrop,
        configs["gpt2"].embd_pdrop,
        configs["gpt2"].attn_pdrop,
    ) == (0.25, 0.25, 0.0)
    assert configs["t5"].dropout_rate == 0.25
    for half in (pair.encoder, pair.decoder):
        assert (half.hidden_dropout_prob, half.attention_probs_dropout_prob) == (0.25, 0.0)
    set_dropout(bert, (None, None))  # None keeps what the model has
    assert (bert.hidden_dropout_prob, bert.attention_probs_dropout_prob) == (0.25, 0.0)
    llama = LlamaConfig()
    set_dropout(llama, (0.0, None))
    with pytest.raises(
        UserError, match="--dropout: a LlamaConfig has no dropout on its hidden states"
    ):
        set_dropout(llama, (None, 0.1))


def test_a_bart_from_scratch_is_built_with_the_dropout_asked_for():
    texts = ["hello", "world", "h e l l o"] * 10
    assert rates(new_bart(texts, "char", "tiny", 100, 32)[0]) == {
        0.1,
        0.0,
    }  # the preset: hidden 0.1, attention 0
    assert rates(new_bart(texts, "char", "tiny", 100, 32, dropout=(0.0, 0.0))[0]) == {0.0}


def test_pretrain_continuing_a_checkpoint_builds_its_layers_with_the_dropout_asked_for(
    tiny_models, tmp_path
):
    corpus = tmp_path / "c.txt"
    corpus.write_text("a short line of text\n" * 20)
    cfg = make(
        PretrainConfig,
        None,
        dict(
            data=str(corpus),
            objective="mlm",
            model=str(tiny_models["bert"]),
            dropout=0.3,
            attention_dropout=0.0,
        ),
    )
    model, _ = load_model(cfg, objectives.objective("mlm"), [])
    assert isinstance(model, torch.nn.Module) and rates(model) == {0.3, 0.0}
    plain = AutoModelForMaskedLM.from_pretrained(tiny_models["bert"])
    assert 0.3 not in rates(plain)


def test_finetune_dropout_is_saved_with_the_model_and_in_the_run_config(tmp_path):
    data = tmp_path / "p.tsv"
    data.write_text(
        "src\ttgt\n"
        + "".join(f"{w}{i}\t{w[::-1]}{i}\n" for i in range(10) for w in ["abc", "hello"])
    )
    r = warmstart.finetune(
        data=str(data),
        task="seq2seq",
        from_scratch=True,
        tokenizer="char",
        size="tiny",
        split="16,4",
        epochs=1,
        batch_size=8,
        dropout=0.0,
        precision="fp32",
        progress=False,
        out=str(tmp_path / "run"),
    )
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["dropout"] == 0.0
    assert "dropout: 0.0" in (tmp_path / "run" / "config.yaml").read_text().splitlines()
    assert r.metrics["rows"]["train"] == 16


def test_cpu_dropout_drops_the_asked_share_keeps_the_mean_and_masks_the_gradient():
    torch.manual_seed(0)
    ones = torch.ones(500, 400)
    for p in (0.1, 0.5, 0.9):
        out = fast_dropout(ones, p)
        assert abs((out == 0).float().mean().item() - p) < 0.005
        assert abs(out.mean().item() - 1) < 0.02
    assert fast_dropout(ones.bfloat16(), 0.1).dtype == torch.bfloat16
    x = torch.randn(64, 64, requires_grad=True)
    with cpu_dropout():
        y = torch.nn.Dropout(0.3)(
            x
        )  # a module reaches it through F.dropout, as transformers' calls do
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0) and 0.2 < (y == 0).float().mean() < 0.4


def test_cpu_dropout_is_seeded_and_leaves_evaluation_alone():
    x = torch.randn(32, 32)
    masks = []
    for _ in range(2):
        torch.manual_seed(7)
        with cpu_dropout():
            masks.append(torch.nn.functional.dropout(x, p=0.2, training=True))
    assert torch.equal(*masks)
    with cpu_dropout():
        assert torch.equal(torch.nn.functional.dropout(x, p=0.2, training=False), x)
        assert torch.equal(torch.nn.Dropout(0.2).eval()(x), x)


@pytest.mark.parametrize("engine", ["native", "trainer"])
def test_training_on_the_cpu_draws_dropout_masks_the_faster_way(engine, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(dropout_module, "dropout", lambda x, p, inplace=False: calls.append(p) or x)
    data = tmp_path / "p.tsv"
    data.write_text(
        "src\ttgt\n"
        + "".join(f"{w}{i}\t{w[::-1]}{i}\n" for i in range(8) for w in ["abc", "hello"])
    )
    warmstart.finetune(
        data=str(data),
        task="seq2seq",
        from_scratch=True,
        tokenizer="char",
        size="tiny",
        split="12,4",
        epochs=1,
        batch_size=4,
        dropout=0.25,
        precision="fp32",
        engine=engine,
        progress=False,
        out=str(tmp_path / "run"),
    )
    assert calls and set(calls) == {0.25}
