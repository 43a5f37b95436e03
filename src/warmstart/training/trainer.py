"""The Trainer engine: the same config mapped onto Hugging Face `TrainingArguments` + `Trainer`.

Same inputs as the native engine (the task kind's Job: tokenised once, unpadded, its collator),
length grouping through the Trainer's LengthGroupedSampler (shuffled per seed and epoch), the same
optimizer, and the same run folder: the best model in model/, history.jsonl, epoch records. The
Trainer's own checkpoints go through Run.save_checkpoint like the native engine's (written in
checkpoints/.writing/, marked complete by state.json holding our counters, renamed into place), and
`--resume` hands the newest sound one to `trainer.train(resume_from_checkpoint=...)`."""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from warmstart import distributed
from warmstart.callbacks import CallbackList, Control, for_training
from warmstart.config import FinetuneConfig
from warmstart.progress import on_terminal
from warmstart.runs import Run, checkpoint_step
from warmstart.training.common import (
    Job,
    State,
    begin_info,
    checkpoint_layers,
    end_summary,
    full_weights,
    mixed_precision,
    note_epoch,
    optimizer_for,
    schedule,
)
from warmstart.training.dropout import faster_dropout


class EpochSeededSampler(LengthGroupedSampler):
    """The Trainer's length grouping, shuffled from (seed, epoch) rather than from the global RNG. A
    run resumed mid-epoch then takes the batches an uninterrupted one takes: the Trainer draws an
    epoch's order before it restores the checkpoint's RNG, so from the fresh process's RNG, which
    matches the interrupted run's only in the first epoch. (The Trainer calls set_epoch through
    Accelerate's data loader.)"""

    def __init__(self, *args, seed: int, buckets: int, **kwargs):
        super().__init__(*args, generator=torch.Generator(), **kwargs)
        self.seed, self.epoch, self.buckets = seed, 0, buckets

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(
            int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1)[0])
        )
        # --length-buckets caps the Trainer's mega-batch multiple (its own: 50, or fewer to make 4
        # of a small set).
        mult = max(1, min(self.buckets, len(self.lengths) // (self.batch_size * 4)))
        return iter(
            get_length_grouped_indices(
                self.lengths, self.batch_size, mega_batch_mult=mult, generator=self.generator
            )
        )


class _Trainer(Trainer):
    """The Trainer reports training loss only; this also counts the job's training accuracy per
    epoch, from the outputs it computes anyway, and writes its checkpoints the way the run folder
    does."""

    def __init__(
        self,
        *args,
        stats: State,
        job: Job,
        run: Run,
        keep: int | None,
        buckets: int,
        events: CallbackList,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.stats, self.job, self.run, self.keep, self.buckets = stats, job, run, keep, buckets
        self.events = events  # ours (callbacks.Callback), told of each checkpoint written
        self.last_loss: float | None = None  # the last training micro-batch's mean loss
        self._writing_in: Path | None = None

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        return EpochSeededSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            dataset=train_dataset,
            model_input_name="input_ids",
            seed=self.args.seed,
            buckets=self.buckets,
        )

    def _get_eval_sampler(self, eval_dataset):
        # The valid rows in their own order (the Trainer would group them by length as for
        # training): a kind's streaming metrics may then read predictions in dataset order (a
        # tagger's windows make up sentences).
        return None if eval_dataset is None else torch.utils.data.SequentialSampler(eval_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with faster_dropout(self.args.device) if model.training else contextlib.nullcontext():
            if self.job.loss is not None and model.training:
                # The kind's own training loss (class weights, label smoothing) replaces the
                # model's; the valid loss stays the model's plain cross-entropy, as the native
                # loop's evaluation computes it.
                outputs = model(**self.job.model_inputs(inputs))
                loss = self.job.loss(outputs, inputs)
            else:
                loss, outputs = super().compute_loss(
                    model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
                )
        if model.training:
            correct, counted = (
                self.job.accuracy(outputs, inputs)
                if self.job.accuracy is not None
                else (0, len(inputs["input_ids"]))
            )
            # The epoch's train loss is the loss trained on (smoothed, weighted), as the native loop
            # logs it; the model's own may be scaled by the Trainer for accumulation, so its batch
            # mean is recomputed.
            mean = (
                loss.item() if self.job.loss is not None else self.job.batch_loss(outputs, inputs)
            )
            self.last_loss = mean
            self.stats.loss_sum += mean * counted
            self.stats.correct += correct
            self.stats.seen += counted
            self.stats.samples += len(inputs["input_ids"])
        return (loss, outputs) if return_outputs else loss

    def _get_output_dir(self, trial):
        # While a checkpoint is written, the Trainer's "<output dir>/checkpoint-<step>" is our
        # staging folder.
        return (
            str(self._writing_in)
            if self._writing_in is not None
            else super()._get_output_dir(trial)
        )

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint files, written in checkpoints/.writing/ and marked complete
        (state.json, our counters) before they are renamed into place: a kill at any moment leaves
        no half checkpoint behind."""
        if self.state.epoch == int(self.state.epoch) and len(self.stats.epochs_log) < round(
            self.state.epoch
        ):
            # The last step of an epoch, not yet evaluated: the epoch-end checkpoint follows at
            # once. One taken now would resume in the next epoch and lose this one's record.
            return
        state = self.counters()  # a collective: every process, before any writes
        trainer_save = super()._save_checkpoint

        def write(folder: Path) -> None:
            self._writing_in = folder.parent
            try:
                trainer_save(model, trial)
            finally:
                self._writing_in = None

        folder = self.run.save_checkpoint(
            self.state.global_step,
            write,
            state,
            self.keep,
            barrier=self.accelerator.wait_for_everyone,
        )
        self.events.on_save("checkpoint", folder)

    def counters(self) -> dict:
        """What a resumed run needs besides the Trainer's own state: our State with the epoch's sums
        over all processes, and the Trainer's running loss since its last log line (it does not
        checkpoint that, so a resumed run would log a different average over fewer steps)."""
        s = self.stats
        cpu = self.args.use_cpu
        loss_sum, correct, seen, tr_loss = distributed.sum_all(
            [s.loss_sum, s.correct, s.seen, self._tr_loss.item()], cpu
        )
        return {
            **asdict(s),
            "step": self.state.global_step,
            "epoch": len(s.epochs_log),
            "loss_sum": loss_sum,
            "correct": int(correct),
            "seen": int(seen),
            "log_loss_sum": tr_loss / distributed.world_size(),
            "last_logged_step": self._globalstep_last_logged,
            "processes": distributed.world_size(),
        }

    def global_samples(self) -> int:
        """Training examples processed by all processes (each counts its own)."""
        return int(distributed.sum_all([self.stats.samples], self.args.use_cpu)[0])


class RunCallback(TrainerCallback):
    """Translates the Trainer's events into ours (callbacks.Callback) with the records the native
    engine makes, keeps the best model in model/ and ends training when a callback asks.

    Its counters go into each Trainer checkpoint's state.json (_Trainer.counters), so a resumed run
    keeps them. Every process runs it and tells its callbacks (counts are summed over the processes;
    the callbacks that write do so in the main one), as every process of the native engine does."""

    def __init__(
        self,
        cfg: FinetuneConfig,
        run: Run,
        stats: State,
        save_best,
        job: Job,
        counts: dict,
        events: CallbackList,
    ):
        self.cfg, self.run, self.stats, self.save_best = cfg, run, stats, save_best
        self.job, self.counts, self.events = job, counts, events
        self.has_valid, self.metric_names = job.valid is not None, job.metric_names
        self.job_has_accuracy = job.accuracy is not None
        self.t_log, self.n_log = time.time(), 0
        self.t_epoch = time.time()
        self.trainer: _Trainer | None = None
        self.resumed_log: tuple[float, int] | None = None
        self.pending: dict | None = None

    KEPT = ("best_metric", "best_epoch", "bad_epochs", "epochs_log", "stopped_early")

    def restore(self, saved: dict) -> None:
        """Counters from a checkpoint's state.json. The epoch's sums are over all processes: the
        main one carries them on (and the others start from 0), so their sum at the epoch's end is
        right again."""
        for k in self.KEPT:
            setattr(self.stats, k, saved[k])
        if distributed.is_main():
            for k in ("loss_sum", "correct", "seen"):
                setattr(self.stats, k, saved[k])
        self.resumed_log = (saved["log_loss_sum"], saved["last_logged_step"])

    def on_train_begin(self, args, state, control, **kw):
        # The Trainer has just set its running loss to 0 and its last logged step to the resumed
        # one.
        if self.resumed_log is not None and self.trainer is not None:
            loss, step = self.resumed_log
            self.trainer._tr_loss.fill_(loss)
            self.trainer._globalstep_last_logged = step
        self.stats.step = state.global_step
        self.events.on_train_begin(
            begin_info(self.cfg, self.job, self.run, "trainer", self.stats, **self.counts)
        )

    def on_epoch_begin(self, args, state, control, **kw):
        self.t_epoch = time.time()

    def on_step_end(self, args, state, control, **kw):
        self.events.on_step({"step": state.global_step, "loss": self.trainer.last_loss})

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "loss" not in logs:
            return
        samples = self.trainer.global_samples()  # every process logs this line: a collective
        rate = (samples - self.n_log) / max(time.time() - self.t_log, 1e-9)
        self.events.on_log(
            {
                "step": state.global_step,
                "epoch": round(state.epoch or 0, 4),
                "loss": logs["loss"],
                "lr": logs.get("learning_rate"),
                "samples_per_s": rate,
            }
        )
        self.t_log, self.n_log = time.time(), samples

    def on_epoch_end(self, args, state, control, **kw):
        s = self.stats
        # Every process counted its own slice of the batches.
        loss_sum, correct, seen = distributed.sum_all([s.loss_sum, s.correct, s.seen], self.cfg.cpu)
        self.pending = {
            "step": state.global_step,
            "epoch": len(s.epochs_log) + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "epoch_seconds": round(time.time() - self.t_epoch, 2),
        }
        if not self.job_has_accuracy:  # regression: no accuracy to log
            self.pending.pop("train_accuracy")
        # The next epoch counts from 0 (reset here, not when it begins: a run resumed mid-epoch
        # carries its sums on).
        s.loss_sum, s.correct, s.seen = 0.0, 0, 0
        if not self.has_valid:
            self._finish_epoch(control)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        rec = self.pending
        if rec is None or not metrics:
            return
        valid = {f"valid_{k}": metrics[f"eval_{k}"] for k in ("loss", *self.metric_names)}
        rec.update(valid, epoch_seconds=round(time.time() - self.t_epoch, 2))
        self.events.on_evaluate({"step": rec["step"], "epoch": rec["epoch"], **valid})
        best = self.cfg.metric_for_best
        self._finish_epoch(
            control, note_epoch(best, self.stats, rec[f"valid_{best}"], rec["epoch"])
        )

    def _finish_epoch(self, control, new_best: bool = False) -> None:
        rec, self.pending = self.pending, None
        rec["elapsed_seconds"] = round(time.time() - self.run.started, 2)
        ours = Control()
        self.events.on_epoch_end(rec, ours)
        self.stats.epochs_log.append(rec)
        if new_best:
            self.save_best()
        self.stats.stopped_early = self.stats.stopped_early or ours.stop
        control.should_training_stop = control.should_training_stop or ours.stop
        control.should_save = True  # a checkpoint at every epoch end, whatever --save-steps says


def train(
    cfg: FinetuneConfig,
    model: torch.nn.Module,
    job: Job,
    run: Run,
    callbacks: CallbackList | None = None,
) -> State:
    """Train ``model`` on ``job`` with the HF Trainer, telling ``callbacks`` (default: those the
    options ask for, callbacks.for_training) the same events with the same records as the native
    engine; the same State comes back."""
    callbacks = for_training(cfg, run) if callbacks is None else callbacks
    checkpoint_layers(model, cfg)
    train_data, valid_data = job.train, job.valid
    precision = mixed_precision(cfg.precision, cfg.cpu)
    # Under `accelerate launch` / torchrun the Trainer runs DDP itself: batch_size is per process.
    global_batch = cfg.batch_size * distributed.world_size()
    per_epoch, total_steps, warmup_steps = schedule(cfg, -(-len(train_data) // global_batch))
    args = TrainingArguments(
        output_dir=str(run.checkpoints_dir),
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.lr,
        lr_scheduler_type="linear" if cfg.scheduler == "linear" else "constant_with_warmup",
        warmup_steps=warmup_steps,
        max_grad_norm=cfg.max_grad_norm or 0.0,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        # Said outright on a machine without a GPU: the Trainer refuses bf16 there otherwise.
        use_cpu=distributed.use_cpu(cfg.cpu) or not torch.cuda.is_available(),
        seed=cfg.seed,
        train_sampling_strategy="group_by_length",
        logging_strategy="steps",
        logging_steps=cfg.logging_steps,
        eval_strategy="epoch" if valid_data is not None else "no",
        batch_eval_metrics=True,
        save_strategy="steps" if cfg.save_steps else "epoch",
        save_steps=cfg.save_steps or 500,
        save_total_limit=None,  # Run.save_checkpoint keeps the last --save-total-limit
        report_to="none",
        disable_tqdm=not (cfg.progress and on_terminal()),
        dataloader_num_workers=0,
        # classifiers use every parameter; the search costs a graph pass
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=torch.cuda.is_available() and not cfg.cpu,
    )
    stats = State()

    def save_best() -> None:
        # Sharded weights (FSDP, DeepSpeed) are gathered by every process, as the Trainer's
        # save_model does.
        weights = full_weights(trainer.accelerator, trainer.model_wrapped)
        if trainer.is_world_process_zero():
            run.save_model(
                lambda d: job.save(trainer.accelerator.unwrap_model(trainer.model), d, weights)
            )
        callbacks.on_save("model", run.model_dir)

    counts = dict(
        total_steps=total_steps,
        epochs=-(-total_steps // per_epoch),
        steps_per_epoch=per_epoch,
    )
    callback = RunCallback(cfg, run, stats, save_best, job, counts, callbacks)
    trainer = _Trainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=valid_data,
        data_collator=job.collate,
        processing_class=job.tokenizer,
        compute_metrics=job.trainer_metrics() if job.trainer_metrics else None,
        optimizers=(optimizer_for(model, cfg), None),
        callbacks=[callback],
        stats=stats,
        job=job,
        run=run,
        keep=cfg.save_total_limit,
        buckets=cfg.length_buckets,
        events=callbacks,
    )
    callback.trainer = trainer
    # Our callbacks draw the bar and say the log lines.
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    last = (
        run.resume_checkpoint(
            required=("trainer_state.json",), barrier=trainer.accelerator.wait_for_everyone
        )
        if cfg.resume
        else None
    )
    if cfg.resume:
        run.truncate_history(checkpoint_step(last) if last else 0)
    if last:
        callback.restore(run.checkpoint_state(last))
    run.say(
        f"training {len(train_data)} {job.unit} with the HF Trainer: {total_steps} optimizer steps,"
        f" batch {cfg.batch_size}x{cfg.grad_accum}"
        + (
            f" per process x {distributed.world_size()} processes"
            if distributed.is_distributed()
            else ""
        )
        + f", device {args.device}, precision {cfg.precision}→{precision}"
        + (f"; resuming from {last}" if last else "")
    )
    out = trainer.train(resume_from_checkpoint=str(last) if last else None)
    eval_seconds = sum(h.get("eval_runtime", 0.0) for h in trainer.state.log_history)
    stats.train_seconds = out.metrics["train_runtime"] - eval_seconds
    stats.step = trainer.state.global_step
    stats.epoch = len(stats.epochs_log)
    stats.samples = trainer.global_samples()
    if valid_data is None or stats.best_epoch is None:
        save_best()
    callbacks.on_train_end(end_summary(stats))
    return stats
