"""`warmstart pretrain`: self-supervised (continued) pre-training on raw text.

Corpus → documents → objective (clm, mlm, mlm+nsp, denoise: warmstart.objectives) → the native engine
(the same loop, checkpoints and --resume as `finetune`) → a run folder whose model/ plugs into the
other commands: a clm model into `generate`, an mlm encoder into `finetune`."""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    AutoModelForSeq2SeqLM,
)

from warmstart import models, objectives, plots, scratch
from warmstart.config import PretrainConfig, absolute_paths, make, to_dict
from warmstart.corpus import read_corpus
from warmstart.engines import native
from warmstart.errors import UserError
from warmstart.inference import pick_device
from warmstart.objectives.denoise import DenoisingCollator
from warmstart.objectives.nsp import NSPCollator
from warmstart.runs import Run, prepare_run_folder

AUTO = {"AutoModelForCausalLM": AutoModelForCausalLM, "AutoModelForMaskedLM": AutoModelForMaskedLM,
        "AutoModelForPreTraining": AutoModelForPreTraining, "AutoModelForSeq2SeqLM": AutoModelForSeq2SeqLM}
TOKENIZER_KIND = {"gpt2": "bpe", "bart": "bpe", "bert": "wordpiece"}


@dataclass
class PretrainResult:
    run_dir: Path
    model_dir: Path
    metrics: dict


class SeededBatches:
    """Wraps a masking/noising collator so that each batch's random draws depend only on (seed, epoch,
    the batch's tokens) — not on how many batches came before. Accelerate's loader collates one batch
    ahead, so a generator saved in a checkpoint would already have drawn the next batch's masks; with
    per-batch seeds a resumed run draws exactly the masks an uninterrupted one does. The epoch keeps
    masking dynamic: the same block gets new masks in every epoch (RoBERTa's dynamic masking)."""

    def __init__(self, collate, seed: int):
        self.collate, self.seed, self.epoch = collate, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, items: list[dict]) -> dict:
        content = zlib.crc32(np.concatenate([np.asarray(it["input_ids"], dtype=np.int64) for it in items]).tobytes())
        seed = int(np.random.SeedSequence([self.seed, self.epoch, content]).generate_state(1)[0])
        inner = self.collate.mlm if isinstance(self.collate, NSPCollator) else self.collate
        if isinstance(inner, DenoisingCollator):
            inner.rng = np.random.default_rng(seed)
        elif hasattr(inner, "generator"):
            inner.generator = torch.Generator().manual_seed(seed)
            inner._generator_pid = os.getpid()  # else transformers re-creates it from its own seed
        return self.collate(items)


def split_documents(cfg: PretrainConfig) -> tuple[list[str], list[str]]:
    docs = read_corpus(cfg.data, cfg.text_column, cfg.limit)
    if cfg.valid:
        return docs, read_corpus(cfg.valid, cfg.text_column, cfg.limit)
    n_valid = max(1, int(round(cfg.valid_fraction * len(docs)))) if cfg.valid_fraction > 0 else 0
    if n_valid and len(docs) - n_valid < 1:
        raise UserError(f"file '{cfg.data}' has {len(docs)} document(s): too few to hold some out for validation")
    order = np.random.default_rng(cfg.seed).permutation(len(docs))
    held = set(order[:n_valid].tolist())
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


