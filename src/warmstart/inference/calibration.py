"""Calibrated probabilities: temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural
Networks"), the expected calibration error and the data of a reliability diagram.

A fine-tuned classifier is usually overconfident: of the texts it gives 0.95, fewer than 95% are
right. One scalar T > 0, fitted on held-out rows to minimise the negative log-likelihood of
softmax(logits / T), fixes most of that without changing any prediction (dividing by T keeps the
order of a row's logits, so the argmax too).

T is saved in the model's config.json as ``calibration_temperature`` (``TEMPERATURE_KEY``; not
``temperature``, which transformers treats as a generation parameter: dropped on load, refused on
save) and applied by ``Classifier.probabilities`` on every backend. ``kind`` is "softmax" for
single-label classifiers, where the logits of a row compete; "sigmoid" (multi-label: each logit is a
label's own yes/no) fits T on the binary cross-entropy of sigmoid(logits / T) and counts every (row,
label) as one prediction in the ECE."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from warmstart.files import atomic_write_json
from warmstart.metrics import sigmoid, softmax
from warmstart.models.lora import MERGED_CONFIG

TEMPERATURE_KEY = "calibration_temperature"
KINDS = ("softmax", "sigmoid")
BINS = 15  # Guo et al.'s number of equal-width confidence bins
# T is searched in [1/20, 20]: wide enough for any real model (fine-tuned BERTs land around 1-3),
# and bounded so that a fitting set the model gets entirely right cannot drive T to 0 (infinitely
# sharp probabilities).
LOG_T_BOUNDS = (-math.log(20.0), math.log(20.0))


def scaled(logits: np.ndarray, temperature: float = 1.0, kind: str = "softmax") -> np.ndarray:
    """Probabilities of ``logits`` divided by ``temperature``: softmax over each row, or sigmoid per
    entry."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    return softmax(z) if kind == "softmax" else sigmoid(z)


