"""Test accuracy against training minutes, from the checkpoints of one run (configs/imdb-90.yaml).

Every checkpoint's weights (Accelerate's model.safetensors) go into a model folder beside the run's
final model (its config and tokenizer), and `warmstart evaluate` scores each on the run's whole test
part. Minutes are the training loop's own seconds at that checkpoint (state.json: no evaluation, no
checkpoint writing).

    .venv/bin/warmstart finetune --config configs/imdb-90.yaml
    .venv/bin/python benchmarks/imdb_curve.py runs/imdb-90
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import warmstart  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run folder with checkpoints/ and model/")
    a = ap.parse_args()
    run = Path(a.run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    final = run / "model"
    work = Path(tempfile.mkdtemp(prefix="warmstart-curve-"))
    # The test part of the run's positional split (train, valid, test sizes), as a file of its own.
    sizes = [int(x) for x in cfg["split"].split(",")]
    test = work / "test.csv"
    pd.read_csv(cfg["data"]).iloc[sizes[0] + sizes[1] : sum(sizes)].to_csv(test, index=False)
    points = []
    checkpoints = sorted(
        (run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])
    )
    for ckpt in checkpoints:
        state = json.loads((ckpt / "state.json").read_text())
        folder = work / ckpt.name
        shutil.copytree(final, folder, ignore=shutil.ignore_patterns("onnx", "model.safetensors"))
        shutil.copy(ckpt / "model.safetensors", folder / "model.safetensors")
        result = warmstart.evaluate(
            model=str(folder), data=str(test), max_length=cfg["max_length"], progress=False
        )
        points.append((state["step"], state["train_seconds"] / 60, result.accuracy))
        print(
            f"step {state['step']:>6}  {state['train_seconds'] / 60:6.1f} training minutes  test"
            f" accuracy {result.accuracy:.4f}",
            flush=True,
        )
        shutil.rmtree(folder)
    print(
        json.dumps(
            [{"step": s, "minutes": round(m, 2), "test_accuracy": acc} for s, m, acc in points]
        )
    )


if __name__ == "__main__":
    main()
