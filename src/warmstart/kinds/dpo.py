"""Preference tuning of a causal LM (`finetune --task dpo`): from pairs of replies to the same
conversation, one chosen and one rejected (data.conversations.read_preferences: prompt/chosen/
rejected columns, or chosen/rejected conversations that differ only in their last reply, as
HH-RLHF is published), the model learns to prefer the chosen one.

Losses (``--loss``, strength ``--beta``), as TRL writes them: sigmoid is DPO (Rafailov et al. 2023),
``-log σ(β((π_c − ref_c) − (π_r − ref_r)))`` on the replies' summed token log-probabilities; ipo
(Azar et al. 2023) ``(h − 1/(2β))²`` on mean token log-probabilities; orpo (Hong et al. 2024) has no
reference: the chosen reply's mean NLL minus ``β log σ(log odds_c − log odds_r)``.

The reference is the model as training starts: with LoRA the same model with its adapters switched
off (peft's ``disable_adapter``: no second copy in memory); without, a frozen copy. Its
log-probabilities are computed once before training (``--precompute-reference``, the default on
the CPU), so a step runs the policy alone; the valid pairs' always are. Each epoch the valid pairs
are scored: preference accuracy (chosen reward above rejected), mean margin, the rewards and the
log-probabilities. ``evaluate`` on a pairs file gives the same figures for any causal LM, and,
where the model has no reference (a base model), the accuracy of its own log-probabilities: the
baseline. Every log-probability comes from the head run at the replies' tokens alone
(models.token_logprobs: the same values, without batch x length x vocabulary logits)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from warmstart.config import Choice, FinetuneConfig, given_flags, refuse_inapplicable
from warmstart.data.batching import Encoded, pad_multiple
from warmstart.data.conversations import ChatRenderer, Preferences, read_preferences
from warmstart.data.tables import load_splits
from warmstart.errors import UserError
from warmstart.inference.preferences import (  # noqa: F401  (what the kind is made of)
    all_logps,
    collate_pairs,
    encode_pairs,
    format_preferences,
    pair_forward,
    pair_logps,
    preference_loss,
    preference_metrics,
    score_pairs,
    sequence_logps,
)
from warmstart.kinds.base import TaskKind
from warmstart.kinds.causal_lm import OTHER_KINDS
from warmstart.models import is_causal, load_config, load_options, load_tokenizer, resolve
from warmstart.models.device import pick_device
from warmstart.models.registry import dropout_of, has_hidden_dropout, set_dropout
from warmstart.models.token_logprobs import Labelled, row_logps
from warmstart.runs import Run
from warmstart.training.common import Job

LOSSES = ("sigmoid", "ipo", "orpo")
# Options of causal-lm and text to text that mean nothing here.
NOT_DPO = (
    *OTHER_KINDS,
    "source_column",
    "target_column",
    "conversation_column",
    "packing",
    "chat",
    "metrics",
    "max_new_tokens",
    "num_beams",
    "eval_samples",
    "label_smoothing",
)
METRICS = (
    "loss",
    "accuracy",
    "margin",
    "reward_chosen",
    "reward_rejected",
    "logp_chosen",
    "logp_rejected",
    "logp_accuracy",
)


@contextmanager
def adapters_off(model: torch.nn.Module) -> Iterator[None]:
    """The model with its LoRA layers switched off, as peft's ``PeftModel.disable_adapter`` does
    (reached here from the model inside peft's wrapper): the base model, no copy."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


class PreferenceTuning(TaskKind):
    task = "dpo"
    reads: dict = {}  # what it saves is a causal LM, read back by the causal-lm kind

    def __init__(self, cfg: FinetuneConfig):
        refuse_inapplicable(cfg, NOT_DPO, "--task dpo (it reads prompt/chosen/rejected pairs)")
        if cfg.engine != "native":
            raise UserError("--task dpo trains with the native engine; leave out --engine")
        path = resolve(cfg.model, hub=cfg)
        config = load_config(path)
        if not is_causal(config):
            arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
            raise UserError(
                f"model '{cfg.model}' is a {arch}, not a causal language model; --task dpo needs"
                " a decoder-only model (smollm2, GPT-2, Llama, Qwen...)"
            )
        self.hidden_dropout = has_hidden_dropout(config)
        # A model without a chat template is refused before any work (unless --template gives one).
        ChatRenderer(load_tokenizer(path), cfg.model, cfg.template)
        self.cfg = cfg
        self.parts: dict[str, Preferences] = load_splits(
            cfg, read=lambda p, limit: read_preferences(p, limit)
        )
        self.reference = cfg.loss != "orpo"
        self.precompute = (
            cfg.precompute_reference
            if cfg.precompute_reference is not None
            else cfg.cpu or not torch.cuda.is_available()
        )
        self.model: torch.nn.Module | None = None
        self.frozen: torch.nn.Module | None = None  # the reference copy, without LoRA or precompute
        self.counts: dict[str, tuple[int, int]] = {}

    def choices(self, cfg: FinetuneConfig) -> dict[str, Choice]:
        made = {
            "metric_for_best": Choice(
                "loss", "the valid preference loss (accuracy ties often on a few pairs)"
            ),
            "lr": Choice(5e-5, "LoRA's rate for preference tuning (a tenth of SFT's)")
            if cfg.lora_r
            else Choice(5e-7, "full DPO's usual rate (Zephyr, TRL's recipes)"),
            "epochs": Choice(1.0, "one pass: preference tuning overfits quickly"),
        }
        # The implicit reward is the policy's log-ratio to its reference: with dropout the policy's
        # log-probabilities are noisy where the reference's are not (TRL's and OpenRLHF's DPO turn
        # every dropout off too). Attention dropout is 0 by default for every kind.
        if self.hidden_dropout:
            made["dropout"] = Choice(0.0, "preference tuning runs without dropout (as TRL's)")
        made = {k: c for k, c in made.items() if getattr(cfg, k) is None}
        # --lora-dropout has a number for its default (0.05, every other kind's): a rate other than
        # it is the user's, as given_flags judges every option.
        if cfg.lora_r and not given_flags(cfg, ("lora_dropout",)):
            made["lora_dropout"] = Choice(0.0, "preference tuning runs without dropout (as TRL's)")
        return made

    def describe(self) -> str:
        ref = (
            "no reference (orpo)"
            if not self.reference
            else "reference: "
            + ("the base with adapters off" if self.cfg.lora_r else "a frozen copy")
            + (", log-probs computed once before training" if self.precompute else "")
        )
        cut = "".join(
            f"; {r}: {c} cut to fit --max-length, {n} left out" for r, (c, n) in self.counts.items()
        )
        return f"preference tuning, loss {self.cfg.loss} beta {self.cfg.beta:g}; {ref}{cut}"

    def load_model(self, path: str, cfg: FinetuneConfig) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        config = load_config(path)
        set_dropout(config, dropout_of(cfg))
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=torch.float32, **load_options(path)
        )
        model.config.use_cache = False
        self.model = model  # LoRA injects its layers into this module: adapters_off reaches them
        return model

    def encode(
        self, tokenizer, role: str, max_length: int, cfg: FinetuneConfig | None = None
    ) -> Encoded:
        from warmstart.models import ensure_pad_token

        ensure_pad_token(tokenizer)
        renderer = ChatRenderer(tokenizer, self.cfg.model, self.cfg.template)
        enc, cut, left_out = encode_pairs(renderer, self.parts[role], max_length)
        if len(enc) == 0:
            raise UserError(
                f"{self.parts[role].where(0)}: no {role} pair's replies start within --max-length"
                f" {max_length}; raise --max-length"
            )
        self.counts[role] = (cut, left_out)
        return enc

    def reference_logps(
        self, data: Encoded, collate, batch_size: int, device: torch.device, desc: str
    ) -> np.ndarray:
        """The reference's log-probabilities: the model as it is now (before training), adapters
        off."""
        model = self.model
        model.to(device)
        with adapters_off(model):
            return all_logps(model, data, collate, batch_size, device, self.cfg.progress, desc)

    def job(self, cfg: FinetuneConfig, tokenizer, data: dict[str, Encoded]) -> Job:
        pad_id, multiple = tokenizer.pad_token_id, pad_multiple(cfg.cpu)
        device = pick_device(cfg.cpu)

        def collate(rows: list[dict]) -> dict:
            return collate_pairs(rows, pad_id, multiple)

        valid = data.get("valid")
        refs: dict[str, np.ndarray] = {}
        if self.reference:
            for role in ("train", "valid") if self.precompute else ("valid",):
                if role in data:
                    refs[role] = self.reference_logps(
                        data[role], collate, cfg.eval_batch_size, device, f"reference {role}"
                    )
            if "train" in refs:
                data["train"].features["ref"] = refs["train"][:, :2].tolist()
            if not self.precompute and not cfg.lora_r:
                self.frozen = copy.deepcopy(self.model).eval().requires_grad_(False)
        last: dict[str, torch.Tensor] = {}

        def reference_of(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
            if "ref" in batch:
                return batch["ref"][:, 0], batch["ref"][:, 1]
            with torch.no_grad():
                if self.frozen is not None:
                    self.frozen.to(batch["input_ids"].device)
                    rc, rr, _, _ = pair_logps(self.frozen, batch)
                else:
                    with adapters_off(self.model):
                        rc, rr, _, _ = pair_logps(self.model, batch)
            return rc, rr

        def forward(model, batch: dict) -> Labelled:
            # The head runs at the replies' tokens alone (their log-probabilities are the same).
            return pair_forward(model, batch)

        def loss(out: Labelled, batch: dict) -> torch.Tensor:
            logps, n = row_logps(out)
            half = len(logps) // 2
            rc = rr = None
            if self.reference:
                rc, rr = reference_of(batch)
            losses, chosen, rejected = preference_loss(
                cfg.loss, cfg.beta, logps[:half], logps[half:], n[:half], n[half:], rc, rr
            )
            last["hit"] = chosen > rejected
            return losses.mean()

        def accuracy(out, batch: dict) -> tuple[int, int]:
            return int(last["hit"].sum()), len(last["hit"])

        def evaluate(model, device, autocast) -> dict:
            with autocast():
                policy = all_logps(model, valid, collate, cfg.eval_batch_size, device)
            metrics = preference_metrics(cfg.loss, cfg.beta, policy, refs.get("valid"))
            return {k: v for k, v in metrics.items() if k != "n"}

        def save(model, folder: Path, weights: dict | None = None) -> None:
            # A chat model: generate and serve prompt it through its chat template.
            model.config.instruction_template = "{source}"
            model.config.instruction_chat = True
            model.config.instruction_system = None
            model.config.train_max_length = cfg.max_length
            model.config.preference = {"loss": cfg.loss, "beta": cfg.beta, "reference": cfg.model}
            training_cache, model.config.use_cache = model.config.use_cache, True
            model.save_pretrained(folder, state_dict=weights)
            model.config.use_cache = training_cache
            tokenizer.save_pretrained(folder)

        return Job(
            train=data["train"],
            lengths=data["train"].lengths,
            collate=collate,
            save=save,
            evaluate=evaluate if valid is not None else None,
            accuracy=accuracy,
            valid=valid,
            metric_names=METRICS[1:],
            loss=loss,
            forward=forward,
            tokenizer=tokenizer,
            unit="pairs",
            not_inputs=("ref",),
        )

    def test(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        t = time.time()
        metrics = score_pairs(
            str(model_dir),
            cfg.model,
            self.parts["test"],
            cfg.loss,
            cfg.beta,
            cfg.max_length,
            cfg.eval_batch_size,
            cfg.cpu,
            cfg.template,
        )
        run.say("test set: " + format_preferences(metrics).replace("\n", "; "))
        return {"test": metrics, "test_seconds": round(time.time() - t, 2)}

    def summary(self, metrics: dict) -> str:
        m = metrics["test"]
        return f"test preference accuracy {m['accuracy']:.4f} on {m['n']} pairs"

    @classmethod
    def report(cls, result_dir: Path, metrics: dict) -> str:
        m = metrics.get("test") or {
            k[len("valid_") :]: v
            for k, v in ((metrics.get("epochs") or [{}])[-1]).items()
            if k.startswith("valid_")
        }
        where = "test" if "test" in metrics else "valid"
        return f"run folder: {result_dir}\n" + (
            f"{where}: {format_preferences(m)}\n" if "accuracy" in m else ""
        )
