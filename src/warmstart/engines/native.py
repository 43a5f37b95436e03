"""The native engine: a plain PyTorch loop driven by Accelerate.

Accelerate places tensors, applies mixed precision and (later) shards data across processes; the loop
itself is the textbook one: forward, backward, clip, step, schedule. Checkpoints hold everything a
resumed run needs to end with the same metrics as an uninterrupted one: weights, optimizer, scheduler,
RNG states (accelerate) and our position in the data (state.json)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from warmstart.batching import LengthGroupedBatches
from warmstart.engines.common import judge_epoch, mixed_precision, optimizer_for, schedule
from warmstart.runs import Run, atomic_dir


@dataclass
class Job:
    """What a task hands the engine: the data, how to batch and score it, how to save the model.

    ``evaluate(model, device, autocast)`` returns valid metrics (``loss`` and any others, logged as
    ``valid_<name>``); ``accuracy(outputs, batch)`` returns (correct, counted) for a training batch."""

    train: torch.utils.data.Dataset
    lengths: np.ndarray
    collate: Callable[[list[dict]], dict]
    save: Callable[[torch.nn.Module, Path], Any]
    evaluate: Callable[[torch.nn.Module, torch.device, Callable], dict] | None = None
    accuracy: Callable[[Any, dict], tuple[int, int]] | None = None
    unit: str = "texts"
    on_epoch: Callable[[int], None] | None = None  # told each epoch before its first batch (e.g. to reseed masks)


@dataclass
class State:
    """Where training stands; saved as state.json in every checkpoint."""

    epoch: int = 0                 # epochs finished
    batches_done: int = 0          # micro-batches done in the current epoch
    step: int = 0                  # optimizer steps done
    loss_sum: float = 0.0          # running sums over the current epoch, for train loss/accuracy
    correct: int = 0
    counted: int = 0               # what accuracy is over: texts, or (masked) tokens
    seen: int = 0
    log_loss_sum: float = 0.0      # running sums since the last log line
    log_seen: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    epochs_log: list[dict] = field(default_factory=list)
    stopped_early: bool = False
    train_seconds: float = 0.0     # time in the training loop only (no evaluation, no checkpoints)
    samples: int = 0               # training examples processed


def train(cfg: Any, model: torch.nn.Module, job: Job, run: Run) -> State:
    """Train ``model`` on ``job`` with the options of ``cfg`` (a FinetuneConfig or PretrainConfig)."""
    accelerator = Accelerator(mixed_precision=mixed_precision(cfg.precision, cfg.cpu), cpu=cfg.cpu,
                              gradient_accumulation_steps=cfg.grad_accum)
    train_data, collate = job.train, job.collate
    sampler = LengthGroupedBatches(job.lengths, cfg.batch_size, cfg.seed)
    # A generator of its own: each DataLoader iterator draws a base seed from it, and drawing from the
    # global RNG instead would shift dropout masks after a resume.
    loader = torch.utils.data.DataLoader(train_data, batch_sampler=sampler, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    steps_per_epoch, total_steps, warmup_steps = schedule(cfg, len(loader))
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = optimizer_for(model, cfg)
    scheduler = get_scheduler("linear" if cfg.scheduler == "linear" else "constant_with_warmup", optimizer,
                              num_warmup_steps=warmup_steps,
                              num_training_steps=total_steps)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # The scheduler is stepped by us once per optimizer step, so it is only registered for checkpoints.
    accelerator.register_for_checkpointing(scheduler)

    state = State()
    if cfg.resume and run.checkpoints():
        last = run.checkpoints()[-1]
        accelerator.load_state(str(last))
        state = State(**json.loads((last / "state.json").read_text()))
        run.truncate_history(state.step)
        run.say(f"resumed from {last} (epoch {state.epoch}, step {state.step})")
    elif cfg.resume:
        run.truncate_history(0)  # killed before its first checkpoint: start over

    def checkpoint() -> None:
        if accelerator.is_main_process:
            run.save_checkpoint(state.step, lambda d: accelerator.save_state(str(d)), asdict(state),
                                cfg.save_total_limit)

    def save_best() -> None:
        if accelerator.is_main_process:
            atomic_dir(run.model_dir, lambda d: job.save(accelerator.unwrap_model(model), d))

    run.say(f"training {len(train_data)} {job.unit}: {n_epochs} epoch(s), {total_steps} optimizer steps, "
            f"batch {cfg.batch_size}x{cfg.grad_accum}, device {accelerator.device}, precision {cfg.precision}"
            f"→{accelerator.mixed_precision}")
    bar = tqdm(total=total_steps, initial=state.step, desc="train", unit="step",
               disable=not cfg.progress or not accelerator.is_main_process, dynamic_ncols=True)
    model.train()
    t_log, n_log = time.time(), 0
    while state.epoch < n_epochs and state.step < total_steps and not state.stopped_early:
        t_epoch = time.time()
        batches = accelerator.skip_first_batches(loader, state.batches_done) if state.batches_done else loader
        # Accelerate's loaders reset the sampler's epoch from their own counter at each __iter__, so the
        # epoch goes through them (a resumed run starts its counter at 0).
        batches.set_epoch(state.epoch)
        sampler.set_epoch(state.epoch)  # the skipping loader's set_epoch does not reach our sampler
        if job.on_epoch is not None:
            job.on_epoch(state.epoch)
        t_loop = time.time()
        for batch in batches:
            with accelerator.accumulate(model):
                out = model(**batch)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            n = len(batch["input_ids"])
            loss = out.loss.item()
            state.batches_done += 1
            state.loss_sum += loss * n
            if job.accuracy is not None:
                correct, counted = job.accuracy(out, batch)
                state.correct, state.counted = state.correct + correct, state.counted + counted
            state.seen += n
            state.samples += n
            n_log, state.log_seen, state.log_loss_sum = n_log + n, state.log_seen + n, state.log_loss_sum + loss * n
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if state.step % cfg.logging_steps == 0:
                rate = n_log / max(time.time() - t_log, 1e-9)
                rec = {"step": state.step, "epoch": round(state.epoch + state.batches_done / len(loader), 4),
                       "loss": state.log_loss_sum / state.log_seen, "lr": scheduler.get_last_lr()[0],
                       "samples_per_s": rate}
                run.log(rec)
                run.say(f"step {state.step}/{total_steps}  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  "
                        f"{rate:.1f} samples/s")
                t_log, n_log, state.log_loss_sum, state.log_seen = time.time(), 0, 0.0, 0
            if state.step >= total_steps:
                break
            if cfg.save_steps and state.step % cfg.save_steps == 0:
                t_ckpt = time.time()
                checkpoint()
                t_loop += time.time() - t_ckpt
        state.train_seconds += time.time() - t_loop
        end_of_epoch(cfg, state, model, accelerator, job, run, time.time() - t_epoch, save_best)
        checkpoint()
    bar.close()
    if job.evaluate is None or state.best_epoch is None:
        save_best()  # no valid split: the final model is the last one
    accelerator.wait_for_everyone()
    return state


def end_of_epoch(cfg: Any, state: State, model, accelerator: Accelerator, job: Job, run: Run, seconds: float,
                 save_best: Callable[[], None]) -> None:
    rec: dict = {"step": state.step, "epoch": state.epoch + 1, "train_loss": state.loss_sum / max(state.seen, 1)}
    if job.accuracy is not None:
        rec["train_accuracy"] = state.correct / max(state.counted, 1)
    rec["epoch_seconds"] = round(seconds, 2)
    if job.evaluate is not None:
        metrics = job.evaluate(accelerator.unwrap_model(model), accelerator.device, accelerator.autocast)
        rec.update({f"valid_{k}": v for k, v in metrics.items()})
        judge_epoch(cfg, state, rec[f"valid_{cfg.metric_for_best}"], state.epoch + 1, save_best)
        model.train()
    rec["elapsed_seconds"] = round(time.time() - run.started, 2)
    run.log(rec)
    state.epochs_log.append(rec)
    run.say(f"epoch {rec['epoch']}: " + "  ".join(
        f"{k.replace('_', ' ')} {v:.4f}" for k, v in rec.items() if k.startswith(("train_", "valid_")))
        + f" | {seconds:.0f}s" + ("  (early stop)" if state.stopped_early else ""))
    state.epoch += 1
    state.batches_done, state.loss_sum, state.correct, state.counted, state.seen = 0, 0.0, 0, 0, 0
