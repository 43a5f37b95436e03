"""Preference pairs scored by a causal LM: each reply's summed token log-probability (the
conversation rendered with the chat template, the reply labelled as data.conversations labels an
assistant turn), the preference losses (DPO's sigmoid, IPO, ORPO: as TRL writes them) and the
figures a set of pairs is reported by: preference accuracy, margin, rewards, log-probabilities.
`finetune --task dpo` (kinds.dpo) trains with them; `evaluate` scores any causal LM with them."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from warmstart.config import EvaluateConfig
from warmstart.data.batching import IGNORE, Encoded, pad_multiple
from warmstart.data.conversations import (
    ChatRenderer,
    Preferences,
    is_preference_table,
    read_preferences,
)
from warmstart.errors import UserError
from warmstart.models import load_config, load_options, load_tokenizer, resolve
from warmstart.models.device import pick_device
from warmstart.models.token_logprobs import Labelled, labelled_forward, row_logps
from warmstart.progress import progress_bar


def pad_pairs(rows: list[dict], pad_id: int, multiple: int | None) -> dict[str, torch.Tensor]:
    """Right-padded input ids (``pad_id``), labels (-100) and attention mask, to a ``multiple``."""
    m = multiple or 1
    width = -(-max(len(r["input_ids"]) for r in rows) // m) * m
    out = {
        "input_ids": torch.full((len(rows), width), pad_id),
        "labels": torch.full((len(rows), width), IGNORE),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
    }
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        out["input_ids"][i, :n] = torch.tensor(r["input_ids"])
        out["labels"][i, :n] = torch.tensor(r["labels"])
        out["attention_mask"][i, :n] = 1
    return out


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's summed log-probability of its labelled tokens (fp32), and how many there are,
    from the logits at every position (what pair_logps computes from the replies' alone)."""
    # The labels move one place left (the logits at i predict the token at i + 1) rather than the
    # logits being cut: a cut would copy a batch x length x vocabulary tensor.
    target = torch.cat([labels[:, 1:], labels.new_full((len(labels), 1), IGNORE)], 1)
    nll = F.cross_entropy(
        logits.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE, reduction="none"
    ).view(target.shape)
    return -nll.sum(-1), (target != IGNORE).sum(-1)


def preference_loss(
    loss: str,
    beta: float,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    n_chosen: torch.Tensor,
    n_rejected: torch.Tensor,
    ref_chosen: torch.Tensor | None = None,
    ref_rejected: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-pair losses, chosen rewards, rejected rewards) from summed log-probabilities."""
    if loss == "orpo":
        mc, mr = chosen / n_chosen, rejected / n_rejected
        # log(p / (1 - p)) with p the mean token probability; log(1 - e^x) = log(-expm1(x)).
        log_odds = (mc - mr) - (torch.log(-torch.expm1(mc)) - torch.log(-torch.expm1(mr)))
        return -mc - beta * F.logsigmoid(log_odds), beta * mc.detach(), beta * mr.detach()
    if loss == "ipo":  # IPO reads mean token log-probabilities (TRL's convention)
        chosen, rejected = chosen / n_chosen, rejected / n_rejected
        ref_chosen, ref_rejected = ref_chosen / n_chosen, ref_rejected / n_rejected
    dc, dr = chosen - ref_chosen, rejected - ref_rejected
    h = dc - dr
    losses = (h - 1 / (2 * beta)) ** 2 if loss == "ipo" else -F.logsigmoid(beta * h)
    return losses, beta * dc.detach(), beta * dr.detach()


def encode_pairs(
    renderer: ChatRenderer, pairs: Preferences, max_length: int
) -> tuple[Encoded, int, int]:
    """(chosen and rejected conversations rendered, the loss on the last reply; pairs cut to fit;
    pairs left out because a reply would not start within ``max_length``)."""
    feats: dict[str, list] = {
        "input_ids": [],
        "labels": [],
        "rejected_ids": [],
        "rejected_labels": [],
    }
    cut = left_out = 0
    for prompt, a, b in zip(pairs.prompts, pairs.chosen, pairs.rejected):
        c = renderer.fit([*prompt, {"role": "assistant", "content": a}], max_length, "last")
        r = renderer.fit([*prompt, {"role": "assistant", "content": b}], max_length, "last")
        if all(x == IGNORE for x in c.labels) or all(x == IGNORE for x in r.labels):
            left_out += 1
            continue
        cut += bool(c.cut or r.cut or c.dropped_turns or r.dropped_turns)
        feats["input_ids"].append(c.ids)
        feats["labels"].append(c.labels)
        feats["rejected_ids"].append(r.ids)
        feats["rejected_labels"].append(r.labels)
    enc = Encoded(feats)
    # Batched by the longer of the two rows.
    enc.lengths = np.maximum(enc.lengths, [len(x) for x in feats["rejected_ids"]]).astype(np.int64)
    return enc, cut, left_out


def collate_pairs(rows: list[dict], pad_id: int, multiple: int | None) -> dict[str, torch.Tensor]:
    """The chosen rows, then the rejected ones, in one padded batch; ``ref`` (pairs x 2) where the
    reference log-probabilities were computed beforehand."""
    both = [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows] + [
        {"input_ids": r["rejected_ids"], "labels": r["rejected_labels"]} for r in rows
    ]
    batch = pad_pairs(both, pad_id, multiple)
    if "ref" in rows[0]:
        batch["ref"] = torch.tensor([r["ref"] for r in rows], dtype=torch.float32)
    return batch


def pair_forward(model: torch.nn.Module, batch: dict) -> Labelled:
    """The model on one collated batch, its logits at the replies' tokens alone (the head run
    there only: models.token_logprobs)."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    return labelled_forward(model, inputs, batch["labels"])


