"""The Trainer engine: the same config mapped onto Hugging Face `TrainingArguments` + `Trainer`.

Same inputs as the native engine (the task kind's Job: tokenised once, unpadded, its collator), length
grouping through `train_sampling_strategy="group_by_length"`, the same optimizer, and the same run
folder: the best model in model/, history.jsonl, epoch records. The Trainer's own checkpoints live in
checkpoints/ and `--resume` goes through `trainer.train(resume_from_checkpoint=...)`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint

from warmstart import distributed
from warmstart.config import FinetuneConfig
from warmstart.runs import Run, atomic_dir, atomic_write_json
from warmstart.training.common import Job, State, judge_epoch, mixed_precision, optimizer_for, schedule


class _Trainer(Trainer):
    """The Trainer reports training loss only; this also counts the job's training accuracy per epoch, from
    the outputs it computes anyway."""

    def __init__(self, *args, stats: State, job: Job, **kwargs):
        super().__init__(*args, **kwargs)
        self.stats, self.job = stats, job

    def _get_eval_sampler(self, eval_dataset):
        # The valid rows in their own order (the Trainer would group them by length as for training): a kind's
        # streaming metrics may then read predictions in dataset order (a tagger's windows make up sentences).
        return None if eval_dataset is None else torch.utils.data.SequentialSampler(eval_dataset)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                             num_items_in_batch=num_items_in_batch)
        if model.training:
            correct, counted = self.job.accuracy(outputs, inputs)
            self.stats.loss_sum += self.job.batch_loss(outputs, inputs) * counted
            self.stats.correct += correct
            self.stats.seen += counted
            self.stats.samples += len(inputs["input_ids"])
        return (loss, outputs) if return_outputs else loss


class BarOnly(ProgressCallback):
    """The Trainer's progress bar without its dict-per-log printing (RunCallback prints our log lines)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class RunCallback(TrainerCallback):
    """Writes our history.jsonl and epoch records, keeps the best model in model/, stops early.

    Its counters go into each Trainer checkpoint as warmstart_state.json, so a resumed run keeps them."""

    def __init__(self, cfg: FinetuneConfig, run: Run, stats: State, save_best, job: Job, total_steps: int):
        self.cfg, self.run, self.stats, self.save_best = cfg, run, stats, save_best
        self.has_valid, self.metric_names, self.total_steps = job.valid is not None, job.metric_names, total_steps
        self.t_log, self.n_log = time.time(), 0
        self.t_epoch = time.time()

    KEPT = ("best_metric", "best_epoch", "bad_epochs", "epochs_log", "stopped_early")

    def on_save(self, args, state, control, **kw):
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            atomic_write_json(folder / "warmstart_state.json", {k: getattr(self.stats, k) for k in self.KEPT})

    def restore(self, checkpoint: str) -> None:
        path = Path(checkpoint) / "warmstart_state.json"
        if path.is_file():
            for k, v in json.loads(path.read_text()).items():
                setattr(self.stats, k, v)

    def on_epoch_begin(self, args, state, control, **kw):
        self.t_epoch = time.time()
        self.stats.loss_sum, self.stats.correct, self.stats.seen = 0.0, 0, 0

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        seen = self.stats.samples - self.n_log
        rate = seen / max(time.time() - self.t_log, 1e-9)
        rec = {"step": state.global_step, "epoch": round(state.epoch or 0, 4), "loss": logs["loss"],
               "lr": logs.get("learning_rate"), "samples_per_s": rate}
        self.run.log(rec)
        self.run.say(f"step {rec['step']}/{self.total_steps}  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  "
                     f"{rate:.1f} samples/s")
        self.t_log, self.n_log = time.time(), self.stats.samples

    def on_epoch_end(self, args, state, control, **kw):
        s = self.stats
        self.pending = {"step": state.global_step, "epoch": len(s.epochs_log) + 1,
                        "train_loss": s.loss_sum / max(s.seen, 1), "train_accuracy": s.correct / max(s.seen, 1),
                        "epoch_seconds": round(time.time() - self.t_epoch, 2)}
        if not self.has_valid:
            self._finish_epoch(state, control)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        rec = getattr(self, "pending", None)
        if rec is None or not metrics:
            return
        rec.update({f"valid_{k}": metrics[f"eval_{k}"] for k in ("loss", *self.metric_names)},
                   epoch_seconds=round(time.time() - self.t_epoch, 2))
        judge_epoch(self.cfg, self.stats, rec[f"valid_{self.cfg.metric_for_best}"], rec["epoch"], self.save_best)
        control.should_training_stop = control.should_training_stop or self.stats.stopped_early
        self._finish_epoch(state, control)

    def _finish_epoch(self, state, control) -> None:
        rec, self.pending = self.pending, None
        rec["elapsed_seconds"] = round(time.time() - self.run.started, 2)
        self.run.log(rec)
        self.stats.epochs_log.append(rec)
        msg = f"epoch {rec['epoch']}: train loss {rec['train_loss']:.4f} acc {rec['train_accuracy']:.4f}"
        if "valid_loss" in rec:
            msg += f" | valid loss {rec['valid_loss']:.4f} acc {rec['valid_accuracy']:.4f}"
        self.run.say(msg + f" | {rec['epoch_seconds']:.0f}s" + ("  (early stop)" if self.stats.stopped_early else ""))
        control.should_save = True  # a checkpoint at every epoch end, whatever --save-steps says


def train(cfg: FinetuneConfig, model: torch.nn.Module, job: Job, run: Run) -> State:
    """Train ``model`` on ``job`` with the HF Trainer; the same State as the native engine comes back."""
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
        save_total_limit=cfg.save_total_limit,
        report_to="none",
        disable_tqdm=not cfg.progress,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,  # classifiers use every parameter; the search costs a graph pass
        dataloader_pin_memory=torch.cuda.is_available() and not cfg.cpu,
    )
    stats = State()

    def save_best() -> None:
        if trainer.is_world_process_zero():
            atomic_dir(run.model_dir, lambda d: job.save(trainer.model, d, None))

    callback = RunCallback(cfg, run, stats, save_best, job, total_steps)
    trainer = _Trainer(model=model, args=args, train_dataset=train_data, eval_dataset=valid_data,
                       data_collator=job.collate, processing_class=job.tokenizer,
                       compute_metrics=job.trainer_metrics() if job.trainer_metrics else None,
                       optimizers=(optimizer_for(model, cfg), None), callbacks=[callback], stats=stats, job=job)
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)
    if cfg.progress:
        trainer.add_callback(BarOnly())
    last = get_last_checkpoint(str(run.checkpoints_dir)) if cfg.resume and run.checkpoints_dir.is_dir() else None
    if cfg.resume:
        run.truncate_history(int(Path(last).name.split("-")[1]) if last else 0)
    if last:
        callback.restore(last)
    run.say(f"training {len(train_data)} {job.unit} with the HF Trainer: {total_steps} optimizer steps, "
            f"batch {cfg.batch_size}x{cfg.grad_accum}"
            + (f" per process x {distributed.world_size()} processes" if distributed.is_distributed() else "")
            + f", device {args.device}, precision {cfg.precision}→{precision}"
            + (f"; resuming from {last}" if last else ""))
    out = trainer.train(resume_from_checkpoint=last)
    eval_seconds = sum(h.get("eval_runtime", 0.0) for h in trainer.state.log_history)
    stats.train_seconds = out.metrics["train_runtime"] - eval_seconds
    stats.step = trainer.state.global_step
    stats.epoch = len(stats.epochs_log)
    if valid_data is None or stats.best_epoch is None:
        save_best()
    return stats
