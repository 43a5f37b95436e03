"""`warmstart pretrain`: self-supervised (continued) pre-training on raw text.

Corpus → documents → objective (clm, mlm, mlm+nsp, denoise: warmstart.objectives) → the native
engine (the same loop, checkpoints and --resume as `finetune`) → a run folder whose model/ plugs
into the other commands: a clm model into `generate`, an mlm encoder into `finetune`. clm and mlm
stream the corpus into a cached token file (objectives/stream.py), so memory stays bounded whatever
its size."""

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

from warmstart import distributed, objectives, plots
from warmstart.callbacks import for_training
from warmstart.config import (
    Choice,
    PretrainConfig,
    absolute_paths,
    make,
    notes,
    refuse_inapplicable,
    settle,
    to_dict,
)
from warmstart.data.corpus import (
    StreamedSplit,
    corpus_source,
    held_out,
    read_corpus,
    split_stream,
)
from warmstart.errors import UserError
from warmstart.files import atomic_write_json
from warmstart.hub import card
from warmstart.models import (
    dropout_of,
    load_config,
    load_options,
    load_tokenizer,
    max_length_of,
    pick_device,
    resolve,
    scratch,
    set_dropout,
)
from warmstart.models.download import pin
from warmstart.objectives import clm, mlm, separator_id, stream
from warmstart.objectives.denoise import DenoisingCollator
from warmstart.objectives.nsp import NSPCollator
from warmstart.progress import progress_bar
from warmstart.runs import Run, prepare_run_folder
from warmstart.training import native
from warmstart.training.common import Job, choose_precision

AUTO = {
    "AutoModelForCausalLM": AutoModelForCausalLM,
    "AutoModelForMaskedLM": AutoModelForMaskedLM,
    "AutoModelForPreTraining": AutoModelForPreTraining,
    "AutoModelForSeq2SeqLM": AutoModelForSeq2SeqLM,
}
TOKENIZER_KIND = {"gpt2": "bpe", "bart": "bpe", "bert": "wordpiece"}
TOKENIZER_SAMPLE_CHARS = 100_000_000


@dataclass
class PretrainResult:
    run_dir: Path
    model_dir: Path
    metrics: dict


class SeededBatches:
    """Wraps a masking/noising collator so that each batch's random draws depend only on (seed,
    epoch, the batch's tokens) — not on how many batches came before. Accelerate's loader collates
    one batch ahead, so a generator saved in a checkpoint would already have drawn the next batch's
    masks; with per-batch seeds a resumed run draws exactly the masks an uninterrupted one does. The
    epoch keeps masking dynamic: the same block gets new masks in every epoch (RoBERTa's dynamic
    masking)."""

    def __init__(self, collate, seed: int):
        self.collate, self.seed, self.epoch = collate, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, items: list[dict]) -> dict:
        content = zlib.crc32(
            np.concatenate([np.asarray(it["input_ids"], dtype=np.int64) for it in items]).tobytes()
        )
        seed = int(np.random.SeedSequence([self.seed, self.epoch, content]).generate_state(1)[0])
        inner = self.collate.mlm if isinstance(self.collate, NSPCollator) else self.collate
        if isinstance(inner, DenoisingCollator):
            inner.rng = np.random.default_rng(seed)
        elif hasattr(inner, "generator"):
            inner.generator = torch.Generator().manual_seed(seed)
            inner._generator_pid = os.getpid()  # else transformers re-creates it from its own seed
        return self.collate(items)


def split_documents(cfg: PretrainConfig) -> tuple[list[str], list[str]]:
    source = corpus_source(cfg)
    if not isinstance(source, str):  # a dataset: its validation split, or held-out rows
        split = split_stream(
            source, cfg.valid, cfg.text_column, cfg.limit, cfg.valid_fraction, cfg.seed
        )
        return list(split.train()), split.valid
    docs = read_corpus(cfg.data, cfg.text_column, cfg.limit)
    if cfg.valid:
        return docs, read_corpus(cfg.valid, cfg.text_column, cfg.limit)
    held = held_out(len(docs), cfg.valid_fraction, cfg.seed, cfg.data)
    return [d for i, d in enumerate(docs) if i not in held], [
        d for i, d in enumerate(docs) if i in held
    ]


def streamed(cfg: PretrainConfig) -> bool:
    """clm and mlm train on packed blocks of a token stream, which can live on disk
    (objectives.stream); the sentence-aware objectives (mlm+nsp, denoise) and whole-word masking
    need documents in memory."""
    return cfg.objective in ("clm", "mlm") and not cfg.whole_word_mask


def sample(docs, chars: int = TOKENIZER_SAMPLE_CHARS) -> list[str]:
    """The first documents, up to ``chars`` characters: what a from-scratch tokenizer learns
    from."""
    out, n = [], 0
    for d in docs:
        out.append(d)
        n += len(d)
        if n >= chars:
            break
    return out