def nll(
    logits: np.ndarray, y: np.ndarray, temperature: float = 1.0, kind: str = "softmax"
) -> float:
    """Mean negative log-likelihood of the targets under ``scaled(logits, temperature, kind)``
    (sigmoid: the binary cross-entropy averaged over every row and label)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    if kind == "softmax":
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y)), np.asarray(y, dtype=int)].mean())
    y = np.asarray(y, dtype=np.float64)
    # log(1 + e^-|z|) + max(z, 0) - y z: the stable form of -[y log s(z) + (1 - y) log(1 - s(z))]
    return float((np.logaddexp(0.0, -np.abs(z)) + np.maximum(z, 0.0) - y * z).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, kind: str = "softmax") -> float:
    """The T > 0 that minimises ``nll(logits, y, T, kind)`` on these (held-out) rows.

    A 1-D bounded search on log T: the NLL is convex in 1/T, so it has one minimum, which Brent's
    method finds to ~1e-6 in a few dozen evaluations."""
    from scipy.optimize import minimize_scalar

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) == 0:
        return 1.0
    found = minimize_scalar(
        lambda log_t: nll(logits, y, math.exp(log_t), kind),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(found.x))


def _confidence_and_correct(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the ECE bins: single-label (``y`` a class id per row): the top probability and whether
    its class is right; multi-label (``y`` a 0/1 row per text): each label's decision, its
    probability of being right (p or 1 - p) and whether it is."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    if y.ndim == 1:
        return probs.max(axis=1), probs.argmax(axis=1) == y
    yes = probs >= 0.5
    return np.where(yes, probs, 1.0 - probs).ravel(), (yes == (y > 0.5)).ravel()


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> dict:
    """Per equal-width confidence bin ((lo, hi]; the first also takes 0): how many predictions fall
    in it, their mean confidence and how many of them are right; with the ECE of these bins. The
    data of a reliability diagram (plots.reliability_diagram)."""
    conf, correct = _confidence_and_correct(probs, y)
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        mean_conf = float(conf[inside].mean()) if n else None
        accuracy = float(correct[inside].mean()) if n else None
        if n:
            ece += n / len(conf) * abs(accuracy - mean_conf)
        rows.append(
            {
                "lower": b / bins,
                "upper": (b + 1) / bins,
                "count": n,
                "confidence": mean_conf,
                "accuracy": accuracy,
            }
        )
    return {"ece": float(ece), "bins": rows}


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """ECE: over equal-width confidence bins, the mean |accuracy - confidence| weighted by the bin's
    share of predictions (Naeini et al., 2015; Guo et al., 2017). 0 for a perfectly calibrated
    model."""
    return reliability(probs, y, bins)["ece"]


@dataclass
class Calibration:
    """A fitted temperature and what it did on the rows it was fitted on."""

    temperature: float
    kind: str
    rows: int
    bins: int
    before: dict  # ece, nll, accuracy and the reliability bins at T = 1
    after: dict  # the same at the fitted T

    def record(self) -> dict:
        """calibration.json."""
        return {
            "temperature": self.temperature,
            "kind": self.kind,
            "rows": self.rows,
            "bins": self.bins,
            "before": self.before,
            "after": self.after,
        }

    def summary(self) -> dict:
        """The figures for metrics.json (no bins)."""
        return {
            "temperature": self.temperature,
            "rows": self.rows,
            **{
                f"{k}_{when}": getattr(self, when)[k]
                for when in ("before", "after")
                for k in ("ece", "nll")
            },
            "accuracy": self.after["accuracy"],
        }

    def describe(self) -> str:
        b, a = self.before, self.after
        return (
            f"calibration: temperature {self.temperature:.3f} fitted on {self.rows} texts; ECE"
            f" {b['ece']:.4f} -> {a['ece']:.4f}, NLL {b['nll']:.4f} -> {a['nll']:.4f}, accuracy"
            f" {a['accuracy']:.4f} (unchanged)"
        )


def measure(
    logits: np.ndarray, y: np.ndarray, temperature: float, kind: str = "softmax", bins: int = BINS
) -> dict:
    """ECE, NLL and accuracy of ``logits`` at ``temperature``, with the reliability bins."""
    probs = scaled(logits, temperature, kind)
    conf_correct = _confidence_and_correct(probs, y)[1]
    return {
        "nll": nll(logits, y, temperature, kind),
        "accuracy": float(conf_correct.mean()) if len(y) else 0.0,
        **reliability(probs, y, bins),
    }


def calibrate(
    logits: np.ndarray, y: np.ndarray, kind: str = "softmax", bins: int = BINS
) -> Calibration:
    """Fit T on (``logits``, ``y``) and measure before (T = 1) and after."""
    t = fit_temperature(logits, y, kind)
    return Calibration(
        t,
        kind,
        len(y),
        bins,
        measure(logits, y, 1.0, kind, bins),
        measure(logits, y, t, kind, bins),
    )


def write_report(cal: Calibration, folder: Path) -> None:
    """calibration.json and reliability.png in ``folder``, each written atomically."""
    from warmstart import plots  # matplotlib: only where a diagram is drawn

    atomic_write_json(folder / "calibration.json", cal.record())
    plots.reliability_diagram(
        {**cal.before, "temperature": 1.0},
        {**cal.after, "temperature": cal.temperature},
        folder / "reliability.png",
    )


# --- the temperature in config.json
# ------------------------------------------------------------------------------


def saved_temperature(model_dir: str | Path) -> float:
    """The calibration temperature saved in ``model_dir``/config.json; 1.0 (raw softmax) when there
    is none."""
    try:
        value = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8")).get(
            TEMPERATURE_KEY
        )
    except (OSError, ValueError, AttributeError):
        return 1.0
    # Anything but a positive finite number (an edited file) means no calibration, never a division
    # by 0.
    ok = (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )
    return float(value) if ok else 1.0


def save_temperature(model_dir: str | Path, temperature: float | None) -> None:
    """Write ``temperature`` into ``model_dir``/config.json (None: remove it), atomically, keeping
    every other key as it is. A no-op when the file already says so (its mtime is what marks an ONNX
    export stale)."""
    path = Path(model_dir) / "config.json"
    if (
        not path.is_file() and (Path(model_dir) / MERGED_CONFIG).is_file()
    ):  # an adapter (--lora-save adapter)
        path = Path(model_dir) / MERGED_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get(TEMPERATURE_KEY) == temperature or (
        temperature is None and TEMPERATURE_KEY not in config
    ):
        return
    if temperature is None:
        config.pop(TEMPERATURE_KEY)
    else:
        config[TEMPERATURE_KEY] = float(temperature)
    atomic_write_json(path, config)


def forget_temperature(config: object) -> None:
    """Drop an inherited temperature from a model config about to be trained: it belonged to the old
    weights."""
    if hasattr(config, TEMPERATURE_KEY):
        delattr(config, TEMPERATURE_KEY)