def load_model(cfg: PretrainConfig, objective: objectives.Objective, train_docs: list[str]):
    """A fresh model from a preset + a tokenizer trained on the corpus, or a checkpoint to continue."""
    auto = AUTO[objective.model_class]
    if cfg.from_scratch:
        tokenizer = scratch.train_tokenizer(TOKENIZER_KIND[objective.arch], train_docs, vocab_size=cfg.vocab_size,
                                            max_length=cfg.block_size, arch=objective.arch)
        return auto.from_config(scratch.preset(objective.arch, cfg.size, tokenizer, cfg.block_size)), tokenizer
    from warmstart import lm

    path = lm.resolve(cfg.model) if cfg.model in lm.ALIASES else models.resolve(cfg.model)
    tokenizer = models.load_tokenizer(path)
    try:
        model = auto.from_pretrained(path, local_files_only=True)
    except ValueError:
        kind = getattr(models.AutoConfig.from_pretrained(path, local_files_only=True), "model_type", "?")
        raise UserError(f"objective '{objective.name}' needs a model that {auto.__name__} supports "
                        f"(e.g. {objective.arch}); '{cfg.model}' is a {kind} model") from None
    if objective.name == "mlm+nsp" and "next_sentence_label" not in inspect.signature(model.forward).parameters:
        # AutoModelForPreTraining maps e.g. DistilBERT to a plain masked LM, without a next-sentence head.
        raise UserError(f"objective 'mlm+nsp' needs a model that has a next-sentence head (BERT); '{cfg.model}' is "
                        f"a {model.config.model_type} model: use --objective mlm")
    models.set_attention_dropout(model.config, cfg.attention_dropout)
    limit = models.max_length_of(tokenizer, model.config, None)
    if cfg.block_size > limit:
        raise UserError(f"--block-size {cfg.block_size} is more than this model's limit of {limit} tokens")
    return model, tokenizer


def _logits(out):
    return out.prediction_logits if hasattr(out, "prediction_logits") else out.logits


def token_accuracy(objective: str, out, batch: dict) -> tuple[int, int]:
    """(correct, counted) over the tokens the objective predicts: next tokens (clm), masked tokens
    (mlm, mlm+nsp) or the reconstructed text (denoise)."""
    logits, labels = _logits(out).detach(), batch["labels"]
    if objective == "clm":
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != -100
    return int((logits.argmax(-1)[keep] == labels[keep]).sum()), int(keep.sum())


def evaluator(cfg: PretrainConfig, batches: list[dict]):
    """Held-out loss, perplexity (exp of the mean token loss) and token accuracy on fixed batches: the
    masks and noise of the valid set are drawn once, so epochs compare on the same task."""

    def evaluate(model, device, autocast) -> dict:
        model.eval()
        loss_sum = correct = counted = nsp_correct = nsp_seen = 0.0
        with torch.inference_mode():
            for batch in batches:
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast():
                    out = model(**batch)
                c, n = token_accuracy(cfg.objective, out, batch)
                if cfg.objective == "mlm+nsp":  # BertForPreTraining's loss adds the NSP loss; keep the MLM part
                    logits = _logits(out).float()
                    mlm = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]),
                                                            batch["labels"].view(-1), ignore_index=-100)
                    loss_sum += mlm.item() * n
                    nsp = out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]
                    nsp_correct, nsp_seen = nsp_correct + int(nsp.sum()), nsp_seen + len(nsp)
                else:
                    loss_sum += out.loss.item() * n  # the models average over predicted tokens
                correct, counted = correct + c, counted + n
        loss = loss_sum / max(counted, 1)
        metrics = {"loss": loss, "perplexity": math.exp(min(loss, 50)), "accuracy": correct / max(counted, 1)}
        if nsp_seen:
            metrics["nsp_accuracy"] = nsp_correct / nsp_seen
        return metrics

    return evaluate


