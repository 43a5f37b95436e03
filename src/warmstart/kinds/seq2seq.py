"""Text to text (`--task seq2seq`): an encoder-decoder learns to write each pair's target from its
source (translation, spelling to phonemes, summaries).

Sources and targets are tokenised once (``text_target``), padded per batch (labels with -100, which
the loss skips), and batched by source length. Each epoch the model writes the valid targets itself
(greedy or beam search, with an explicit token limit) and is scored on what it wrote
(metrics.text_metrics): teacher-forced loss alone hides a model that loops or stops early."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from transformers import DataCollatorForSeq2Seq

from warmstart import distributed
from warmstart.config import Choice, FinetuneConfig, given_flags, refuse_inapplicable
from warmstart.data.batching import IGNORE, Encoded, pad_multiple
from warmstart.data.pairs import Pairs, prediction_lines, read_pairs
from warmstart.data.tables import load_splits
from warmstart.errors import UserError
from warmstart.files import atomic_write_text
from warmstart.inference.seq2seq import (
    TextToText,
    Written,
    new_token_limit,
    target_loss,
    write_texts,
)
from warmstart.kinds.base import FOR_CAUSAL_LM, ModelKind
from warmstart.kinds.texts import TextToTextKind, score_texts
from warmstart.metrics import format_text_metrics, text_metric_names, text_metrics
from warmstart.models.registry import dropout_of, load_tokenizer, resolve
from warmstart.models.seq2seq import load_seq2seq, new_bart
from warmstart.runs import Run
from warmstart.training.common import Job, smoothed_loss, token_accuracy, token_loss

# The default limit on new tokens: this many times the longest training target, so that a valid text
# somewhat longer than any seen can still be written whole (a run that ends every text at the limit
# shows it in its predictions' finish reasons) ...
NEW_TOKENS_FACTOR = 1.5
# ... and never more than this, however long the targets: a model that loops would write that much
# per text.
NEW_TOKENS_CAP = 1024
# Accelerate warns on every checkpoint of a model with tied embeddings (BART, T5: one matrix for the
# encoder's and decoder's inputs and the output layer) that it saved the matrix once; loading ties
# them again, as resume shows.
logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
OTHER_TASKS = (
    "text_column",
    "text_pair_column",
    "label_column",
    "problem",
    "label_separator",
    "class_weights",
    "sampler",
    "long_text",
    "stride",
    "chunk_aggregation",
    "tag_column",
    "base_tags",
    "label_all_subtokens",
    "label_names",
    "head_lr",
)
SCRATCH_ONLY = ("tokenizer", "size", "vocab_size")


def records(part: Pairs, written: list[Written], refs: list[list[str]] | None) -> str:
    return prediction_lines(
        part, [w.text for w in written], [w.finish_reason for w in written], refs
    )


class GeneratedMetrics:
    """The Trainer's `compute_metrics` (with `batch_eval_metrics=True`): the Trainer's own pass over
    the valid batches gives the loss; once it has seen them all, the model writes the valid targets
    and they are scored, as the native engine's evaluation does."""

    def __init__(self, score):
        self.score = score

    def __call__(self, pred, compute_result: bool) -> dict | None:
        return self.score() if compute_result else None


