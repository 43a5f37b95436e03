"""Token classification: a tag per word (named entities, part of speech), a classification head on
every token.

Words are aligned to sub-tokens with the fast tokenizer's word ids and long sentences are cut into
overlapping windows (data.wordpieces); the loss reads each word's first sub-token and metrics are
counted on words, never on sub-words (metrics.tagging_metrics)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from transformers import DataCollatorForTokenClassification

from warmstart import distributed
from warmstart.config import (
    Choice,
    EvaluateConfig,
    FinetuneConfig,
    PredictConfig,
    given_flags,
    refuse_inapplicable,
)
from warmstart.data.batching import IGNORE, Encoded, pad_multiple
from warmstart.data.hub import evaluated
from warmstart.data.output import format_tagged
from warmstart.data.tables import load_splits
from warmstart.data.tagged import (
    Sentences,
    check_sentences,
    entity_types,
    orphan_inside_tags,
    read_sentences,
    scheme_of,
)
from warmstart.data.texts import read_texts, read_words
from warmstart.data.wordpieces import WordWindows, encode_words
from warmstart.errors import UserError
from warmstart.inference.tagger import Tagged, Tagger
from warmstart.kinds.base import FOR_CAUSAL_LM, FOR_TEXT_TO_TEXT, ModelKind, TaskKind, valid_logits
from warmstart.kinds.sequence import SEQUENCE_ONLY, refuse_pair_options
from warmstart.metrics import format_tagging_table, softmax, tagging_metrics
from warmstart.models.classifier import load_classifier
from warmstart.models.registry import dropout_of
from warmstart.runs import Run
from warmstart.training.common import Job, smoothed_loss, token_accuracy, token_loss


def tag_collator(tokenizer, multiple: int | None = 8) -> DataCollatorForTokenClassification:
    # Labels padded with -100 like the loss expects; multiples of 8 as for sequences
    # (data.batching.pad_multiple).
    return DataCollatorForTokenClassification(
        tokenizer, pad_to_multiple_of=multiple, return_tensors="pt"
    )


def metric_names(scheme: str) -> tuple[str, ...]:
    return (
        ("accuracy", "f1_macro") if scheme == "plain" else ("f1", "precision", "recall", "accuracy")
    )


class WordMetrics:
    """The Trainer's `compute_metrics` with `batch_eval_metrics=True`: keeps the predicted id of
    each labelled position (a word's first sub-token in the window answering for it). The Trainer
    engine scores the valid windows in dataset order (training.trainer), and each window's own words
    follow the previous window's (data.windows.owners), so the ids in arrival order are the words of
    the valid sentences in order."""

    def __init__(self, kind: TokenClassification):
        self.kind = kind
        self.p: list[np.ndarray] = []

    def __call__(self, pred, compute_result: bool) -> dict | None:
        labels = pred.label_ids.cpu().numpy()
        self.p.append(pred.predictions.argmax(-1).cpu().numpy()[labels != IGNORE])
        if not compute_result:
            return None
        flat, self.p = np.concatenate(self.p), []
        sizes = self.kind.windows["valid"].n_words
        m = self.kind.score(self.kind.parts["valid"], np.split(flat, np.cumsum(sizes)[:-1]))
        return {k: m[k] for k in metric_names(self.kind.scheme)}


class TokenClassification(TaskKind):
    task = "tokens"
    not_mine = (FOR_CAUSAL_LM, FOR_TEXT_TO_TEXT)
    reads = {"tagger": ModelKind("a token tagger", ("tag", "embed"))}

    def __init__(self, cfg: FinetuneConfig):
        given = given_flags(
            cfg,
            (
                "text_column",
                "text_pair_column",
                "label_column",
                "problem",
                "label_separator",
                "class_weights",
                "sampler",
            ),
        )
        if given:
            raise UserError(
                f"{', '.join(given)} are for --task sequence; a tagger reads a tokens column and "
                "--tag-column"
            )
        given = given_flags(cfg, ("long_text", "chunk_aggregation"))
        if given:
            raise UserError(
                f"{', '.join(given)} are for --task sequence; a tagger always reads a long sentence"
                " in windows (--stride)"
            )
        self.parts: dict[str, Sentences] = load_splits(
            cfg,
            read=lambda path, limit: read_sentences(
                path, cfg.tag_column, limit=limit, base_tags=cfg.base_tags
            ),
        )
        for part in self.parts.values():
            check_sentences(part)
        if cfg.label_names:
            self.name_tags(cfg.label_names.split(","))
        # The tag set is every tag of every part (a rare type may only occur in the test part of a
        # small split), completed per entity type (B- and I-, plus E- and S- for IOBES), so the head
        # can say all of them.
        seen = {t for part in self.parts.values() for s in part.tags for t in s}
        # A dataset's ClassLabel tags are all tags the model can say, even those no sentence has.
        seen |= {t for part in self.parts.values() for t in part.tag_names or ()}
        self.scheme = scheme_of(sorted(seen))
        prefixes = {"IOB2": "BI", "IOBES": "BIES"}.get(self.scheme, "")
        self.tags = self.order(
            sorted(seen | {f"{p}-{x}" for x in entity_types(sorted(seen)) for p in prefixes})
        )
        if len(self.tags) < 2:
            raise UserError(
                f"{self.parts['train'].where(0)}: every word has the tag '{self.tags[0]}'; tagging "
                "needs at least two tags"
            )
        self.ids = {t: i for i, t in enumerate(self.tags)}
        self.unseen = sorted(set(self.tags) - {t for s in self.parts["train"].tags for t in s})
        self.orphans = {
            role: orphan_inside_tags(p.tags)
            for role, p in self.parts.items()
            if self.scheme != "plain"
        }
        self.windows: dict[str, WordWindows] = {}
        best = cfg.metric_for_best or ("accuracy" if self.scheme == "plain" else "f1")
        if best not in ("loss", *metric_names(self.scheme)):
            raise UserError(
                f"--metric-for-best {best} is not measured for {self.scheme} tags; choose one of "
                f"loss, {', '.join(metric_names(self.scheme))}"
            )
        self.best = best

    def choices(self, cfg: FinetuneConfig) -> dict[str, Choice]:
        made = {}
        if cfg.metric_for_best is None:
            made["metric_for_best"] = Choice(
                self.best, f"the headline metric of {self.scheme} tags"
            )
        # Defaults measured on WNUT-16 with MiniLM (1,600 tweets, batch 16): the HF recipe's lr 5e-5
        # for 3 epochs reached entity F1 0.19; a 20x faster head (3e-3) with 1.5e-4 for the body, 4
        # epochs, 0.505 (0.485-0.517 over nearby settings). A --lr given alone sets the whole
        # model's rate, as in other tools: the head's own default goes with the body's.
        measured = "measured on WNUT-16 with MiniLM: entity F1 0.505 vs the HF recipe's 0.19"
        if cfg.lr is None:
            made["lr"] = Choice(1.5e-4, f"the body's rate for tagging, {measured}")
            if cfg.head_lr is None:
                made["head_lr"] = Choice(3e-3, f"a 20x faster new head, {measured}")
        if cfg.epochs is None:
            made["epochs"] = Choice(4.0, f"tagging's default, {measured}")
        return made

    def name_tags(self, names: list[str]) -> None:
        """Integer tags 0..K-1 (a Hugging Face dataset's ``ner_tags``) replaced by ``names`` in
        order."""
        names = [n.strip() for n in names]
        for part in self.parts.values():
            for i, tags in enumerate(part.tags):
                for j, t in enumerate(tags):
                    if not (t.isdigit() and int(t) < len(names)):
                        raise UserError(
                            f"{part.where_word(i, j)}: --label-names names integer tags"
                            f" 0..{len(names) - 1}, but this tag is '{t}'"
                        )
                part.tags[i] = [names[int(t)] for t in tags]

    @staticmethod
    def order(tags: list[str]) -> list[str]:
        """O first, then entity tags grouped by type (B- before I-), as in CoNLL label lists."""
        rank = {"B": 0, "I": 1, "E": 2, "S": 3}
        return sorted(
            tags,
            key=lambda t: (
                t != "O",
                t[2:] if t[1:2] == "-" else t,
                rank.get(t[:1], 9) if t[1:2] == "-" else 9,
            ),
        )

    def describe(self) -> str:
        what = (
            f"{self.scheme} entity tags over {len(entity_types(self.tags))} types"
            if self.scheme != "plain"
            else "plain tags"
        )
        orphans = sum(self.orphans.values()) if self.scheme != "plain" else 0
        note = (
            f"; {orphans} I- tags follow no B-/I- of their type (kept; counted as entity starts, as"
            " conlleval does)"
            if orphans
            else ""
        )
        unseen = f"; not in the training part: {', '.join(self.unseen)}" if self.unseen else ""
        if all(t.isdigit() for t in self.tags):
            unseen += (
                "; the tags are integers: name them in order with --label-names (e.g."
                " O,B-PER,I-PER,...)"
            )
        # Known once the parts are encoded: how many sentences were longer than --max-length.
        windowed = (
            "; sentences cut into windows:"
            f" {', '.join(f'{r} {w.windowed}' for r, w in self.windows.items())}"
            if self.windows
            else ""
        )
        return f"token classification, {len(self.tags)} {what}{note}{unseen}{windowed}"

    def load_model(self, path: str, cfg: FinetuneConfig) -> torch.nn.Module:
        model = load_classifier(path, self.tags, None, dropout_of(cfg), head="tokens")
        model.config.tag_scheme = self.scheme  # evaluate/predict/serve read entities the same way
        return model

    def encode(
        self, tokenizer, role: str, max_length: int, cfg: FinetuneConfig | None = None
    ) -> Encoded:
        part = self.parts[role]
        inside = {
            self.ids[t]: self.ids.get("I-" + t[2:], self.ids[t])
            for t in self.tags
            if t.startswith("B-")
        }
        ww = encode_words(
            tokenizer,
            part.tokens,
            max_length,
            cfg.stride if cfg else None,
            [[self.ids[t] for t in s] for s in part.tags],
            all_subtokens=bool(cfg and cfg.label_all_subtokens and role == "train"),
            inside=inside,
        )
        self.windows[role] = ww
        return ww.data

    def score(self, part: Sentences, pred_ids: list[np.ndarray]) -> dict:
        return tagging_metrics(
            part.tags, [[self.tags[i] for i in s] for s in pred_ids], self.scheme
        )

    def job(self, cfg: FinetuneConfig, tokenizer, data: dict[str, Encoded]) -> Job:
        collate = tag_collator(tokenizer, pad_multiple(cfg.cpu))
        valid = data.get("valid")

        def evaluate(model, device, autocast) -> dict:
            ww = self.windows["valid"]
            rows = valid_logits(model, valid, cfg, collate, device, autocast, ragged=True)
            words = ww.word_scores(rows)
            m = self.score(self.parts["valid"], [w.argmax(-1) for w in words])
            return {
                "loss": word_loss(words, self.parts["valid"].tags, self.ids),
                **{k: m[k] for k in metric_names(self.scheme)},
            }

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
            trainer_metrics=lambda: WordMetrics(self),
            metric_names=metric_names(self.scheme),
            batch_loss=token_loss,
            tokenizer=tokenizer,
            loss=smoothed_loss(cfg.label_smoothing),
            unit="sentence windows",
        )

    def test(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        # Reload from disk through the same path `evaluate` uses: proves the saved model is
        # complete.
        tagger = Tagger.load(str(model_dir), cfg.max_length, cfg.cpu, stride=cfg.stride)
        t = time.time()
        metrics = self.score_saved(
            tagger, self.parts["test"], cfg.eval_batch_size, cfg.progress and run.main
        )
        metrics["windowed_sentences_train"] = self.windows["train"].windowed
        run.say("test set:\n" + format_tagging_table(metrics))
        return {"test": metrics, "test_seconds": round(time.time() - t, 2)}

    @classmethod
    def score_saved(cls, tagger: Tagger, sents: Sentences, batch_size: int, progress: bool) -> dict:
        """A saved tagger's metrics on tagged sentences, counted on words: the test part of a run
        and `evaluate` alike."""
        words = tagger.word_probabilities(sents.tokens, batch_size, progress)
        predicted = [[tagger.tags[k] for k in w.argmax(-1)] for w in words]
        metrics = tagging_metrics(sents.tags, predicted, tagger.scheme)
        metrics["windowed_sentences"] = tagger.last_windowed
        return metrics

    def summary(self, metrics: dict) -> str:
        m = metrics["test"]
        head = f"entity F1 {m['f1']:.4f}, " if "f1" in m else ""
        return f"test {head}word accuracy {m['accuracy']:.4f} on {m['sentences']} sentences"

    @classmethod
    def report(cls, result_dir: Path, metrics: dict) -> str:
        test = metrics.get("test") or {}
        return (
            f"run folder: {result_dir}\n"
            + (f"test entity F1: {test['f1']:.4f}\n" if "f1" in test else "")
            + (f"test word accuracy: {test['accuracy']:.4f}\n" if "accuracy" in test else "")
        )

    # -- a saved model read back --------------------------------------------------------------------
    @classmethod
    def evaluate(cls, cfg: EvaluateConfig, path: str, model_kind: str) -> dict:
        refuse_pair_options(cfg)
        # --stride applies to a tagger's windows (and to a classifier's with --long-text chunk).
        sequence_only = given_flags(cfg, SEQUENCE_ONLY)
        if sequence_only:
            raise UserError(f"{', '.join(sequence_only)} do not apply to a tagger")
        sents = read_sentences(
            evaluated(cfg, cfg.data), cfg.tag_column, limit=cfg.limit, base_tags=cfg.base_tags
        )
        check_sentences(sents)
        tagger = cls.load_saved(cfg)
        known = set(tagger.tags)
        for i, tags in enumerate(sents.tags):
            for j, t in enumerate(tags):
                if t not in known:
                    raise UserError(
                        f"{sents.where_word(i, j)}: the tag '{t}' is not one the model knows "
                        f"({', '.join(tagger.tags)})"
                    )
        t0 = time.time()
        metrics = cls.score_saved(tagger, sents, cfg.batch_size, cfg.progress)
        seconds = time.time() - t0
        metrics.update(
            model=tagger.path,
            data=str(Path(cfg.data).resolve()),
            backend=tagger.plan.name,
            seconds=round(seconds, 2),
            sentences_per_s=round(len(sents) / max(seconds, 1e-9), 2),
        )
        return metrics

    @classmethod
    def evaluate_report(cls, metrics: dict) -> str:
        return format_tagging_table(metrics)

    @classmethod
    def load_saved(cls, cfg: EvaluateConfig | PredictConfig) -> Tagger:
        """The saved tagger as evaluate and predict run it (backend, precision, windows)."""
        return Tagger.load(
            cfg.model,
            cfg.max_length,
            cfg.cpu,
            cfg.backend,
            cfg.quantize,
            cfg.precision,
            cfg.stride,
            hub=cfg,
        )

    @classmethod
    def predict(cls, cfg: PredictConfig, path: str, model_kind: str) -> list[Tagged]:
        refuse_inapplicable(
            cfg,
            ("max_new_tokens", "num_beams"),
            "a classifier or tagger (they are for text-to-text models)",
        )
        if cfg.text_pair_column:
            raise UserError(
                "--text-pair-column is for sequence classifiers; a tagger reads one text at a time"
            )
        refuse_inapplicable(
            cfg,
            ("long_text", "chunk_aggregation"),
            "a tagger (it always reads a long sentence in windows: --stride)",
        )
        if distributed.is_distributed():
            raise UserError("predict with a tagger runs in one process")
        source = evaluated(cfg, cfg.input)  # a file, or a dataset's test split
        words = read_words(source, cfg.limit) if cfg.input and not cfg.texts else None
        texts = None
        if words is None:
            texts = read_texts(cfg.texts, source, cfg.text_column, limit=cfg.limit).texts
        tagger = cls.load_saved(cfg)
        return tagger.tag(texts, words, cfg.batch_size, cfg.aggregation, cfg.progress)

    @classmethod
    def predict_report(cls, cfg: PredictConfig, records: list) -> str:
        return format_tagged([t.record() for t in records], cfg.format)

    @classmethod
    def serve(cls, path: str, source: str, model_kind: str, options: dict) -> dict:
        tagger = Tagger.load(
            path,
            max_length=options.get("max_length"),
            cpu=options.get("cpu", False),
            backend=options.get("backend", "torch"),
            quantize=options.get("quantize", "none"),
            stride=options.get("stride"),
        )
        return {"tagger": tagger}

    @classmethod
    def serve_refuses(cls, options: dict) -> list[str]:
        # --stride is a tagger's too (its windows over a long sentence).
        return [f for f in super().serve_refuses(options) if f != "--stride"]


def word_loss(words: list[np.ndarray], tags: list[list[str]], ids: dict[str, int]) -> float:
    """Mean cross-entropy per word (on the logits of each word's first sub-token)."""
    logits = np.concatenate(words)
    y = np.array([ids[t] for s in tags for t in s])
    p = softmax(logits)
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())
