"""What both engines share: the job a task hands them, the training state, precision, optimizer,
schedule and the best-epoch rule."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from warmstart import distributed
from warmstart.callbacks.early_stopping import LOWER_IS_BETTER, better  # noqa: F401
from warmstart.config import Choice, FinetuneConfig
from warmstart.data.batching import IGNORE
from warmstart.errors import UserError
from warmstart.models import precision as measured
from warmstart.models.device import auto_precision, pick_device


@dataclass
class Job:
    """What a task kind hands either engine: the data, how to batch and score it, how to save the
    model.

    ``evaluate(model, device, autocast)`` returns valid metrics (``loss`` and any others, logged as
    ``valid_<name>``); ``accuracy(outputs, batch)`` returns (correct, counted) for a training batch.
    The Trainer engine also needs the valid data itself, a ``batch_eval_metrics`` callable
    (``trainer_metrics()`` makes a fresh one) reporting ``metric_names``, and the batch's mean loss
    as the kind defines it."""

    train: torch.utils.data.Dataset
    lengths: np.ndarray
    collate: Callable[[list[dict]], dict]
    save: Callable[
        [torch.nn.Module, Path, dict | None], Any
    ]  # (model, folder, gathered weights or None)
    evaluate: Callable[[torch.nn.Module, torch.device, Callable], dict] | None = None
    accuracy: Callable[[Any, dict], tuple[int, int]] | None = None
    unit: str = "texts"
    on_epoch: Callable[[int], None] | None = (
        None  # told each epoch before its first batch (e.g. to reseed masks)
    )
    valid: torch.utils.data.Dataset | None = None
    trainer_metrics: Callable[[], Callable] | None = None
    metric_names: tuple[str, ...] = ()  # valid metrics besides the loss, e.g. accuracy and f1_macro
    batch_loss: Callable[[Any, dict], float] | None = None
    # The training loss when it is not the model's own (e.g. cross-entropy weighted by
    # --class-weights).
    loss: Callable[[Any, dict], torch.Tensor] | None = None
    tokenizer: Any = None  # saved with the Trainer's checkpoints
    # The model builds inputs from the labels (an encoder-decoder: its decoder inputs and their
    # mask).
    labels_make_inputs: bool = False
    # Batch entries for ``loss`` alone, never given to the model (e.g. precomputed reference
    # log-probabilities).
    not_inputs: tuple[str, ...] = ()
    # The native engine's training forward in place of ``model(**model_inputs(batch))``, given
    # (model, batch): e.g. logits at the labelled positions alone (models.token_logprobs);
    # ``loss`` and ``accuracy`` read what it returns (its ``loss`` where ``loss`` is None).
    forward: Callable[[torch.nn.Module, dict], Any] | None = None

    def model_inputs(self, batch: dict) -> dict:
        """What the model is given in a training step. Where ``loss`` replaces the model's own, the
        labels stay out, so that the model does not compute its cross-entropy too (for a causal LM a
        second pass, in fp32, over logits of its whole vocabulary), unless the model needs them to
        build its inputs."""
        if self.not_inputs:
            batch = {k: v for k, v in batch.items() if k not in self.not_inputs}
        if self.loss is None or self.labels_make_inputs:
            return batch
        return {k: v for k, v in batch.items() if k != "labels"}


def token_accuracy(out, batch: dict) -> tuple[int, int]:
    """(correct, counted) over the labelled positions of a batch whose logits line up with its
    labels (tags, targets): what a token-level kind reports as train accuracy."""
    mask = batch["labels"] != IGNORE
    return int((out.logits.argmax(-1)[mask] == batch["labels"][mask]).sum()), int(mask.sum())


def token_loss(out, batch: dict) -> float:
    """The batch's mean cross-entropy over its labelled positions (fp32, whatever the autocast)."""
    return torch.nn.functional.cross_entropy(
        out.logits.detach().float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE
    ).item()


def smoothed_loss(
    factor: float, weight: torch.Tensor | None = None, shift: bool = False
) -> Callable[[Any, dict], torch.Tensor] | None:
    """The training loss with label smoothing ``factor`` and class ``weight``s (None where neither
    is asked: the model's own loss then): cross-entropy in fp32 over the labelled positions.
    ``shift``: a causal LM, whose logits at position i predict the label at i + 1."""
    if not factor and weight is None:
        return None

    def loss(out, batch: dict) -> torch.Tensor:
        logits, labels = out.logits, batch["labels"]
        if shift:
            logits, labels = logits[..., :-1, :], labels[..., 1:]
        return torch.nn.functional.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE,
            weight=None if weight is None else weight.to(logits.device),
            label_smoothing=factor,
        )

    return loss


@dataclass
class State:
    """Where training stands; saved as state.json in every checkpoint."""

    epoch: int = 0  # epochs finished
    batches_done: int = 0  # micro-batches done in the current epoch
    step: int = 0  # optimizer steps done
    loss_sum: float = 0.0  # running sums over the current epoch, for train loss/accuracy
    correct: int = 0
    counted: int = 0  # what accuracy is over: texts, or (masked) tokens
    seen: int = 0
    log_loss_sum: float = 0.0  # running sums since the last log line
    log_seen: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    epochs_log: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    train_seconds: float = 0.0  # time in the training loop only (no evaluation, no checkpoints)
    samples: int = 0  # training examples processed
    global_batch: int | None = None  # rows per optimizer micro-batch over all processes
    processes: int = 1  # how many processes wrote this state


