"""What the two text-to-text kinds share (seq2seq: an encoder-decoder; causal-lm: an instruction-tuned
causal LM): a saved model writes a target for each source and is scored on what it wrote — the
test part of a run and `evaluate` through the same ``score_texts`` — and `predict` writes outputs."""

from __future__ import annotations

import time
from pathlib import Path

from warmstart import distributed
from warmstart.config import EvaluateConfig, PredictConfig, given_flags, refuse_inapplicable
from warmstart.data.hub import evaluated
from warmstart.data.pairs import prediction_lines, read_pairs
from warmstart.data.texts import read_texts
from warmstart.errors import UserError
from warmstart.files import atomic_write_text
from warmstart.inference.seq2seq import InstructionWriter, TextToText, Written, load_writer
from warmstart.kinds.base import Prediction, TaskKind
from warmstart.kinds.sequence import SEQUENCE_ONLY, TAG_ONLY
from warmstart.metrics import format_text_metrics, text_metric_names, text_metrics

# evaluate's options of the other kinds, refused for a text-to-text model.
NOT_TEXT_TO_TEXT = (*SEQUENCE_ONLY, "stride", *TAG_ONLY)


def score_texts(
    writer: TextToText | InstructionWriter,
    sources: list[str],
    refs: list[list[str]] | list[str],
    names: list[str],
    max_new_tokens: int | None,
    num_beams: int,
    batch_size: int | None,
    progress: bool,
) -> tuple[dict, list[Written]]:
    """The saved model writes a target for each source; the metrics of what it wrote (several
    references per source: scored against all), how many outputs, how many cut at the limit."""
    written = writer.write(sources, max_new_tokens, num_beams, batch_size, progress)
    metrics = {
        **text_metrics([w.text for w in written], refs, names),
        "n": len(sources),
        "cut_at_limit": sum(w.finish_reason == "length" for w in written),
    }
    return metrics, written


class TextToTextKind(TaskKind):
    """A kind whose model writes text: read back by evaluate and predict alike."""

    @classmethod
    def report(cls, result_dir: Path, metrics: dict) -> str:
        test = metrics.get("test") or metrics.get("valid_best")
        where = "test" if "test" in metrics else "valid"
        return f"run folder: {result_dir}\n" + (
            f"{where} {format_text_metrics(test)}\n" if test else ""
        )

    @classmethod
    def evaluate(cls, cfg: EvaluateConfig, path: str, model_kind: str) -> dict:
        """The model writes a target for every source of --data; the metrics of those texts, and
        each pair with its output in --predictions (default: beside --out, as
        <name>.predictions.jsonl)."""
        refuse = given_flags(cfg, NOT_TEXT_TO_TEXT)
        if refuse:
            raise UserError(
                f"{', '.join(refuse)} do not apply to a text-to-text model: it reads"
                " --source-column and --target-column"
            )
        if distributed.is_distributed():
            raise UserError("evaluate with a text-to-text model runs in one process")
        names = text_metric_names(cfg.metrics)
        # A source given twice (a word with two pronunciations) is written once and right when it
        # is either target.
        pairs, refs = read_pairs(
            evaluated(cfg, cfg.data), cfg.source_column, cfg.target_column, limit=cfg.limit
        ).distinct()
        writer = load_writer(cfg.model, cfg.cpu, cfg.precision, cfg.max_length, hub=cfg)
        t0 = time.time()
        metrics, written = score_texts(
            writer,
            pairs.sources,
            refs,
            names,
            cfg.max_new_tokens,
            cfg.num_beams,
            cfg.batch_size,
            cfg.progress,
        )
        seconds = time.time() - t0
        metrics.update(
            max_new_tokens=cfg.max_new_tokens or writer.max_new_tokens,
            num_beams=cfg.num_beams,
            model=writer.path,
            data=str(Path(cfg.data).resolve()),
            seconds=round(seconds, 2),
            pairs_per_s=round(len(pairs) / max(seconds, 1e-9), 2),
        )
        out = Path(cfg.out) if cfg.out else None
        where = Path(cfg.predictions) if cfg.predictions else None
        where = where or (out.with_suffix(".predictions.jsonl") if out else None)
        if where is not None:
            texts, reasons = [w.text for w in written], [w.finish_reason for w in written]
            atomic_write_text(where, prediction_lines(pairs, texts, reasons, refs))
            metrics["predictions"] = str(where)
        return metrics

    @classmethod
    def evaluate_report(cls, metrics: dict) -> str:
        return (
            format_text_metrics(metrics)
            + f"\n{metrics['cut_at_limit']} output(s) stopped at {metrics['max_new_tokens']} new"
            " tokens"
            + (
                f"\npredictions written to {metrics['predictions']}"
                if "predictions" in metrics
                else ""
            )
        )

    @classmethod
    def predict(cls, cfg: PredictConfig, path: str, model_kind: str) -> list[Prediction]:
        """An encoder-decoder, or a causal LM from `finetune --task causal-lm` prompted as it was
        trained, writes an output for every text."""
        if cfg.format == "conll":
            raise UserError("--format conll is for taggers (models from `finetune --task tokens`)")
        refuse_inapplicable(
            cfg,
            ("aggregation", "long_text", "chunk_aggregation", "stride", "text_pair_column"),
            "a text-to-text model (it reads one text and writes another)",
        )
        if distributed.is_distributed():
            raise UserError("predict with a text-to-text model runs in one process")
        ex = read_texts(cfg.texts, evaluated(cfg, cfg.input), cfg.text_column, limit=cfg.limit)
        writer = load_writer(cfg.model, cfg.cpu, cfg.precision, cfg.max_length, hub=cfg)
        written = writer.write(
            ex.texts, cfg.max_new_tokens, cfg.num_beams, cfg.batch_size, cfg.progress
        )
        return [Prediction(text, output=w.text) for text, w in zip(ex.texts, written)]