def stream_dataset(cfg: PretrainConfig, tokenizer, split: StreamedSplit, run: Run):
    """Training blocks memory-mapped from the token cache (written once by the main process), and
    the objective's collator."""
    if cfg.objective == "mlm":
        mlm.check_tokenizer(tokenizer)
        sep = separator_id(tokenizer)
        cls_sep = (tokenizer.cls_token_id, tokenizer.sep_token_id)
        wrap = cls_sep if None not in cls_sep else None
    else:
        sep = (
            tokenizer.eos_token_id
            if tokenizer.eos_token_id is not None
            else separator_id(tokenizer)
        )
        wrap = None
    key = stream.cache_key(
        tokenizer,
        sep,
        data=split.fingerprint,
        text_column=cfg.text_column,
        limit=cfg.limit,
        held=split.held,
    )
    # A dataset under several processes: each tokenises its shard of the rows (data.corpus).
    sharded = split.shard is not None and distributed.is_distributed()
    fresh = (sharded or distributed.is_main()) and stream.cached(key) is None
    fresh = distributed.broadcast(fresh, cfg.cpu) if sharded else fresh
    if (
        fresh
        # the bar shows only if tokenising takes a while (a small corpus errs with nothing printed
        # before)
    ):
        with progress_bar(
            total=split.n_train,
            desc="tokenise",
            unit="doc",
            enabled=cfg.progress and distributed.is_main(),
            delay=2,
        ) as bar:
            if sharded:
                rows = split.shard(distributed.rank(), distributed.world_size())
                stream.write_sharded(tokenizer, rows, sep, key, progress=bar.update)
            else:
                stream.write_tokens(tokenizer, split.train(), sep, key, progress=bar.update)
    distributed.barrier()
    tokens = stream.cached(key)
    data = stream.StreamBlocks(
        tokens.ids, cfg.block_size, wrap, labels=cfg.objective == "clm", source=f"file '{cfg.data}'"
    )
    run.say(
        f"{'tokenised' if fresh else 'tokens from the cache'}: {tokens.documents} documents,"
        f" {tokens.tokens} tokens in {tokens.path}" + (" (kept for later runs)" if fresh else "")
    )
    if cfg.objective == "clm":
        return data, clm.collator()
    return data, mlm.collator(
        tokenizer, whole_word_mask=False, mlm_probability=cfg.mlm_probability, seed=cfg.seed
    )


def load_model(cfg: PretrainConfig, objective: objectives.Objective, train_docs: list[str]):
    """A fresh model from a preset + a tokenizer trained on the corpus, or a checkpoint to
    continue."""
    auto = AUTO[objective.model_class]
    if cfg.from_scratch:
        # Under accelerate launch the main process trains it and the others receive it: every
        # process must hold the very same vocabulary (training is not guaranteed to break ties alike
        # everywhere).
        tokenizer = (
            scratch.train_tokenizer(
                TOKENIZER_KIND[objective.arch],
                train_docs,
                vocab_size=cfg.vocab_size,
                max_length=cfg.block_size,
                arch=objective.arch,
            )
            if distributed.is_main()
            else None
        )
        tokenizer = distributed.broadcast(tokenizer, cfg.cpu)
        config = scratch.preset(objective.arch, cfg.size, tokenizer, cfg.block_size)
        set_dropout(config, dropout_of(cfg))
        return auto.from_config(config), tokenizer
    path = resolve(cfg.model, hub=cfg)
    tokenizer = load_tokenizer(path)
    config = load_config(path)
    set_dropout(config, dropout_of(cfg))  # before the model is built: its layers copy the rates
    try:
        model = auto.from_pretrained(path, config=config, **load_options(path))
    except ValueError:
        kind = getattr(load_config(path), "model_type", "?")
        raise UserError(
            f"objective '{objective.name}' needs a model that {auto.__name__} supports "
            f"(e.g. {objective.arch}); '{cfg.model}' is a {kind} model"
        ) from None
    if (
        objective.name == "mlm+nsp"
        and "next_sentence_label" not in inspect.signature(model.forward).parameters
    ):
        # AutoModelForPreTraining maps e.g. DistilBERT to a plain masked LM, without a next-sentence
        # head.
        raise UserError(
            f"objective 'mlm+nsp' needs a model that has a next-sentence head (BERT); '{cfg.model}'"
            f" is a {model.config.model_type} model: use --objective mlm"
        )
    limit = max_length_of(tokenizer, model.config, None)
    if cfg.block_size > limit:
        raise UserError(
            f"--block-size {cfg.block_size} is more than this model's limit of {limit} tokens"
        )
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
    """Held-out loss, perplexity (exp of the mean token loss) and token accuracy on fixed batches:
    the masks and noise of the valid set are drawn once, so epochs compare on the same task."""

    def evaluate(model, device, autocast) -> dict:
        model.eval()
        loss_sum = correct = counted = nsp_correct = nsp_seen = 0.0
        with torch.inference_mode():
            for i in distributed.shard(
                len(batches)
            ):  # under accelerate launch: this process's batches
                batch = batches[i]
                batch = {k: v.to(device) for k, v in batch.items()}
                with autocast():
                    out = model(**batch)
                c, n = token_accuracy(cfg.objective, out, batch)
                if (
                    cfg.objective == "mlm+nsp"
                ):  # BertForPreTraining's loss adds the NSP loss; keep the MLM part
                    logits = _logits(out).float()
                    mlm_loss = torch.nn.functional.cross_entropy(
                        logits.view(-1, logits.shape[-1]),
                        batch["labels"].view(-1),
                        ignore_index=-100,
                    )
                    loss_sum += mlm_loss.item() * n
                    nsp = out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]
                    nsp_correct, nsp_seen = nsp_correct + int(nsp.sum()), nsp_seen + len(nsp)
                else:
                    loss_sum += out.loss.item() * n  # the models average over predicted tokens
                correct, counted = correct + c, counted + n
        loss_sum, correct, counted, nsp_correct, nsp_seen = distributed.sum_all(
            [loss_sum, correct, counted, nsp_correct, nsp_seen], cfg.cpu
        )
        loss = loss_sum / max(counted, 1)
        metrics = {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50)),
            "accuracy": correct / max(counted, 1),
        }
        if nsp_seen:
            metrics["nsp_accuracy"] = nsp_correct / nsp_seen
        return metrics

    return evaluate