def mixed_precision(precision: str, cpu: bool) -> str:
    """Accelerate's mixed_precision for a concrete ``--precision`` (see choose_precision): fp32 →
    no, bf16, fp16 (GPUs only). 'auto' left unresolved (an engine called directly) follows the
    launcher's bf16/fp16 if it set one, else bf16 on GPUs that support it, else fp32."""
    on_gpu = torch.cuda.is_available() and not cpu
    if precision == "auto":
        # Under `accelerate launch --mixed_precision X` (or a config file saying so), auto follows
        # the launcher.
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if on_gpu and launched in ("bf16", "fp16"):
            return launched
        return {"fp32": "no"}.get(auto_precision(pick_device(cpu)), "bf16")
    if precision == "fp16" and not on_gpu:
        raise UserError("--precision fp16 needs a GPU; use fp32 or bf16 on the CPU")
    return {"fp32": "no"}.get(precision, precision)


@dataclass
class PrecisionChoice:
    """What a run trains with: its precision and attention kernel, decided before its config is
    written, and why (the task settles the run's settings with ``choices``)."""

    precision: str
    attention: str | None  # None: a config without the option keeps the model's own
    measured: measured.Choice | None = None  # the timing behind an automatic choice, if one ran
    reason: str = ""

    def choices(self, cfg: Any) -> dict[str, Choice]:
        made = {"precision": Choice(self.precision, self.reason if cfg.precision == "auto" else "")}
        if self.attention is not None and hasattr(cfg, "attn_implementation"):
            given = cfg.attn_implementation != "auto"
            made["attn_implementation"] = Choice(self.attention, "" if given else self.reason)
        return made


def choose_precision(
    cfg: Any, model: torch.nn.Module, lengths: np.ndarray, run: Any
) -> PrecisionChoice:
    """Resolve 'auto' in ``cfg.precision`` and ``cfg.attn_implementation`` for this run, before its
    config is written, and give ``model`` that attention kernel. A resumed run keeps what its start
    chose (config.yaml); on GPUs (and under a launcher that set a precision) the rule of
    ``mixed_precision`` and the model's own kernel; on CPUs a measured choice (models.precision) on
    the run's own batch shape, made by the main process and shared, so every process trains alike;
    the measured choice is logged. ``cfg`` is only read."""
    precision = cfg.precision
    # None: a config without the option keeps the model's own.
    kernel = getattr(cfg, "attn_implementation", None)
    reason = ""
    if cfg.resume:
        saved = run.saved_config()
        precision = saved.get("precision", "auto") if precision == "auto" else precision
        kernel = saved.get("attn_implementation", "auto") if kernel == "auto" else kernel
        if kernel == "auto" and saved.get("precision") not in (None, "auto"):
            kernel = None  # started before the kernel was chosen: it trained with the model's own
        reason = "as the run's start chose (config.yaml)"
    choice = None
    own = measured.own_attention(model)
    if torch.cuda.is_available() and not cfg.cpu:
        if precision == "auto":
            chosen = mixed_precision("auto", cfg.cpu)
            precision = "fp32" if chosen == "no" else chosen
            reason = "the GPU's rule: bf16 where it supports it, else fp32"
    elif precision == "auto" or (kernel == "auto" and own):
        tokens = float(np.mean(lengths)) if len(lengths) else 32.0
        choice = (
            measured.measure(model, "train", cfg.batch_size, tokens)
            if distributed.is_main()
            else None
        )
        choice = distributed.broadcast(choice, cpu=True)
        reason = choice.describe(None if precision == "auto" else precision)
        run.say(reason)
        precision = choice.precision if precision == "auto" else precision
        # "": no choice
        kernel = (choice.attention(precision) or kernel) if kernel == "auto" else kernel
    if kernel in ("auto", None) or not own:  # nothing chosen, or nothing to choose: the model's own
        kernel = own or kernel
    elif kernel != own:
        try:
            model.set_attn_implementation(kernel)
        except (ValueError, ImportError) as e:  # a model without that kernel: say so, in one line
            raise UserError(
                f"--attn-implementation {kernel}: {str(e).strip().splitlines()[0]}"
            ) from None
    return PrecisionChoice(precision, kernel, choice, reason)


def checkpoint_layers(model: torch.nn.Module, cfg: Any) -> None:
    """--gradient-checkpointing: each layer's activations recomputed in the backward (transformers'
    own, non-reentrant: frozen embeddings under LoRA need no inputs that require grad). The
    recomputation draws its dropout masks as the forward did (training.dropout's CPU masks, from the
    RNG state the checkpoint restores), so the gradients are those of the step without it."""
    if not getattr(cfg, "gradient_checkpointing", False):
        return
    from warmstart.training.dropout import faster_dropout

    device = "cpu" if cfg.cpu or not torch.cuda.is_available() else "cuda"
    model.gradient_checkpointing_enable(
        gradient_checkpointing_kwargs={
            "use_reentrant": False,
            "context_fn": lambda: (contextlib.nullcontext(), faster_dropout(device)),
        }
    )


