"""Classification metrics (scikit-learn), tagging metrics (seqeval), metrics of generated text
(sacreBLEU, jiwer), softmax, cross-entropy, text tables."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict:
    labels = list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    mp, mr, mf, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # The mean of per-class recalls: what accuracy means when the classes are skewed (chance is
        # 1/K).
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else 0.0,
        "precision_macro": float(mp),
        "recall_macro": float(mr),
        "f1_macro": float(mf),
        "n": int(len(y_true)),
        "per_class": {
            n: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, n in enumerate(names)
        },
        "labels": list(names),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict:
    """Multi-hot targets and predictions (rows, labels): micro and macro F1, subset accuracy (every
    label of a row right), and precision/recall/F1 per label."""
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
    micro = precision_recall_fscore_support(y_true, y_pred, average="micro", zero_division=0)
    macro = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    return {
        "f1_micro": float(micro[2]),
        "precision_micro": float(micro[0]),
        "recall_micro": float(micro[1]),
        "f1_macro": float(macro[2]),
        "precision_macro": float(macro[0]),
        "recall_macro": float(macro[1]),
        "subset_accuracy": float(np.mean((y_true == y_pred).all(axis=1))) if len(y_true) else 0.0,
        "n": int(len(y_true)),
        "per_label": {
            n: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, n in enumerate(names)
        },
        "labels": list(names),
    }


def best_thresholds(
    probs: np.ndarray, y_true: np.ndarray, grid: np.ndarray | None = None
) -> np.ndarray:
    """Per label, the probability threshold with the best F1 on these rows (ties: the one nearest
    0.5); 0.5 for a label with no positive row, where F1 cannot choose."""
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2) if grid is None else grid
    out = np.full(probs.shape[1], 0.5)
    for k in range(probs.shape[1]):
        truth = y_true[:, k] > 0.5
        if not truth.any():
            continue
        pred = probs[:, k][None, :] >= grid[:, None]  # (thresholds, rows)
        tp = (pred & truth).sum(1)
        f1 = 2 * tp / np.maximum(pred.sum(1) + truth.sum(), 1)
        best = np.flatnonzero(f1 == f1.max())
        out[k] = float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict:
    """RMSE, MAE, Pearson's r and Spearman's rho, averaged over the targets, and per target when
    several."""
    from scipy.stats import pearsonr, spearmanr

    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    per = {}
    for k, name in enumerate(names):
        t, p = y_true[:, k], y_pred[:, k]
        constant = (
            len(t) < 2 or np.ptp(t) == 0 or np.ptp(p) == 0
        )  # correlation undefined: reported as 0
        per[name] = {
            "rmse": float(np.sqrt(mean_squared_error(t, p))),
            "mae": float(mean_absolute_error(t, p)),
            "pearson": 0.0 if constant else float(pearsonr(t, p)[0]),
            "spearman": 0.0 if constant else float(spearmanr(t, p)[0]),
        }
    out = {
        key: float(np.mean([m[key] for m in per.values()]))
        for key in ("rmse", "mae", "pearson", "spearman")
    }
    out.update(n=int(len(y_true)), targets=list(names))
    if len(names) > 1:
        out["per_target"] = per
    return out


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Rows of scores (logits, or log-probabilities of labels) -> rows of probabilities."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def format_table(m: dict) -> str:
    """Per-class precision/recall/F1, macro averages and the confusion matrix as plain text."""
    names = m["labels"]
    w = max(12, *(len(n) + 2 for n in names))
    lines = [f"{'':<{w}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for n in names:
        c = m["per_class"][n]
        lines.append(
            f"{n:<{w}}{c['precision']:>10.4f}{c['recall']:>10.4f}{c['f1']:>10.4f}{c['support']:>10}"
        )
    lines.append(
        f"{'macro avg':<{w}}{m['precision_macro']:>10.4f}{m['recall_macro']:>10.4f}{m['f1_macro']:>10.4f}"
        f"{m['n']:>10}"
    )
    lines.append(f"{'accuracy':<{w}}{'':>20}{m['accuracy']:>10.4f}{m['n']:>10}")
    if "balanced_accuracy" in m:
        lines.append(f"{'balanced acc':<{w}}{'':>20}{m['balanced_accuracy']:>10.4f}{m['n']:>10}")
    lines.append("")
    lines.append("confusion matrix (rows: true, columns: predicted)")
    cw = max(8, *(len(n) + 2 for n in names))
    lines.append(f"{'':<{w}}" + "".join(f"{n:>{cw}}" for n in names))
    for n, row in zip(names, m["confusion_matrix"]):
        lines.append(f"{n:<{w}}" + "".join(f"{v:>{cw}}" for v in row))
    return "\n".join(lines)


def tagging_metrics(gold: list[list[str]], pred: list[list[str]], scheme: str) -> dict:
    """Word-level metrics of tag sequences: word accuracy always; for entity tag sets (IOB2, IOBES)
    entity precision/recall/F1, micro and per type, with seqeval's semantics (conlleval for IOB2: an
    I-X after O starts an entity; strict for IOBES: only well-formed entities count); for plain tag
    sets (part of speech) macro precision/recall/F1 over tags."""
    flat_gold = [t for s in gold for t in s]
    flat_pred = [t for s in pred for t in s]
    n = len(flat_gold)
    out: dict = {
        "accuracy": float(np.mean([g == p for g, p in zip(flat_gold, flat_pred)])) if n else 0.0,
        "n": n,
        "sentences": len(gold),
        "scheme": scheme,
    }
    if scheme == "plain":
        tags = sorted(set(flat_gold) | set(flat_pred))
        p, r, f, _ = precision_recall_fscore_support(
            flat_gold, flat_pred, labels=tags, average="macro", zero_division=0
        )
        out.update(precision_macro=float(p), recall_macro=float(r), f1_macro=float(f))
        return out
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOBES

    kwargs = {"mode": "strict", "scheme": IOBES} if scheme == "IOBES" else {}
    report = classification_report(gold, pred, output_dict=True, zero_division=0, **kwargs)
    micro = report.pop("micro avg")
    macro = report.pop("macro avg")
    report.pop("weighted avg", None)
    out.update(
        precision=float(micro["precision"]),
        recall=float(micro["recall"]),
        f1=float(micro["f1-score"]),
        f1_macro=float(macro["f1-score"]),
        entities=int(micro["support"]),
        per_type={
            t: {
                "precision": float(v["precision"]),
                "recall": float(v["recall"]),
                "f1": float(v["f1-score"]),
                "support": int(v["support"]),
            }
            for t, v in sorted(report.items())
        },
    )
    return out


def format_tagging_table(m: dict) -> str:
    """Per-type entity precision/recall/F1 and the micro average, or word accuracy for plain tag
    sets."""
    lines = []
    if "per_type" in m:
        w = max(12, *(len(n) + 2 for n in m["per_type"])) if m["per_type"] else 12
        lines.append(f"{'':<{w}}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
        for n, c in m["per_type"].items():
            lines.append(
                f"{n:<{w}}{c['precision']:>10.4f}{c['recall']:>10.4f}{c['f1']:>10.4f}{c['support']:>10}"
            )
        lines.append(
            f"{'micro avg':<{w}}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}"
            f"{m['entities']:>10}"
        )
    else:
        w = 12
        lines.append(f"{'macro avg':<{w}}{'precision':>10}{'recall':>10}{'f1':>10}")
        lines.append(
            f"{'(tags)':<{w}}{m['precision_macro']:>10.4f}{m['recall_macro']:>10.4f}{m['f1_macro']:>10.4f}"
        )
    lines.append(
        f"{'word accuracy':<{w}}{m['accuracy']:>10.4f} over {m['n']} words, {m['sentences']}"
        " sentences"
    )
    return "\n".join(lines)


# Metrics of generated text (text_metrics). bleu and chrf are sacreBLEU's corpus scores on its 0-100
# scale (as papers report them); exact_match a share in 0..1; cer and wer the character and word
# error rates of jiwer (edits / reference length, over the whole corpus; may pass 1 when the output
# is longer than the reference).
TEXT_METRICS = ("bleu", "chrf", "exact_match", "cer", "wer")
TEXT_LOWER_IS_BETTER = ("cer", "wer")


def text_metric_names(spec: str) -> tuple[str, ...]:
    """--metrics 'bleu,chrf,...' as names, checked (UserError: a flag's value)."""
    from warmstart.errors import UserError

    names = tuple(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    unknown = [n for n in names if n not in TEXT_METRICS]
    if unknown or not names:
        raise UserError(
            f"--metrics {spec!r}: {'unknown ' + ', '.join(unknown) if unknown else 'none given'};"
            f" choose among {', '.join(TEXT_METRICS)}"
        )
    return names


def text_metrics(
    predictions: list[str], references: Sequence[str | Sequence[str]], names: Sequence[str]
) -> dict[str, float]:
    """The ``names`` metrics of generated ``predictions`` against one reference each, or a list of
    acceptable references each (a word with two pronunciations): BLEU and chrF read them all
    (sacreBLEU's multi-reference scores), exact match takes any, CER and WER the closest (the one
    needing fewest edits, as grapheme-to-phoneme scoring does). Texts are compared as written after
    stripping surrounding whitespace (no lower-casing): a model that gets case or accents wrong is
    wrong. An empty corpus scores 0 (error rates 1)."""
    unknown = [n for n in names if n not in TEXT_METRICS]
    if unknown:
        raise ValueError(
            f"unknown text metric(s) {', '.join(unknown)}; known: {', '.join(TEXT_METRICS)}"
        )
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    hyp = [p.strip() for p in predictions]
    refs = [[r.strip()] if isinstance(r, str) else [x.strip() for x in r] for r in references]
    if any(not r for r in refs):
        raise ValueError("a prediction without a reference")
    out: dict[str, float] = {}
    if not refs:
        return {n: 1.0 if n in TEXT_LOWER_IS_BETTER else 0.0 for n in names}
    # sacreBLEU's reference streams: the k-th reference of every text, None where a text has fewer.
    streams = [
        [r[k] if k < len(r) else None for r in refs] for k in range(max(len(r) for r in refs))
    ]
    for name in names:
        if name == "bleu":
            import sacrebleu

            out[name] = float(sacrebleu.corpus_bleu(hyp, streams).score)
        elif name == "chrf":
            import sacrebleu

            out[name] = float(sacrebleu.corpus_chrf(hyp, streams).score)
        elif name == "exact_match":
            out[name] = float(np.mean([h in r for h, r in zip(hyp, refs)]))
        else:
            out[name] = _error_rate(name, hyp, [_closest(name, h, r) for h, r in zip(hyp, refs)])
    return out


def _closest(name: str, hyp: str, refs: list[str]) -> str:
    """The reference ``hyp`` is fewest edits from (the first of equals); one reference is itself."""
    if hyp in refs:
        return hyp
    if len(refs) == 1:
        return refs[0]
    units = (lambda t: list(t)) if name == "cer" else (lambda t: t.split())
    # The edits of each reading: its error rate (which already handles an empty reference) times its
    # length.

    def edits(ref: str) -> int:
        return round(_error_rate(name, [hyp], [ref]) * max(len(units(ref)), 1))

    return min(refs, key=edits)


def _error_rate(name: str, hyp: list[str], ref: list[str]) -> float:
    """jiwer's corpus CER/WER. It refuses an empty reference, so the rows whose reference is empty
    (no words, for WER) count their hypothesis's length as insertions, added to jiwer's edits over
    the rest."""
    import jiwer

    units = (lambda t: list(t)) if name == "cer" else (lambda t: t.split())
    kept = [i for i, r in enumerate(ref) if units(r)]
    total = sum(len(units(ref[i])) for i in kept)
    empty = set(range(len(ref))) - set(kept)
    inserted = sum(len(units(hyp[i])) for i in empty)
    edits = 0.0
    if kept:
        measure = jiwer.cer if name == "cer" else jiwer.wer
        edits = measure([ref[i] for i in kept], [hyp[i] for i in kept]) * total
    return float((edits + inserted) / max(total, 1))


def format_text_metrics(m: dict) -> str:
    """'BLEU 21.30, chrF 45.10, exact match 0.1200, CER 0.3100, WER 0.6000 on 500 pairs' (those
    present)."""
    shown = {
        "bleu": "BLEU",
        "chrf": "chrF",
        "exact_match": "exact match",
        "cer": "CER",
        "wer": "WER",
    }
    parts = [
        f"{label} {m[k]:.2f}" if k in ("bleu", "chrf") else f"{label} {m[k]:.4f}"
        for k, label in shown.items()
        if k in m
    ]
    return ", ".join(parts) + (f" on {m['n']} pairs" if "n" in m else "")


# -- extractive question answering -------------------------------------------------------------------
# The official SQuAD evaluation, as its scripts define it: v1.1's evaluate-v1.1.py (normalize_answer,
# f1_score, exact_match_score, metric_max_over_ground_truths) and v2.0's evaluate-v2.0.py (HasAns /
# NoAns totals; a question without an answer is right when the prediction is empty),
# https://rajpurkar.github.io/SQuAD-explorer/. Written out because the only library for it here
# would be `evaluate`, which warmstart does not use.


PUNCTUATION = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, the articles a/an/the and extra white space (the official
    normalize_answer)."""
    s = "".join(ch for ch in s.lower() if ch not in PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_f1(prediction: str, truth: str) -> float:
    """Token F1 of two normalised answers; v2's rule for empty ones: 1 if both are empty, else 0."""
    pred, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not pred or not gold:
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def squad_exact(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> dict:
    """exact_match and f1 (percent), each the best over a question's reference answers; a question
    with no reference answer (SQuAD v2) counts against the empty answer, and v2's HasAns/NoAns
    split is given when there are such questions."""
    em, f1 = [], []
    for pred, refs in zip(predictions, references):
        golds = list(refs) or [""]
        em.append(max(squad_exact(pred, g) for g in golds))
        f1.append(max(squad_f1(pred, g) for g in golds))
    n = len(em)
    out: dict = {
        "exact_match": 100.0 * sum(em) / max(n, 1),
        "f1": 100.0 * sum(f1) / max(n, 1),
        "questions": n,
    }
    has = [i for i, refs in enumerate(references) if refs]
    if len(has) < n:
        no = [i for i, refs in enumerate(references) if not refs]
        for name, idx in (("HasAns", has), ("NoAns", no)):
            out[f"{name}_exact"] = 100.0 * sum(em[i] for i in idx) / max(len(idx), 1)
            out[f"{name}_f1"] = 100.0 * sum(f1[i] for i in idx) / max(len(idx), 1)
            out[f"{name}_total"] = len(idx)
    return out


def format_squad_metrics(m: dict) -> str:
    lines = [f"exact match {m['exact_match']:.2f}  F1 {m['f1']:.2f}  ({m['questions']} questions)"]
    for name in ("HasAns", "NoAns"):
        if f"{name}_total" in m:
            lines.append(
                f"  {name}: exact match {m[f'{name}_exact']:.2f}  F1 {m[f'{name}_f1']:.2f}"
                f"  ({m[f'{name}_total']} questions)"
            )
    return "\n".join(lines)
