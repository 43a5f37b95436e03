"""`warmstart probe`: a logistic-regression classifier on frozen features (the feature-based
approach).

The inputs are either tables of texts (embedded here with --model, through the same `Embedder` as
`warmstart embed`) or .parquet files written by `embed --label-column ...`. The split options are
finetune's, so a probe and a fine-tuned model can be compared on exactly the same rows; the run
folder has the same config.yaml, metrics.json and confusion_matrix.png.

    out/probe.joblib     the fitted scikit-learn pipeline (standardise, then logistic regression)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from warmstart import plots
from warmstart.config import ProbeConfig, absolute_paths, make, settle, to_dict
from warmstart.data.tables import ROLES, Examples, LabelMap, load_splits, read_examples, split_sizes
from warmstart.errors import UserError
from warmstart.files import atomic_file
from warmstart.inference.features import Embedder, is_feature_file, read_feature_file
from warmstart.metrics import classification_metrics, format_table
from warmstart.models.download import pin
from warmstart.runs import Run, prepare_run_folder

C_GRID = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass
class ProbeResult:
    run_dir: Path
    metrics: dict

    @property
    def test_accuracy(self) -> float | None:
        return (self.metrics.get("test") or {}).get("accuracy")


@dataclass
class Part:
    examples: Examples  # labels and rows (texts are empty for a feature file)
    x: np.ndarray | None  # features, when read from a feature file


def _feature_parts(cfg: ProbeConfig, data: str) -> dict[str, Part]:
    def read(path: str) -> Part:
        x, labels, col = read_feature_file(path, cfg.label_column)
        if labels is None:
            raise UserError(
                f"{path} has no label column: write it with `warmstart embed --label-column ...`, "
                "or name it with --label-column"
            )
        ex = Examples(
            source=path,
            texts=[""] * len(x),
            pairs=None,
            labels=[_raw(v) for v in labels],
            rows=list(range(1, len(x) + 1)),
            label_column=col,
        )
        return Part(ex, x)

    whole = read(data)
    parts = {"train": whole}
    if cfg.split:
        start = 0
        for role, size in zip(ROLES, split_sizes(cfg.split, len(whole.x), data)):
            parts[role] = Part(
                whole.examples.take(slice(start, start + size)), whole.x[start : start + size]
            )
            start += size
    return parts


def _raw(v: object) -> str:
    return (
        str(int(v))
        if isinstance(v, (int, np.integer, bool)) or (isinstance(v, float) and v.is_integer())
        else str(v)
    )


def load_parts(cfg: ProbeConfig) -> dict[str, Part]:
    """Train (and valid/test) parts, from tables or feature files, with finetune's split and
    caps."""
    data = cfg.train or cfg.data
    if cfg.train and cfg.data and cfg.train != cfg.data:
        raise UserError("--train and --data name the same thing; give one of them")
    if not data:
        raise UserError(
            "no training data: pass --train FILE (a table, or a .parquet written by `embed`)"
        )
    if is_feature_file(data):
        parts = _feature_parts(cfg, data)
    else:
        parts = {
            r: Part(ex, None)
            for r, ex in load_splits(replace(cfg, data=data, valid=None, test=None)).items()
        }
    for role, path in (("valid", cfg.valid), ("test", cfg.test)):
        if not path:
            continue
        if role in parts and cfg.split:
            raise UserError(
                f"--{role} is given but --split '{cfg.split}' already makes a {role} part"
            )
        if is_feature_file(path):
            parts[role] = _feature_parts(replace(cfg, split=None), path)["train"]
        elif role not in parts:
            parts[role] = Part(
                read_examples(
                    path, cfg.text_column, cfg.text_pair_column, cfg.label_column, limit=cfg.limit
                ),
                None,
            )
    caps = {
        "train": cfg.max_train_samples,
        "valid": cfg.max_valid_samples,
        "test": cfg.max_test_samples,
    }
    for role, part in parts.items():
        cap = caps[role] or cfg.limit
        if cap and cap < len(part.examples):
            parts[role] = Part(
                part.examples.take(slice(0, cap)), None if part.x is None else part.x[:cap]
            )
    return parts


def _pipeline(c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Standardised features make one C grid fit every model's feature scale, and lbfgs converge
    # quickly.
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed)
    )


def choose_c(
    x: dict[str, np.ndarray], y: dict[str, np.ndarray], seed: int
) -> tuple[float, dict[str, float]]:
    """The C with the best valid accuracy (ties: the stronger regularisation); 5-fold CV without a
    valid part."""
    scores: dict[str, float] = {}
    for c in C_GRID:
        if "valid" in x:
            acc = float(
                (
                    _pipeline(c, seed).fit(x["train"], y["train"]).predict(x["valid"]) == y["valid"]
                ).mean()
            )
        else:
            from sklearn.model_selection import StratifiedKFold, cross_val_score

            folds = StratifiedKFold(
                n_splits=min(5, int(np.bincount(y["train"]).min())), shuffle=True, random_state=seed
            )
            acc = float(
                cross_val_score(_pipeline(c, seed), x["train"], y["train"], cv=folds).mean()
            )
        scores[str(c)] = round(acc, 6)
    best = max(C_GRID, key=lambda c: (scores[str(c)], -c))
    return best, scores


def probe(config: ProbeConfig | None = None, **kwargs) -> ProbeResult:
    """Train a linear probe on frozen encoder features of chosen layers and report its test score:
    how much a layer already knows about the labels."""
    t0 = time.time()
    cfg = absolute_paths(
        make(ProbeConfig, config, kwargs), "data", "train", "valid", "test", "model"
    )
    run = Run(cfg.out)
    parts = load_parts(cfg)
    names = [n.strip() for n in cfg.label_names.split(",")] if cfg.label_names else None
    labels = LabelMap.from_examples(parts["train"].examples, names)
    y = {role: labels.encode(p.examples) for role, p in parts.items()}
    if cfg.c is None and "valid" not in parts and np.bincount(y["train"]).min() < 2:
        raise UserError(
            "choosing C by cross-validation needs at least 2 training rows of every class; "
            "give --valid or --c"
        )
    # A Hugging Face --model is fetched now if it must be and pinned to one commit for the run.
    cfg = settle(cfg, pin(cfg))
    prepare_run_folder(run, to_dict(cfg), resume=False, overwrite=cfg.overwrite)
    run.write_config({k: v for k, v in to_dict(cfg).items() if k != "overwrite"})

    x: dict[str, np.ndarray] = {}
    embed_seconds, embedded = 0.0, 0
    embedder = None
    for role, part in parts.items():
        if part.x is not None:
            x[role] = part.x
            continue
        if embedder is None:
            embedder = Embedder.load(
                cfg.model,
                cfg.pooling,
                cfg.layers,
                cfg.layer_mode,
                cfg.normalize,
                cfg.max_length,
                cfg.cpu,
                cfg.precision,
            )
        t = time.perf_counter()
        x[role] = embedder.embed(part.examples.texts, cfg.batch_size, progress=cfg.progress)
        embed_seconds += time.perf_counter() - t
        embedded += len(part.examples)
    dims = {role: v.shape[1] for role, v in x.items()}
    if len(set(dims.values())) > 1:
        raise UserError(
            f"the inputs have features of different sizes ({dims}); embed them with the same"
            " options"
        )

    t = time.perf_counter()
    c, grid = (cfg.c, {}) if cfg.c is not None else choose_c(x, y, cfg.seed)
    clf = _pipeline(c, cfg.seed).fit(x["train"], y["train"])
    fit_seconds = time.perf_counter() - t
    import joblib

    with atomic_file(run.dir / "probe.joblib") as tmp:
        joblib.dump(
            {
                "pipeline": clf,
                "labels": labels.names,
                "label_values": labels.values,
                "model": cfg.model,
                "features": {
                    k: getattr(cfg, k)
                    for k in ("pooling", "layers", "layer_mode", "normalize", "max_length")
                },
            },
            tmp,
        )

    metrics: dict = {
        "model": cfg.model,
        "rows": {r: len(p.examples) for r, p in parts.items()},
        "feature_dim": next(iter(dims.values())),
        "c": c,
        "c_grid_accuracy": grid,
        "c_chosen_on": "given" if cfg.c is not None else ("valid" if "valid" in x else "5-fold CV"),
        "train_accuracy": round(float((clf.predict(x["train"]) == y["train"]).mean()), 6),
        "embed_seconds": round(embed_seconds, 2),
        "embed_texts_per_s": round(embedded / embed_seconds, 2) if embed_seconds else None,
        "fit_seconds": round(fit_seconds, 2),
    }
    for role in ("valid", "test"):
        if role in x:
            metrics[role] = classification_metrics(y[role], clf.predict(x[role]), labels.names)
    if "test" in metrics:
        plots.confusion_matrix(
            metrics["test"]["confusion_matrix"], labels.names, run.dir / "confusion_matrix.png"
        )
        run.say("test set:\n" + format_table(metrics["test"]))
    metrics["total_seconds"] = round(time.time() - t0, 2)
    run.write_metrics(metrics)
    return ProbeResult(run.dir, metrics)


def report(cfg: ProbeConfig, r: ProbeResult) -> str:
    return f"run folder: {r.run_dir}\n" + (
        f"test accuracy: {r.test_accuracy:.4f} (C = {r.metrics['c']})\n"
        if r.test_accuracy is not None
        else ""
    )