def valid_before(cfg: PretrainConfig, run: Run, model, evaluate) -> dict:
    """The held-out metrics of the model before training, measured once per run and kept in the run
    folder (valid_before.json): a resumed run reports the figure its start measured."""
    path = run.dir / "valid_before.json"
    if cfg.resume and path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    device = pick_device(cfg.cpu)
    metrics = evaluate(
        model.to(device), device, contextlib.nullcontext
    )  # every process: a collective
    if run.main:
        atomic_write_json(path, metrics)
    run.say("held-out before training: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return metrics


def pretrain(config: PretrainConfig | None = None, **kwargs) -> PretrainResult:
    """Pre-train (or continue pre-training) on a raw-text corpus; returns the run folder and
    metrics."""
    t0 = time.time()
    cfg = absolute_paths(make(PretrainConfig, config, kwargs), "data", "valid", "model")
    objective = objectives.objective(cfg.objective)
    if not cfg.data:
        raise UserError("no corpus: pass --data FILE or FOLDER")
    if not cfg.from_scratch and not cfg.model:
        raise UserError(
            "pass --model to continue pre-training a model, or --from-scratch for a new one"
        )
    if cfg.from_scratch and cfg.model:
        raise UserError(
            "--from-scratch builds a new model and --model continues one: give one of them"
        )
    if not cfg.from_scratch:
        refuse_inapplicable(
            cfg,
            ("size", "vocab_size"),
            "continued pre-training (they shape a --from-scratch model)",
        )
    if cfg.objective not in ("mlm", "mlm+nsp"):
        refuse_inapplicable(
            cfg, ("whole_word_mask", "mlm_probability"), f"--objective {cfg.objective}"
        )
    # A Hugging Face --model is fetched now if it must be and pinned to one commit for the run.
    cfg = settle(cfg, pin(cfg))
    run = Run(cfg.out)
    # The engine's subscribers: run log, bar, early stopping, trackers (one not installed fails here).
    callbacks = for_training(cfg, run)
    if streamed(cfg):  # corpora larger than memory: the training documents are only ever streamed
        split = split_stream(
            corpus_source(cfg), cfg.valid, cfg.text_column, cfg.limit, cfg.valid_fraction, cfg.seed
        )
        n_train, valid_docs = split.n_train, split.valid
    else:
        train_docs, valid_docs = split_documents(cfg)
        n_train = len(train_docs)
    prepare_run_folder(run, to_dict(cfg), cfg.resume, cfg.overwrite)
    if cfg.resume and run.finished():
        run.say(f"run in '{run.dir}' has already finished; nothing to resume")
        return PretrainResult(
            run.dir, run.model_dir, json.loads((run.dir / "metrics.json").read_text())
        )

    set_seed(cfg.seed)
    if streamed(cfg):
        # A from-scratch tokenizer learns from the first 100 MB of text (only the main process
        # trains one).
        model, tokenizer = load_model(
            cfg,
            objective,
            sample(split.train()) if cfg.from_scratch and distributed.is_main() else [],
        )
    else:
        model, tokenizer = load_model(cfg, objective, train_docs)
    common = dict(
        seed=cfg.seed, whole_word_mask=cfg.whole_word_mask, mlm_probability=cfg.mlm_probability
    )
    if streamed(cfg):
        train_data, collate = stream_dataset(cfg, tokenizer, split, run)
    else:
        train_data, collate = objectives.prepare(
            cfg.objective,
            tokenizer,
            train_docs,
            cfg.block_size,
            source=f"file '{cfg.data}'",
            **common,
        )
    collate = SeededBatches(collate, cfg.seed)
    batches: list[dict] = []
    if valid_docs:
        valid_data, valid_collate = objectives.prepare(
            cfg.objective,
            tokenizer,
            valid_docs,
            cfg.block_size,
            source=f"the held-out part of '{cfg.valid or cfg.data}'",
            **{**common, "seed": cfg.seed + 1},
        )
        bs = cfg.eval_batch_size or 2 * cfg.batch_size
        batches = [
            valid_collate([valid_data[i] for i in range(s, min(s + bs, len(valid_data)))])
            for s in range(0, len(valid_data), bs)
        ]
    cfg = settle(
        cfg,
        eval_batch_size=cfg.eval_batch_size
        or Choice(2 * cfg.batch_size, "twice the training batch"),
    )
    lengths = (
        np.full(len(train_data), cfg.block_size)
        if hasattr(train_data, "block_size")
        else np.array([len(train_data[i]["input_ids"]) for i in range(len(train_data))])
    )
    # What the machine decides: precision and attention kernel, measured on this run's batches.
    chosen = choose_precision(cfg, model, lengths, run)
    cfg = settle(cfg, chosen.choices(cfg))
    choice = chosen.measured
    head = [choice.describe()] if choice else []
    run.write_config(
        {k: v for k, v in to_dict(cfg).items() if k not in ("resume", "overwrite")},
        notes=head + notes(cfg, skip=("precision", "attn_implementation") if head else ()),
    )
    n_params = sum(p.numel() for p in model.parameters())
    run.say(
        f"{cfg.objective}: {objective.description}; model {type(model).__name__}"
        f" ({n_params / 1e6:.1f}M parameters{', from scratch' if cfg.from_scratch else ''});"
        f" {n_train} training documents → {len(train_data)} sequences of ≤{cfg.block_size} tokens;"
        f" {len(valid_docs)} held out"
    )

    evaluate = evaluator(cfg, batches) if batches else None
    metrics: dict = {
        "objective": cfg.objective,
        "documents": {"train": n_train, "valid": len(valid_docs)},
        "sequences": len(train_data),
        "parameters": n_params,
    }
    if evaluate:
        metrics["valid_before"] = valid_before(cfg, run, model, evaluate)
    job = Job(
        train=train_data,
        lengths=lengths,
        collate=collate,
        unit="sequences",
        save=lambda m, folder, weights=None: (
            m.save_pretrained(folder, state_dict=weights),
            tokenizer.save_pretrained(folder),
        ),
        evaluate=evaluate,
        accuracy=lambda out, batch: token_accuracy(cfg.objective, out, batch),
        on_epoch=collate.set_epoch,
    )
    state = native.train(cfg, model, job, run, callbacks)
    if state.epochs_log and run.main:
        plots.training_curves(state.epochs_log, run.dir / "training_curves.png")
    metrics.update(
        best_epoch=state.best_epoch,
        stopped_early=state.stopped_early,
        epochs=state.epochs_log,
        train_loop_seconds=round(state.train_seconds, 2),
        train_sequences_per_second=round(state.samples / max(state.train_seconds, 1e-9), 3),
        total_seconds=round(time.time() - t0, 2),
        precision=cfg.precision,
        **({"precision_auto": choice.record()} if choice else {}),
    )
    if state.epochs_log and "valid_loss" in state.epochs_log[-1]:
        best = state.epochs_log[(state.best_epoch or len(state.epochs_log)) - 1]
        metrics["valid_after"] = {k[6:]: v for k, v in best.items() if k.startswith("valid_")}
        run.say(
            "held-out after training: "
            + ", ".join(f"{k} {v:.4f}" for k, v in metrics["valid_after"].items())
        )
    run.write_metrics(metrics)
    card.write_run_card(run)  # model/README.md, before on_run_end: the trackers upload it
    callbacks.on_run_end(metrics, run.dir)
    return PretrainResult(run.dir, run.model_dir, metrics)


def report(cfg: PretrainConfig, result: PretrainResult) -> str:
    lines = [f"run folder: {result.run_dir}"]
    for when in ("valid_before", "valid_after"):
        if when in result.metrics:
            lines.append(
                f"held-out {when[6:]}: "
                + ", ".join(f"{k} {v:.4f}" for k, v in result.metrics[when].items())
            )
    return "\n".join(lines) + "\n"
