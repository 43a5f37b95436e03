"""Preference tuning (`finetune --task dpo`): the losses against a hand computation, the LoRA
reference being the base model with its adapters off, a tiny Llama learning to prefer one reply,
HH-RLHF read as published, `evaluate` on a pairs file, resume after a kill, and bad pairs refused in
one line. The tiny chat Llama of test_chat_sft stands in for SmolLM2."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from tests.test_chat_sft import build_tiny_chat_llama, tokenizer_of

import warmstart
from warmstart.cli import main
from warmstart.config import FinetuneConfig
from warmstart.data.conversations import ChatRenderer, read_preferences
from warmstart.kinds.dpo import (
    adapters_off,
    all_logps,
    collate_pairs,
    encode_pairs,
    preference_loss,
)

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf" / "helpful.jsonl.gz"
VOLATILE = {"epoch_seconds", "elapsed_seconds", "samples_per_s"}


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory) -> Path:
    return build_tiny_chat_llama(tmp_path_factory.mktemp("tiny-chat"))


@pytest.fixture(scope="module")
def toy_pairs(tmp_path_factory) -> Path:
    """Prompts about fruit; the chosen reply is always 'no', the rejected one 'yes' (which the
    random model finds likelier per token)."""
    words = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date", "melon", "grape", "peach"]
    rows = [
        {"prompt": f"is {a} {b} good?", "chosen": "no", "rejected": "yes"}
        for a in words
        for b in words[:4]
    ]
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return path


def test_each_loss_equals_a_hand_computation_on_fixed_log_probs():
    pc, pr, rc, rr = [-4.0, -9.0], [-6.0, -5.0], [-5.0, -7.0], [-5.5, -6.0]
    nc, nr, beta = [4, 3], [2, 5], 0.2
    t = [torch.tensor(x, dtype=torch.float64) for x in (pc, pr, nc, nr, rc, rr)]

    def sig(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    want = {
        "sigmoid": [-math.log(sig(beta * ((pc[i] - rc[i]) - (pr[i] - rr[i])))) for i in range(2)],
        "ipo": [
            ((pc[i] - rc[i]) / nc[i] - (pr[i] - rr[i]) / nr[i] - 1 / (2 * beta)) ** 2
            for i in range(2)
        ],
        "orpo": [],
    }
    for i in range(2):
        mc, mr = pc[i] / nc[i], pr[i] / nr[i]
        odds = math.log(math.exp(mc) / (1 - math.exp(mc))) - math.log(
            math.exp(mr) / (1 - math.exp(mr))
        )
        want["orpo"].append(-mc - beta * math.log(sig(odds)))
    for loss, expected in want.items():
        losses, chosen, rejected = preference_loss(loss, beta, *t)
        assert losses.tolist() == pytest.approx(expected, rel=1e-9)
    _, chosen, rejected = preference_loss("sigmoid", beta, *t)
    assert chosen.tolist() == pytest.approx([beta * (pc[i] - rc[i]) for i in range(2)])
    assert rejected.tolist() == pytest.approx([beta * (pr[i] - rr[i]) for i in range(2)])


def test_lora_reference_is_the_base_model_with_adapters_off(tiny_chat, toy_pairs):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    tok = tokenizer_of(tiny_chat)
    enc, _, _ = encode_pairs(ChatRenderer(tok), read_preferences(toy_pairs, 6), 64)

    def collate(rows):
        return collate_pairs(rows, tok.pad_token_id, 8)

    model = AutoModelForCausalLM.from_pretrained(tiny_chat, dtype=torch.float32)
    base = all_logps(model, enc, collate, 4, torch.device("cpu"))
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, p in peft.named_parameters():
        if "lora_B" in name:  # a trained adapter: its output is no longer zero
            torch.nn.init.normal_(p, std=0.5)
    on = all_logps(model, enc, collate, 4, torch.device("cpu"))
    with adapters_off(model):  # reached from the inner model, as the kind holds it
        off = all_logps(model, enc, collate, 4, torch.device("cpu"))
    with peft.disable_adapter():
        peft_off = all_logps(peft, enc, collate, 4, torch.device("cpu"))
    assert abs(on - base).max() > 1e-3
    assert off.tolist() == peft_off.tolist()
    assert abs(off - base).max() < 1e-5
    assert abs(all_logps(model, enc, collate, 4, torch.device("cpu")) - on).max() == 0


def dpo_args(data: Path, model: Path, *extra: str) -> list[str]:
    return [
        "finetune", "--task", "dpo", "--data", str(data), "--model", str(model),
        "--split", "16,8", "--shuffle", "--batch-size", "8", "--max-length", "64",
        "--precision", "fp32", "--attn-implementation", "sdpa", "--cpu", "--no-progress", *extra,
    ]  # fmt: skip


def test_tiny_llama_learns_to_prefer_the_chosen_reply(tiny_chat, toy_pairs, tmp_path):
    out = tmp_path / "run"
    args = dpo_args(toy_pairs, tiny_chat, "--lr", "5e-3", "--epochs", "2", "--out", str(out))
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    first, last = metrics["epochs"][0], metrics["epochs"][-1]
    assert last["valid_accuracy"] == 1.0 and last["valid_margin"] > first["valid_margin"] > 0
    assert last["valid_reward_chosen"] > last["valid_reward_rejected"]
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["preference"] == {"loss": "sigmoid", "beta": 0.1, "reference": str(tiny_chat)}
    # evaluate on the pairs: the tuned model against its reference, and the base model's baseline.
    tuned = warmstart.evaluate(model=str(out), data=str(toy_pairs), cpu=True, progress=False)
    base = warmstart.evaluate(model=str(tiny_chat), data=str(toy_pairs), cpu=True, progress=False)
    assert tuned.metrics["accuracy"] == 1.0 and "accuracy" not in base.metrics
    assert tuned.metrics["logp_accuracy"] >= base.metrics["logp_accuracy"]
    assert tuned.metrics["logp_chosen"] > base.metrics["logp_chosen"]
    assert tuned.metrics["logp_rejected"] < base.metrics["logp_rejected"]
    assert (out / "model" / "README.md").exists()


def test_orpo_and_lora_reference_beside_each_step_train_as_precomputed(
    tiny_chat, toy_pairs, tmp_path
):
    def run(name: str, **options) -> dict:
        cfg = FinetuneConfig(
            task="dpo", data=str(toy_pairs), model=str(tiny_chat), split="8,4", lora_r=4,
            lr=1e-2, epochs=1, batch_size=4, max_length=64, cpu=True, precision="fp32",
            attn_implementation="sdpa", progress=False, out=str(tmp_path / name), **options,
        )  # fmt: skip
        return warmstart.finetune(cfg)

    orpo = run("orpo", loss="orpo", lora_save="adapter")
    assert {"valid_accuracy", "valid_margin", "valid_logp_chosen"} <= set(orpo.metrics["epochs"][0])
    assert (orpo.model_dir / "adapter_config.json").exists()
    # The reference with the adapters switched off at each step (a GPU's default) trains as the
    # log-probabilities computed once before training do.
    once = run("once", precompute_reference=True).metrics["epochs"][0]
    beside = run("beside", precompute_reference=False).metrics["epochs"][0]
    for key in ("train_loss", "valid_loss", "valid_margin", "valid_logp_chosen"):
        assert beside[key] == pytest.approx(once[key], rel=1e-4, abs=1e-6), key


def test_hh_rlhf_pairs_read_as_published():
    pairs = read_preferences(HH, 20)
    with gzip.open(HH, "rt") as f:
        first = json.loads(f.readline())
    assert len(pairs) == 20
    assert pairs.prompts[0][-1]["role"] == "user" and pairs.prompts[0][0]["role"] == "user"
    whole = "".join(
        f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}"
        for m in pairs.prompts[0]
    )
    assert first["chosen"] == whole + "\n\nAssistant: " + pairs.chosen[0]
    assert first["rejected"] == whole + "\n\nAssistant: " + pairs.rejected[0]


@pytest.mark.parametrize(
    "row, says",
    [
        ({"prompt": "hi", "chosen": "same", "rejected": "same"}, "are the same"),
        (
            {
                "chosen": "\n\nHuman: hi\n\nAssistant: yes",
                "rejected": "\n\nHuman: bye\n\nAssistant: no",
            },
            "share its prompt",
        ),
        ({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"}, "no assistant turn"),
    ],
)
def test_bad_pairs_exit_2_with_one_line(tiny_chat, tmp_path, capsys, row, says):
    data = tmp_path / "bad.jsonl"
    good = (
        {"prompt": "hi", "chosen": "yes", "rejected": "no"}
        if "prompt" in row
        else {
            "chosen": "\n\nHuman: hi\n\nAssistant: yes",
            "rejected": "\n\nHuman: hi\n\nAssistant: no",
        }
    )
    rows = [good] * 3 + [row]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["finetune", "--task", "dpo", "--data", str(data), "--model", str(tiny_chat),
                 "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and says in err and "row 4" in err and "\n" not in err


@pytest.mark.slow
def test_dpo_resume_after_kill_gives_same_metrics(tiny_chat, toy_pairs, tmp_path):
    from conftest import kill_after_checkpoint

    args = dpo_args(
        toy_pairs, tiny_chat, "--lr", "1e-3", "--epochs", "40", "--batch-size", "2",
        "--save-steps", "7", "--lora-r", "4",
    )  # fmt: skip
    killed = tmp_path / "killed"
    kill_after_checkpoint(args, killed)
    assert main(["finetune", "--config", str(killed / "config.yaml"), "--resume"]) == 0
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    resumed = json.loads((killed / "metrics.json").read_text())
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())

    def stable(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in VOLATILE} for r in records]

    assert stable(resumed["epochs"]) == stable(full["epochs"])


@pytest.mark.parametrize("lora", [False, True])
def test_reply_log_probs_from_the_replies_alone_equal_those_from_every_position(
    tiny_chat, toy_pairs, lora
):
    """pair_logps runs the head at the replies' tokens only: the same summed log-probabilities
    and counts (and gradients) as every position's logits give, with LoRA on and off."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from warmstart.inference.preferences import pair_logps, sequence_logps

    tok = tokenizer_of(tiny_chat)
    enc, _, _ = encode_pairs(ChatRenderer(tok), read_preferences(toy_pairs, 5), 64)
    batch = collate_pairs([enc[i] for i in range(len(enc))], tok.pad_token_id, 8)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat, dtype=torch.float32)
    inner = model
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        torch.manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
    trained = [p for p in model.parameters() if p.requires_grad]

    def full(m) -> tuple[torch.Tensor, ...]:
        logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logps, n = sequence_logps(logits, batch["labels"])
        return logps[:5], logps[5:], n[:5], n[5:]

    want, got = full(model), pair_logps(model, batch)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-6)
    assert got[2].tolist() == want[2].tolist() and min(got[2].tolist()) > 0
    g_want = torch.autograd.grad(want[0].sum() - want[1].sum(), trained)
    g_got = torch.autograd.grad(got[0].sum() - got[1].sum(), trained)
    for a, b in zip(g_got, g_want):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    if lora:  # the reference: the same model with its adapters off
        with torch.no_grad(), adapters_off(inner):
            for a, b in zip(pair_logps(model, batch), full(model)):
                assert torch.allclose(a, b, atol=1e-5, rtol=1e-6)