def optimizer_for(model: torch.nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    # The usual BERT recipe: no weight decay on biases and LayerNorm weights. With a head learning
    # rate, the parameters outside the pre-trained body (the new head) form groups of their own at
    # that rate.
    head_lr = getattr(cfg, "head_lr", None)
    # Under LoRA (models.lora) the task model is inside peft's wrapper; the head then trains in full
    # (its copy lies outside the body) and the adapters, in the body, at --lr.
    inner = model.get_base_model() if hasattr(model, "peft_config") else model
    body = getattr(inner, "base_model", inner)
    in_body = (
        {id(p) for p in body.parameters()} if head_lr is not None and body is not model else None
    )
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            no_decay = p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
            head = in_body is not None and id(p) not in in_body
            groups.setdefault((head, no_decay), []).append(p)
    groups = [
        {
            "params": ps,
            "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            **({"lr": head_lr} if head else {}),
        }
        for (head, no_decay), ps in sorted(groups.items())
    ]
    # The seed's torch.optim.Adam adds decay (if any) to the gradient; AdamW decouples it.
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    try:
        # One fused kernel over all parameters: the update of MiniLM's 22.7M parameters took 17 ms
        # instead of 80 ms on 2 CPU cores (a sixth of a training step on tweets); the same
        # arithmetic, rounded differently.
        return cls(groups, lr=cfg.lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype the fused kernel does not support
        return cls(groups, lr=cfg.lr)


def schedule(cfg: FinetuneConfig, batches_per_epoch: int) -> tuple[int, int, int]:
    """(optimizer steps per epoch, total steps, warm-up steps) — the same arithmetic for both
    engines."""
    per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total = cfg.max_steps or math.ceil(cfg.epochs * per_epoch)
    return per_epoch, total, math.ceil(cfg.warmup_ratio * total)


def note_epoch(metric: str, state, value: float, epoch: int) -> bool:
    """Keep the best epoch by the valid ``metric`` (``value`` this epoch's) and count the epochs
    without improvement; whether this one is the new best, whose model the engine then saves.
    (When to stop is callbacks.EarlyStopping's to say.) ``state``: either engine's State."""
    if better(metric, value, state.best_metric):
        state.best_metric, state.best_epoch, state.bad_epochs = value, epoch, 0
        return True
    state.bad_epochs += 1
    return False


def begin_info(cfg, job: Job, run, engine: str, state, **counts: int) -> dict:
    """What both engines tell callbacks.Callback.on_train_begin: ``counts`` (total_steps, epochs,
    steps_per_epoch), where training stands (a resumed run's step and epoch records) and the run's
    settings as config.yaml holds them (read by the main process, the one that reports)."""
    return {
        "engine": engine,
        **counts,
        "unit": job.unit,
        "rows": len(job.train),
        "resumed_step": state.step,
        "history": list(state.epochs_log),
        "metric_for_best": cfg.metric_for_best,
        "settings": run.saved_config() if run.main else {},
        "run_dir": run.dir,
    }


def end_summary(state) -> dict:
    """What both engines tell callbacks.Callback.on_train_end."""
    return {
        "step": state.step,
        "epochs": len(state.epochs_log),
        "best_epoch": state.best_epoch,
        "stopped_early": state.stopped_early,
        "train_seconds": state.train_seconds,
        "samples": state.samples,
    }


def full_weights(accelerator: Any, model: torch.nn.Module) -> dict:
    """The model's whole state dict to save, through Accelerate: gathered where FSDP or DeepSpeed
    shard the weights over the processes (a collective: every process must call this), the model's
    own (no copy) elsewhere. One path for every setup, so a plain run checks the one a sharded run
    takes (save_pretrained writes the same files)."""
    from warmstart.training import sharding

    if sharding.is_sharded(model):  # FSDP2 on CPU processes, applied by warmstart itself
        return sharding.full_state_dict(model)
    return accelerator.get_state_dict(model)


def check_sharding(accelerator: Any, cfg: Any) -> None:
    """FSDP or DeepSpeed asked for (--fsdp, --deepspeed, or an Accelerate config file) but not what
    Accelerate set up: on CPUs it silently trains plain data parallel instead. Refused in one line
    before any step."""
    from accelerate.utils import DistributedType

    env = {
        "FSDP": os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true",
        "DeepSpeed": os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true",
    }
    asked = (
        "FSDP"
        if getattr(cfg, "fsdp", False) or env["FSDP"]
        else "DeepSpeed"
        if getattr(cfg, "deepspeed", None) or env["DeepSpeed"]
        else None
    )
    running = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if asked and not running:
        where = (
            "Accelerate runs it only on GPU processes, and these run on the CPU"
            if accelerator.num_processes > 1
            else "it needs several processes: add --num-processes N (or use `accelerate launch`)"
        )
        raise UserError(f"{asked} was asked for but cannot shard this run: {where}")
