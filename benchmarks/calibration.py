"""Temperature scaling of the `make demo` model, measured on reviews it was neither trained nor
calibrated on.

A copy of runs/demo/model (the demo run itself is left as it is) is calibrated with `warmstart
calibrate` on 500 IMDb reviews (rows 35,000-35,499 of ../shared/data/imdb/movie_data.csv.gz: the
demo's own valid rows, which finetune calibrates on too), then scored on 1,000 test reviews (rows
40,000-40,999, the demo's test rows) before (T = 1) and after: expected calibration error (15
equal-width bins), negative log-likelihood and accuracy, on fp32 PyTorch (the model exactly as
trained) and on the default backend of a CPU (ONNX int8). Prints a Markdown table.

    .venv/bin/python benchmarks/calibration.py [--model runs/demo/model]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
IMDB = ROOT.parent / "shared" / "data" / "imdb" / "movie_data.csv.gz"
CALIBRATION_ROWS = (35_000, 35_500)
TEST_ROWS = (40_000, 41_000)


def rows(first: int, end: int, path: Path) -> Path:
    import pandas as pd

    pd.read_csv(IMDB).iloc[first:end].to_csv(path, index=False)
    return path


def scores(model: str, data: Path, backend: str, quantize: str) -> dict:
    """ECE, NLL and accuracy of the model's probabilities (after its saved temperature) on
    ``data``."""
    import numpy as np

    from warmstart.data.tables import read_examples
    from warmstart.inference.calibration import expected_calibration_error
    from warmstart.inference.classifier import Classifier

    ex = read_examples(str(data))
    clf = Classifier.load(model, backend=backend, quantize=quantize, precision="fp32")
    y = clf.labels.encode(ex)
    t = time.perf_counter()
    probs = clf.probabilities(ex)
    nll = float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-300, None)).mean())
    return {
        "T": clf.temperature,
        "ece": expected_calibration_error(probs, y),
        "nll": nll,
        "accuracy": float((probs.argmax(1) == y).mean()),
        "seconds": time.perf_counter() - t,
        "probs": probs,
        "y": y,
    }


def ece_change_interval(before: dict, after: dict, rounds: int = 1000) -> tuple[float, float]:
    """95% interval of ECE(after) - ECE(before) over paired bootstrap resamples of the test rows:
    whether a change of the ECE on 1,000 reviews is more than the noise of its 15 bins."""
    import numpy as np

    from warmstart.inference.calibration import expected_calibration_error

    rng = np.random.default_rng(0)
    n = len(before["y"])
    diffs = []
    for _ in range(rounds):
        i = rng.integers(0, n, n)
        diffs.append(
            expected_calibration_error(after["probs"][i], after["y"][i])
            - expected_calibration_error(before["probs"][i], before["y"][i])
        )
    return float(np.percentile(diffs, 2.5)), float(np.percentile(diffs, 97.5))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "runs" / "demo" / "model"))
    a = ap.parse_args()
    source = Path(a.model)
    if not (source / "config.json").is_file():
        print(f"{source} is missing: run `make demo` first", file=sys.stderr)
        return 1

    import warmstart
    from warmstart.inference.calibration import save_temperature

    with tempfile.TemporaryDirectory(prefix="warmstart-calibration-") as tmp:
        tmp = Path(tmp)
        model = tmp / "model"
        shutil.copytree(
            source, model, ignore=shutil.ignore_patterns("onnx")
        )  # a fresh export: of this copy
        save_temperature(
            model, None
        )  # "before" is the raw model, should the demo be a calibrated one
        calib = rows(*CALIBRATION_ROWS, tmp / "calibration.csv")
        test = rows(*TEST_ROWS, tmp / "test.csv")

        before = {
            b: scores(str(model), test, b, q) for b, q in (("torch", "none"), ("onnx", "int8"))
        }
        t = time.perf_counter()
        result = warmstart.calibrate(
            model=str(model),
            data=str(calib),
            backend="torch",
            quantize="none",
            precision="fp32",
            progress=False,
        )
        fit_seconds = time.perf_counter() - t
        after = {
            b: scores(str(model), test, b, q) for b, q in (("torch", "none"), ("onnx", "int8"))
        }

    cal = result.calibration
    print(
        f"model {source} (copy); T fitted on {cal.rows} reviews (rows"
        f" {CALIBRATION_ROWS[0]:,}-{CALIBRATION_ROWS[1] - 1:,}) in {fit_seconds:.1f} s: T ="
        f" {cal.temperature:.4f}; on those rows ECE {cal.before['ece']:.4f} ->"
        f" {cal.after['ece']:.4f}, NLL {cal.before['nll']:.4f} -> {cal.after['nll']:.4f}"
    )
    print(
        f"\nmeasured on {TEST_ROWS[1] - TEST_ROWS[0]:,} test reviews (rows"
        f" {TEST_ROWS[0]:,}-{TEST_ROWS[1] - 1:,}):\n"
    )
    print("| backend | T | ECE (15 bins) | NLL | accuracy |")
    print("|---|---|---|---|---|")
    for backend, label in (("torch", "PyTorch fp32"), ("onnx", "ONNX int8")):
        for when, m in (("before", before[backend]), ("after", after[backend])):
            print(
                f"| {label}, {when} | {m['T']:.4f} | {m['ece']:.4f} | {m['nll']:.4f} |"
                f" {m['accuracy']:.4f} |"
            )
    low, high = ece_change_interval(before["torch"], after["torch"])
    print(
        f"\nPyTorch fp32: ECE change {after['torch']['ece'] - before['torch']['ece']:+.4f}, 95%"
        f" paired bootstrap interval [{low:+.4f}, {high:+.4f}]"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
