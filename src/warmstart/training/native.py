"""The native engine: a plain PyTorch loop driven by Accelerate.

Accelerate places tensors, applies mixed precision and wraps the model for DDP/FSDP/DeepSpeed; the
loop itself is the textbook one: forward, backward, clip, step, schedule. Under `accelerate launch`
each process trains on its slice of every global batch (see ``train``). Checkpoints hold everything
a resumed run needs to end with the same metrics as an uninterrupted one: weights, optimizer,
scheduler, RNG states (accelerate) and our position in the data (state.json)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.state import AcceleratorState
from transformers import get_scheduler

from warmstart import distributed
from warmstart.callbacks import CallbackList, Control, for_training
from warmstart.data.batching import LengthGroupedBatches
from warmstart.distributed import batch_part
from warmstart.errors import UserError
from warmstart.runs import Run
from warmstart.training import sharding
from warmstart.training.common import (
    Job,
    State,
    begin_info,
    check_sharding,
    checkpoint_layers,
    end_summary,
    full_weights,
    mixed_precision,
    note_epoch,
    optimizer_for,
    schedule,
)
from warmstart.training.dropout import faster_dropout


def train(
    cfg: Any, model: torch.nn.Module, job: Job, run: Run, callbacks: CallbackList | None = None
) -> State:
    """Train ``model`` on ``job`` with the options of ``cfg`` (a FinetuneConfig or PretrainConfig),
    telling ``callbacks`` (default: those the options ask for, callbacks.for_training) each event:
    the run log, the progress bar, early stopping and the trackers are among them.

    Under `accelerate launch` with N processes, ``cfg.batch_size`` is per process: the sampler cuts
    global batches of batch_size × N and each process trains on its slice of every one
    (distributed.batch_part), so N processes take the same steps on the same batches as one process
    with N times the batch size. State (position, sums, best epoch) is global and held alike by
    every process; the main one writes it."""
    callbacks = for_training(cfg, run) if callbacks is None else callbacks
    # Accelerate keeps one AcceleratorState per process: a second run in the same Python process
    # (the API called twice, a benchmark) with another precision would be refused. Its settings are
    # this run's alone.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision=mixed_precision(cfg.precision, cfg.cpu),
        cpu=distributed.use_cpu(cfg.cpu),
        gradient_accumulation_steps=cfg.grad_accum,
    )
    # FSDP on CPU processes: torch's FSDP2 applied here (training/sharding.py), as Accelerate does
    # not; anything else asked for must be what Accelerate runs.
    sharded = sharding.on_cpu_processes(accelerator, cfg)
    if sharded:
        distributed.refuse_unsupported_fsdp(cfg)
    else:
        check_sharding(accelerator, cfg)
    world, me = accelerator.num_processes, accelerator.process_index
    last = run.resume_checkpoint(barrier=accelerator.wait_for_everyone) if cfg.resume else None
    saved = run.checkpoint_state(last) if last else {}
    # A resumed run keeps the global batch of the run it continues, whatever its number of
    # processes, so the batches, steps and schedule go on exactly where they stopped.
    global_batch = saved.get("global_batch") or cfg.batch_size * world
    if global_batch % world:
        raise UserError(
            f"--resume: the run's global batch of {global_batch} does not split evenly over "
            f"{world} processes; resume with a number of processes that divides it"
        )
    sampler = LengthGroupedBatches(job.lengths, global_batch, cfg.seed, cfg.length_buckets)
    n_batches = len(sampler)
    steps_per_epoch, total_steps, warmup_steps = schedule(cfg, n_batches)
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    checkpoint_layers(model, cfg)
    if sharded:  # before the optimizer: it then holds (and updates) the shards alone
        model = sharding.shard(model, world, accelerator.mixed_precision)
    optimizer = optimizer_for(model, cfg)
    scheduler = get_scheduler(
        "linear" if cfg.scheduler == "linear" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=warmup_steps,
        num_training_steps=total_steps,
    )
    if sharded:
        # Sharded already (prepare would wrap it in DDP); Accelerate's optimizer wrapper still
        # skips the steps of accumulating micro-batches. Not registered with the accelerator, so
        # its save_state keeps only scheduler and RNG states: the shards are saved by sharding.
        optimizer = AcceleratedOptimizer(optimizer, device_placement=False)
        run.say(sharding.describe(model, world))
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    # The scheduler is stepped by us once per optimizer step, so it is only registered for
    # checkpoints.
    accelerator.register_for_checkpointing(scheduler)

    state = State(global_batch=global_batch)
    if last:
        sharding.check_resumable(last, sharded, accelerator)
        accelerator.load_state(str(last))
        if sharded:
            sharding.load(model, optimizer.optimizer, last)
        state = State(**{**saved, "global_batch": global_batch})
        run.truncate_history(state.step)
        run.say(
            f"resumed from {last} (epoch {state.epoch}, step {state.step})"
            + (
                f" with {world} processes (was {saved.get('processes', 1)})"
                if saved.get("processes", 1) != world
                else ""
            )
        )
    elif cfg.resume:
        run.truncate_history(0)  # killed before its first checkpoint: start over
    state.processes = world

    def write_state(folder) -> None:
        accelerator.save_state(str(folder))
        if sharded:
            sharding.save(model, optimizer.optimizer, folder)

    def checkpoint() -> None:
        folder = run.save_checkpoint(
            state.step,
            write_state,
            asdict(state),
            cfg.save_total_limit,
            barrier=accelerator.wait_for_everyone,
        )
        callbacks.on_save("checkpoint", folder)

    def save_best() -> None:
        weights = full_weights(accelerator, model)
        if accelerator.is_main_process:
            run.save_model(lambda d: job.save(accelerator.unwrap_model(model), d, weights))
        callbacks.on_save("model", run.model_dir)

    run.say(
        f"training {len(job.train)} {job.unit}: {n_epochs} epoch(s), {total_steps} optimizer steps,"
        f" batch {global_batch // world}x{cfg.grad_accum}"
        + (f" per process x {world} processes" if world > 1 else "")
        + f", device {accelerator.device}, precision {cfg.precision}→{accelerator.mixed_precision}"
    )
    callbacks.on_train_begin(
        begin_info(
            cfg,
            job,
            run,
            "native",
            state,
            total_steps=total_steps,
            epochs=n_epochs,
            steps_per_epoch=steps_per_epoch,
        )
    )
    model.train()
    t_log, n_log = time.time(), 0
    while state.epoch < n_epochs and state.step < total_steps and not state.stopped_early:
        t_epoch = time.time()
        sampler.set_epoch(state.epoch)
        if job.on_epoch is not None:
            job.on_epoch(state.epoch)
        epoch_batches = sampler.batches()
        t_loop = time.time()
        while state.batches_done < n_batches:
            part, weight = batch_part(epoch_batches[state.batches_done], me, world)
            batch = job.collate([job.train[i] for i in part])
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            # Accelerate syncs gradients every grad_accum micro-batches; we place its counter
            # ourselves so that the last micro-batch of an epoch always steps (and a resumed run
            # counts from the epoch).
            last_of_epoch = state.batches_done + 1 == n_batches
            accelerator.step = (
                cfg.grad_accum - 1 if last_of_epoch else state.batches_done % cfg.grad_accum
            )
            with accelerator.accumulate(model):
                with faster_dropout(accelerator.device):
                    out = (
                        job.forward(model, batch)
                        if job.forward is not None
                        else model(**job.model_inputs(batch))
                    )
                batch_loss = job.loss(out, batch) if job.loss is not None else out.loss
                accelerator.backward(batch_loss * weight if weight != 1 else batch_loss)
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            n = len(part) if weight else 0
            correct, counted = (
                job.accuracy(out, batch) if job.accuracy is not None and n else (0, 0)
            )
            # Sums over all processes, so the state (and what it logs) is the whole batch's.
            loss_sum, n, correct, counted = distributed.sum_all(
                [batch_loss.item() * n, n, correct, counted], cfg.cpu
            )
            n, correct, counted = int(n), int(correct), int(counted)
            loss = loss_sum / max(n, 1)
            state.batches_done += 1
            state.loss_sum += loss_sum
            state.correct, state.counted = state.correct + correct, state.counted + counted
            state.seen += n
            state.samples += n
            n_log, state.log_seen, state.log_loss_sum = (
                n_log + n,
                state.log_seen + n,
                state.log_loss_sum + loss_sum,
            )
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step += 1
            callbacks.on_step({"step": state.step, "loss": loss})
            if state.step % cfg.logging_steps == 0:
                callbacks.on_log(
                    {
                        "step": state.step,
                        "epoch": round(state.epoch + state.batches_done / n_batches, 4),
                        "loss": state.log_loss_sum / state.log_seen,
                        "lr": scheduler.get_last_lr()[0],
                        "samples_per_s": n_log / max(time.time() - t_log, 1e-9),
                    }
                )
                t_log, n_log, state.log_loss_sum, state.log_seen = time.time(), 0, 0.0, 0
            if state.step >= total_steps:
                break
            if cfg.save_steps and state.step % cfg.save_steps == 0:
                # The checkpoint carries the loop's time so far (a run resumed from it counts on
                # from there); writing it is not training time.
                state.train_seconds += time.time() - t_loop
                checkpoint()
                t_loop = time.time()
        state.train_seconds += time.time() - t_loop
        end_of_epoch(
            cfg, state, model, accelerator, job, run, time.time() - t_epoch, save_best, callbacks
        )
        checkpoint()
    if job.evaluate is None or state.best_epoch is None:
        save_best()  # no valid split: the final model is the last one
    accelerator.wait_for_everyone()
    callbacks.on_train_end(end_summary(state))
    return state


def end_of_epoch(
    cfg: Any,
    state: State,
    model,
    accelerator: Accelerator,
    job: Job,
    run: Run,
    seconds: float,
    save_best: Callable[[], None],
    callbacks: CallbackList,
) -> None:
    """The epoch's record (train sums, valid metrics) to the callbacks; the best model kept; a stop
    asked by a callback (early stopping, a pruned tune trial) ends training after this epoch."""
    rec: dict = {
        "step": state.step,
        "epoch": state.epoch + 1,
        "train_loss": state.loss_sum / max(state.seen, 1),
    }
    if job.accuracy is not None:
        rec["train_accuracy"] = state.correct / max(state.counted, 1)
    rec["epoch_seconds"] = round(seconds, 2)
    new_best = False
    if job.evaluate is not None:
        # A sharded model's forward is a collective: every process scores every row.
        with distributed.rows_everywhere(sharding.is_sharded(model)):
            metrics = job.evaluate(
                accelerator.unwrap_model(model), accelerator.device, accelerator.autocast
            )
        valid = {f"valid_{k}": v for k, v in metrics.items()}
        rec.update(valid)
        callbacks.on_evaluate({"step": rec["step"], "epoch": rec["epoch"], **valid})
        new_best = note_epoch(
            cfg.metric_for_best, state, rec[f"valid_{cfg.metric_for_best}"], state.epoch + 1
        )
        model.train()
    rec["elapsed_seconds"] = round(time.time() - run.started, 2)
    control = Control()
    callbacks.on_epoch_end(rec, control)
    state.epochs_log.append(rec)
    if new_best:
        save_best()
    state.stopped_early = state.stopped_early or control.stop
    state.epoch += 1
    state.batches_done, state.loss_sum, state.correct, state.counted, state.seen = 0, 0.0, 0, 0, 0