def pair_logps(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, ...]:
    """(chosen, rejected, n_chosen, n_rejected) log-probabilities of one collated batch."""
    logps, n = row_logps(pair_forward(model, batch))
    half = len(logps) // 2
    return logps[:half], logps[half:], n[:half], n[half:]


def all_logps(
    model: torch.nn.Module,
    data: Encoded,
    collate,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
    desc: str = "log-probs",
) -> np.ndarray:
    """Every pair's (chosen, rejected, n_chosen, n_rejected) log-probabilities under ``model``,
    in order (batches of similar length)."""
    order = np.argsort(data.lengths, kind="stable")
    out = np.zeros((len(data), 4), dtype=np.float64)
    was = model.training
    model.eval()
    starts = range(0, len(order), batch_size)
    with torch.inference_mode():
        for k in progress_bar(starts, desc=desc, unit="batch", enabled=progress, leave=False):
            idx = order[k : k + batch_size]
            batch = {
                key: v.to(device)
                for key, v in collate([data[int(i)] for i in idx]).items()
                if key != "ref"
            }
            out[idx] = torch.stack(pair_logps(model, batch), 1).double().cpu().numpy()
    model.train(was)
    return out


def preference_metrics(loss: str, beta: float, policy: np.ndarray, ref: np.ndarray | None) -> dict:
    """The figures of a set of pairs: loss, preference accuracy (chosen reward above rejected),
    mean margin, mean rewards and log-probabilities; ``logp_accuracy`` is the share of pairs whose
    chosen reply the model itself finds likelier (per token), what a model without a reference
    is scored by."""
    t = torch.from_numpy(policy)
    pc, pr, nc, nr = t[:, 0], t[:, 1], t[:, 2], t[:, 3]
    metrics = {
        "logp_chosen": float(pc.mean()),
        "logp_rejected": float(pr.mean()),
        "logp_accuracy": float(((pc / nc) > (pr / nr)).double().mean()),
        "n": len(policy),
    }
    if ref is None and loss != "orpo":
        return metrics
    r = torch.from_numpy(ref) if ref is not None else None
    losses, rc, rr = preference_loss(
        loss, beta, pc, pr, nc, nr, None if r is None else r[:, 0], None if r is None else r[:, 1]
    )
    return {
        "loss": float(losses.mean()),
        "accuracy": float((rc > rr).double().mean()),
        "margin": float((rc - rr).mean()),
        "reward_chosen": float(rc.mean()),
        "reward_rejected": float(rr.mean()),
        **metrics,
    }


def load_lm(path: str, cpu: bool) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **load_options(path))
    return model.to(pick_device(cpu)).eval(), load_tokenizer(path)


def score_pairs(
    path: str,
    reference: str | None,
    pairs: Preferences,
    loss: str,
    beta: float,
    max_length: int | None,
    batch_size: int | None,
    cpu: bool,
    template: str | None = None,
) -> dict:
    """The preference figures of the causal LM at ``path`` on ``pairs``, its rewards against the
    model ``reference`` (None: none, the log-probability accuracy alone)."""
    model, tokenizer = load_lm(path, cpu)
    from warmstart.models import ensure_pad_token, max_length_of

    ensure_pad_token(tokenizer)
    n = max_length_of(tokenizer, model.config, max_length)
    enc, _, _ = encode_pairs(ChatRenderer(tokenizer, path, template), pairs, n)
    device, bs = pick_device(cpu), batch_size or 8
    multiple = pad_multiple(cpu)

    def collate(rows: list[dict]) -> dict:
        return collate_pairs(rows, tokenizer.pad_token_id, multiple)

    policy = all_logps(model, enc, collate, bs, device)
    ref = None
    if reference is not None and loss != "orpo":
        del model
        ref_model, _ = load_lm(resolve(reference), cpu)
        ref = all_logps(ref_model, enc, collate, bs, device)
    return preference_metrics(loss, beta, policy, ref)


def preference_data(cfg: EvaluateConfig) -> bool:
    """Whether evaluate's --data is a file of preference pairs (chosen and rejected columns)."""
    return bool(cfg.data) and Path(cfg.data).is_file() and is_preference_table(cfg.data)


def evaluate_preferences(cfg: EvaluateConfig, path: str) -> dict:
    """Any causal LM on a pairs file: with a reference where the model was preference-tuned here
    (its config names the model it started from), the same figures as its run's; else the accuracy
    of its own log-probabilities (a base model's baseline)."""
    pref = getattr(load_config(path), "preference", None) or {}
    reference = pref.get("reference")
    try:
        reference = resolve(reference) if reference else None
    except UserError:
        reference = None  # the starting model is gone: the model's own log-probabilities alone
    t = time.time()
    metrics = score_pairs(
        path,
        reference,
        read_preferences(cfg.data, cfg.limit),
        pref.get("loss", "sigmoid"),
        pref.get("beta", 0.1),
        cfg.max_length,
        cfg.batch_size,
        cfg.cpu,
    )
    metrics.update(
        preference=True,
        model=path,
        reference=reference,
        data=str(Path(cfg.data).resolve()),
        seconds=round(time.time() - t, 2),
    )
    return metrics


def format_preferences(m: dict) -> str:
    line = f"log-prob accuracy {m['logp_accuracy']:.4f}"
    if "accuracy" in m:
        line = (
            f"preference accuracy {m['accuracy']:.4f}, margin {m['margin']:.4f}, rewards chosen"
            f" {m['reward_chosen']:.4f} rejected {m['reward_rejected']:.4f}; " + line
        )
    return (
        line
        + f"; log-probs chosen {m['logp_chosen']:.2f} rejected {m['logp_rejected']:.2f}"
        + (f" on {m['n']} pairs" if "n" in m else "")
    )