def pretrain(config: PretrainConfig | None = None, **kwargs) -> PretrainResult:
    """Pre-train (or continue pre-training) on a raw-text corpus; returns the run folder and metrics."""
    t0 = time.time()
    cfg = absolute_paths(make(PretrainConfig, config, kwargs), "data", "valid", "model")
    objective = objectives.objective(cfg.objective)
    if not cfg.data:
        raise UserError("no corpus: pass --data FILE or FOLDER")
    if not cfg.from_scratch and not cfg.model:
        raise UserError("pass --model to continue pre-training a model, or --from-scratch for a new one")
    run = Run(cfg.out, tensorboard_dir=cfg.logging_dir)
    train_docs, valid_docs = split_documents(cfg)
    prepare_run_folder(run, to_dict(cfg), cfg.resume, cfg.overwrite)
    if cfg.resume and run.finished():
        run.say(f"run in '{run.dir}' has already finished; nothing to resume")
        return PretrainResult(run.dir, run.model_dir, json.loads((run.dir / "metrics.json").read_text()))

    set_seed(cfg.seed)
    model, tokenizer = load_model(cfg, objective, train_docs)
    common = dict(seed=cfg.seed, whole_word_mask=cfg.whole_word_mask, mlm_probability=cfg.mlm_probability)
    train_data, collate = objectives.prepare(cfg.objective, tokenizer, train_docs, cfg.block_size,
                                             source=f"file '{cfg.data}'", **common)
    collate = SeededBatches(collate, cfg.seed)
    batches: list[dict] = []
    if valid_docs:
        valid_data, valid_collate = objectives.prepare(cfg.objective, tokenizer, valid_docs, cfg.block_size,
                                                       source=f"the held-out part of '{cfg.valid or cfg.data}'",
                                                       **{**common, "seed": cfg.seed + 1})
        bs = cfg.eval_batch_size or 2 * cfg.batch_size
        batches = [valid_collate([valid_data[i] for i in range(s, min(s + bs, len(valid_data)))])
                   for s in range(0, len(valid_data), bs)]
    cfg.eval_batch_size = cfg.eval_batch_size or 2 * cfg.batch_size
    run.write_config({k: v for k, v in to_dict(cfg).items() if k not in ("resume", "overwrite")})
    n_params = sum(p.numel() for p in model.parameters())
    run.say(f"{cfg.objective}: {objective.description}; model {type(model).__name__} ({n_params / 1e6:.1f}M "
            f"parameters{', from scratch' if cfg.from_scratch else ''}); {len(train_docs)} training documents → "
            f"{len(train_data)} sequences of ≤{cfg.block_size} tokens; {len(valid_docs)} held out")

    evaluate = evaluator(cfg, batches) if batches else None
    metrics: dict = {"objective": cfg.objective, "documents": {"train": len(train_docs), "valid": len(valid_docs)},
                     "sequences": len(train_data), "parameters": n_params}
    if evaluate and not cfg.resume:
        device = pick_device(cfg.cpu)
        metrics["valid_before"] = evaluate(model.to(device), device, contextlib.nullcontext)
        run.say("held-out before training: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics["valid_before"].items()))
    lengths = np.array([len(train_data[i]["input_ids"]) for i in range(len(train_data))])
    job = native.Job(train=train_data, lengths=lengths, collate=collate, unit="sequences",
                     save=lambda m, folder: (m.save_pretrained(folder), tokenizer.save_pretrained(folder)),
                     evaluate=evaluate, accuracy=lambda out, batch: token_accuracy(cfg.objective, out, batch),
                     on_epoch=collate.set_epoch)
    state = native.train(cfg, model, job, run)
    if state.epochs_log:
        plots.training_curves(state.epochs_log, run.dir / "training_curves.png")
    metrics.update(best_epoch=state.best_epoch, stopped_early=state.stopped_early, epochs=state.epochs_log,
                   train_loop_seconds=round(state.train_seconds, 2),
                   train_sequences_per_second=round(state.samples / max(state.train_seconds, 1e-9), 3),
                   total_seconds=round(time.time() - t0, 2))
    if state.epochs_log and "valid_loss" in state.epochs_log[-1]:
        best = state.epochs_log[(state.best_epoch or len(state.epochs_log)) - 1]
        metrics["valid_after"] = {k[6:]: v for k, v in best.items() if k.startswith("valid_")}
        run.say("held-out after training: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics["valid_after"].items()))
    run.write_metrics(metrics)
    return PretrainResult(run.dir, run.model_dir, metrics)
