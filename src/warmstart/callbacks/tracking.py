"""What the experiment trackers (MLflow, Weights & Biases) share: which numbers of a record they
log, the history a resumed run replays, the final metrics and the run folder's files they keep."""

from __future__ import annotations

from pathlib import Path

from warmstart.files import read_jsonl


def numbers(record: dict) -> dict[str, float]:
    """The record's numbers by their history.jsonl names, its step left out (it is the x axis)."""
    return {
        k: v
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def replayed(info: dict) -> list[dict]:
    """A resumed run's history.jsonl up to the checkpoint it resumed from (the engine has cut what
    the lost work logged): what a tracker's new run logs first, so that it holds the whole run."""
    if not info.get("resumed_step"):
        return []
    return [r for r in read_jsonl(Path(info["run_dir"]) / "history.jsonl") if "step" in r]


def final_metrics(metrics: dict) -> dict[str, float]:
    """metrics.json's numbers: its top-level ones by name (best_epoch, train_samples_per_second,
    total_seconds...) and those one level down as <group>_<name> (test_accuracy, test_f1_macro,
    valid_after_perplexity...); the epochs were logged as they ended."""
    found = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            for name, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    found[f"{key}_{name}"] = v
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            found[key] = value
    return found


def artifacts(run_dir: Path) -> list[Path]:
    """The run folder's files a tracker keeps: metrics.json, config.yaml, calibration.json, the
    plots, and a model card (README.md in the run or model folder) where there is one."""
    run_dir = Path(run_dir)
    named = [run_dir / n for n in ("metrics.json", "config.yaml", "calibration.json", "README.md")]
    return [
        p
        for p in [*named, *sorted(run_dir.glob("*.png")), run_dir / "model" / "README.md"]
        if p.is_file()
    ]