class Seq2Seq(TextToTextKind):
    task = "seq2seq"
    not_mine = (FOR_CAUSAL_LM,)
    reads = {"text-to-text": ModelKind("a text-to-text model", ("generate",))}

    def __init__(self, cfg: FinetuneConfig):
        refuse_inapplicable(
            cfg, OTHER_TASKS, "--task seq2seq (it reads --source-column and --target-column)"
        )
        if cfg.from_scratch and given_flags(cfg, ("model",)):
            raise UserError(
                "--from-scratch builds a new BART and --model names one to fine-tune: give one of"
                " them"
            )
        given = given_flags(cfg, SCRATCH_ONLY)
        if given and not cfg.from_scratch:
            raise UserError(
                f"{', '.join(given)} only apply with --from-scratch (a pre-trained model brings its"
                " own tokenizer and size)"
            )
        self.metrics = text_metric_names(cfg.metrics)
        best = cfg.metric_for_best or ("chrf" if "chrf" in self.metrics else self.metrics[0])
        if best not in ("loss", *self.metrics):
            raise UserError(
                f"--metric-for-best {best} is not measured; choose loss or one of --metrics "
                f"({', '.join(self.metrics)})"
            )
        self.best = best
        self.parts: dict[str, Pairs] = load_splits(
            cfg,
            read=lambda path, limit: read_pairs(path, cfg.source_column, cfg.target_column, limit),
        )
        self.num_beams = cfg.num_beams
        self.model: torch.nn.Module | None = None
        self.start: int | None = None
        self.cut: dict[str, int] = {}

    def choices(self, cfg: FinetuneConfig) -> dict[str, Choice]:
        # A model from scratch learns everything from these pairs: BART pre-training's 5e-4
        # (pretrain's default) rather than fine-tuning's 5e-5, and more epochs.
        why = (
            "a model from scratch (BART pre-training's rate)" if cfg.from_scratch else "fine-tuning"
        )
        made = {
            "metric_for_best": Choice(
                self.best, "chrF where it is measured, else the first metric"
            ),
            "lr": Choice(5e-4 if cfg.from_scratch else 5e-5, f"{why}'s default"),
            "epochs": Choice(10.0 if cfg.from_scratch else 3.0, f"{why}'s default"),
        }
        return {k: c for k, c in made.items() if getattr(cfg, k) is None}

    def describe(self) -> str:
        part = self.parts["train"]
        new = getattr(getattr(self.model, "generation_config", None), "max_new_tokens", None)
        cut = (
            "; "
            + ", ".join(f"{r} {n} target(s) cut at --max-length" for r, n in self.cut.items() if n)
            if any(self.cut.values())
            else ""
        )
        return (
            f"text to text, '{part.source_column}' → '{part.target_column}'; valid texts written"
            f" with {'greedy decoding' if self.num_beams == 1 else f'{self.num_beams} beams'}, at"
            f" most {new} new tokens, scored by {', '.join(self.metrics)}{cut}"
        )

    def load(self, cfg: FinetuneConfig) -> tuple[str, torch.nn.Module, object]:
        """(what the model is, for the log; the model; its tokenizer): a new BART with
        --from-scratch, else --model as an encoder-decoder or warm-started from an encoder."""
        if cfg.from_scratch:
            train = self.parts["train"]
            model, tokenizer = new_bart(
                train.sources + (train.targets or []),
                cfg.tokenizer,
                cfg.size,
                cfg.vocab_size,
                cfg.max_length or 512,
                dropout_of(cfg),
            )
            where = f"a new {cfg.size} BART, {cfg.tokenizer} tokenizer of {len(tokenizer)} tokens"
        else:
            path = resolve(cfg.model, hub=cfg)
            tokenizer = load_tokenizer(path)
            model = load_seq2seq(path, cfg.model, tokenizer, dropout_of(cfg))
            where = f"{cfg.model} ({path})"
        self.model, self.start = model, model.config.decoder_start_token_id
        return where, model, tokenizer

    load_model_and_tokenizer = load  # its name before the kinds' contract named it load

    def load_model(self, path: str, cfg: FinetuneConfig) -> torch.nn.Module:
        self.model = load_seq2seq(path, cfg.model, load_tokenizer(path), dropout_of(cfg))
        self.start = self.model.config.decoder_start_token_id
        return self.model

    def encode(
        self, tokenizer, role: str, max_length: int, cfg: FinetuneConfig | None = None
    ) -> Encoded:
        part = self.parts[role]
        enc = tokenizer(
            part.sources,
            text_target=part.targets,
            truncation=True,
            max_length=max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        labels = enc["labels"]
        self.cut[role] = sum(len(x) >= max_length for x in labels)
        # A tokenizer that frames texts with the decoder's start token ([CLS] for a warm-started
        # BERT2BERT) would have the decoder predict its own start: the model already begins every
        # target with it.
        labels = [x[1:] if x and x[0] == self.start else x for x in labels]
        if role == "train" and self.model is not None:
            # Saved in the model's generation_config.json: evaluate, predict, generate and plain
            # transformers' generate() default to it.
            longest = max(len(x) for x in labels)
            self.model.generation_config.max_new_tokens = new_token_limit(
                self.model.config,
                (
                    cfg.max_new_tokens
                    if cfg and cfg.max_new_tokens
                    else max(1, min(math.ceil(NEW_TOKENS_FACTOR * longest), NEW_TOKENS_CAP))
                ),
            )
        return Encoded({"input_ids": enc["input_ids"], "labels": labels})

    def job(self, cfg: FinetuneConfig, tokenizer, data: dict[str, Encoded]) -> Job:
        assert self.model is not None
        collate = DataCollatorForSeq2Seq(
            tokenizer,
            model=None,
            label_pad_token_id=IGNORE,
            pad_to_multiple_of=pad_multiple(cfg.cpu),
            return_tensors="pt",
        )
        valid = data.get("valid")
        run_dir = Path(cfg.out)

        def score(model, device, autocast) -> dict:
            part, refs = self.parts["valid"].take(slice(0, cfg.eval_samples)).distinct()
            written = write_texts(
                model,
                tokenizer,
                part.sources,
                cfg.max_length,
                self.model.generation_config.max_new_tokens,
                cfg.num_beams,
                cfg.eval_batch_size,
                device,
                autocast,
                progress=cfg.progress and distributed.is_main(),
                desc="valid",
            )
            if (
                distributed.is_main() and run_dir.is_dir()
            ):  # the latest epoch's, to look at while it trains
                atomic_write_text(run_dir / "valid_predictions.jsonl", records(part, written, refs))
            return text_metrics([w.text for w in written], refs, self.metrics)

        def evaluate(model, device, autocast) -> dict:
            return {
                "loss": target_loss(model, valid, cfg.eval_batch_size, collate, device, autocast),
                **score(model, device, autocast),
            }

        def trainer_score() -> dict:
            model = self.model
            return score(model, next(model.parameters()).device, None)

        def save(model, folder: Path, weights: dict | None = None) -> None:
            model.save_pretrained(folder, state_dict=weights)
            tokenizer.save_pretrained(folder)

        return Job(
            train=data["train"],
            lengths=data["train"].lengths,
            collate=collate,
            save=save,
            evaluate=evaluate if valid is not None else None,
            accuracy=token_accuracy,
            valid=valid,
            trainer_metrics=lambda: GeneratedMetrics(trainer_score),
            metric_names=self.metrics,
            batch_loss=token_loss,
            tokenizer=tokenizer,
            loss=smoothed_loss(cfg.label_smoothing),
            unit="pairs",
            labels_make_inputs=True,
        )

    def written(
        self, cfg: FinetuneConfig, model_dir: Path, part: Pairs, run: Run
    ) -> tuple[dict, float]:
        """The saved model (reloaded as evaluate loads it) writes ``part``'s targets: its metrics,
        and the pairs with predictions in predictions.jsonl (a source given twice is written once,
        scored against both targets)."""
        part, refs = part.distinct()
        t = time.time()
        writer = TextToText.load(str(model_dir), cfg.cpu, "fp32", cfg.max_length)
        metrics, written = score_texts(
            writer,
            part.sources,
            refs,
            self.metrics,
            cfg.max_new_tokens,
            cfg.num_beams,
            cfg.eval_batch_size,
            cfg.progress and run.main,
        )
        if run.main:
            atomic_write_text(run.dir / "predictions.jsonl", records(part, written, refs))
        return metrics, round(time.time() - t, 2)

    def finish(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        """Without a test part, predictions.jsonl holds the best model's valid outputs."""
        if "test" in self.parts or "valid" not in self.parts:
            return {}
        metrics, _ = self.written(
            cfg, model_dir, self.parts["valid"].take(slice(0, cfg.eval_samples)), run
        )
        return {"valid_best": metrics}

    def test(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        metrics, seconds = self.written(cfg, model_dir, self.parts["test"], run)
        run.say("test set: " + format_text_metrics(metrics))
        return {"test": metrics, "test_seconds": seconds}

    def summary(self, metrics: dict) -> str:
        return f"test {format_text_metrics(metrics['test'])}"

    @classmethod
    def serve(cls, path: str, source: str, model_kind: str, options: dict) -> dict:
        writer = TextToText.load(
            path, options.get("cpu", False), max_length=options.get("max_length")
        )
        return {"text_to_text": writer}