def test_merged_save_copies_only_the_adapted_layers_and_leaves_the_model_training(tiny_chat):
    """models.lora.merged (what --lora-save merged saves): the weights of peft's merge of a full
    copy, bit for bit; the model being trained untouched; the weights LoRA does not adapt shared,
    not copied."""
    import copy

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from warmstart.models.lora import merged

    model = AutoModelForCausalLM.from_pretrained(tiny_chat, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    want = copy.deepcopy(model).merge_and_unload().state_dict()
    plain = merged(model)
    got = plain.state_dict()
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    layer = model.get_base_model().model.layers[0]
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(got[q], layer.self_attn.q_proj.base_layer.weight)  # merged
    up = got["model.layers.0.mlp.up_proj.weight"]
    assert up.data_ptr() == layer.mlp.up_proj.weight.data_ptr()  # shared
    assert plain.config is not model.config  # what the kind's save records stays the copy's


def test_preference_tuning_turns_dropout_off_unless_asked(tiny_chat, toy_pairs, tmp_path):
    """The reward is the policy's log-ratio to its reference: with dropout the policy's
    log-probabilities in training are noisy where the reference's are not (TRL's DPOTrainer zeroes
    every dropout by default too). Other kinds keep LoRA's usual 0.05, and a rate the user gives is
    kept. (A Llama has no hidden-state dropout to set, a GPT-2 has; attention dropout is 0 for
    every kind.)"""
    import yaml
    from transformers import GPT2Config, LlamaConfig

    from warmstart.models.registry import has_hidden_dropout

    def settled(name: str, *extra: str) -> dict:
        out = tmp_path / name
        assert main([*extra, "--max-steps", "1", "--out", str(out)]) == 0
        return yaml.safe_load((out / "config.yaml").read_text())

    dpo = dpo_args(toy_pairs, tiny_chat, "--lora-r", "4")
    chosen = settled("dpo", *dpo)
    assert has_hidden_dropout(GPT2Config()) and not has_hidden_dropout(LlamaConfig())
    assert chosen["lora_dropout"] == 0.0 and chosen["attention_dropout"] == 0.0
    assert settled("asked", *dpo, "--lora-dropout", "0.2")["lora_dropout"] == 0.2
    sft = dpo_args(toy_pairs, tiny_chat, "--lora-r", "4")
    sft[sft.index("dpo")] = "causal-lm"
    sft[sft.index("--data") + 1] = str(write_prompts(tmp_path))
    assert settled("sft", *sft)["lora_dropout"] == 0.05


def write_prompts(folder: Path) -> Path:
    path = folder / "sft.jsonl"
    rows = [{"prompt": f"is {w} good?", "response": "no"} for w in ("fig", "kiwi", "lime") * 8]
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return path
