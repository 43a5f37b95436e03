"""What a search shows, rewritten after every trial: best/ (a copy of the best complete trial's run
folder), best.json, trials.csv and trials.png, each written atomically, so a search stopped at any
moment leaves files that agree with its study; and the text `warmstart tune` prints at the end."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmstart.config import TuneConfig
from warmstart.files import atomic_dir, atomic_file, atomic_write_json, atomic_write_text
from warmstart.tuning.search import Search
from warmstart.tuning.space import Param
from warmstart.tuning.study import trial_dir
from warmstart.tuning.trials import describe


@dataclass
class TuneResult:
    out_dir: Path
    best_dir: Path | None  # None when no trial completed
    best_trial: int | None
    best_value: float | None
    best_params: dict
    metric: str | None
    direction: str
    trials: list[dict]  # the rows of trials.csv

    def count(self, state: str) -> int:
        return sum(row["state"] == state for row in self.trials)


def publish(study: Any, search: Search) -> TuneResult:
    """best/ (replaced only when another trial becomes the best), best.json, trials.csv and
    trials.png."""
    out = search.out
    # Workers sharing a study and a folder (--storage) publish one at a time: best/ is one copy.
    with publishing(out):
        return _publish(study, search, out)


@contextlib.contextmanager
def publishing(out: Path):
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".publish.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _publish(study: Any, search: Search, out: Path) -> TuneResult:
    rows = _rows(study, search.params)
    best = _best(rows, search.direction)
    metric = search.metric or study.user_attrs.get("metric") or "metric"
    best_json = out / "best.json"
    source = trial_dir(out, best["number"]) if best is not None else None
    if best is not None and not source.is_dir():
        # a shared study's best trial that ran in another worker's --out (another machine): its
        # folder is there; best.json says where
        atomic_write_json(best_json, {**elsewhere(study, best), "metric": metric})
        # an earlier best's copy is no longer the best
        shutil.rmtree(out / "best", ignore_errors=True)
    elif best is not None:
        saved = json.loads(best_json.read_text(encoding="utf-8")) if best_json.is_file() else {}
        if saved.get("trial") != best["number"] or not (out / "best").is_dir():
            atomic_dir(
                out / "best",
                lambda tmp: shutil.copytree(
                    source,
                    tmp,
                    ignore=shutil.ignore_patterns("checkpoints", ".writing", ".replaced"),
                ),
            )
        # After the copy: best.json never names a trial whose folder is not in best/ yet.
        atomic_write_json(
            best_json,
            {
                "trial": best["number"],
                "metric": metric,
                "direction": search.direction,
                "value": best["value"],
                "params": {p.name: best[p.name] for p in search.params},
                "run_dir": best["run_dir"],
                "best_dir": "best",
            },
        )
    _write_csv(rows, out / "trials.csv")
    _plot(rows, metric, search.direction, best, out / "trials.png")
    return TuneResult(
        out,
        out / "best" if (out / "best").is_dir() and best else None,
        best and best["number"],
        best and best["value"],
        {p.name: best[p.name] for p in search.params} if best else {},
        metric,
        search.direction,
        rows,
    )


def elsewhere(study: Any, best: dict) -> dict:
    """best.json for a best trial whose run folder is another worker's."""
    who = study.trials[best["number"]].user_attrs.get("worker") or {}
    return {
        "trial": best["number"],
        "value": best["value"],
        "run_dir": best["run_dir"],
        "best_dir": None,
        "host": who.get("host"),
        "note": "the trial ran in another worker's --out: its run folder is there",
    }


def report(cfg: TuneConfig, result: TuneResult) -> str:
    """What `warmstart tune` prints: the folder, the trials by state, the best one."""
    counts = ", ".join(
        f"{result.count(s)} {s}" for s in ("complete", "pruned", "fail") if result.count(s)
    )
    text = f"search folder: {result.out_dir} ({len(result.trials)} trials: {counts or 'none'})\n"
    if result.best_trial is None:
        return text + "no trial completed\n"
    return (
        text + f"best: trial {result.best_trial}, valid {result.metric} {result.best_value:.4f} "
        f"({describe(result.best_params)})\nbest run folder: {result.best_dir}\n"
    )


def _rows(study: Any, params: list[Param]) -> list[dict]:
    """One row per trial told to Optuna (queued ones are not trials yet)."""
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.WAITING:
            continue
        seconds = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        note = t.user_attrs.get("note") or (
            f"rerun of trial {t.user_attrs['rerun_of']}" if "rerun_of" in t.user_attrs else ""
        )
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value,
                **{p.name: t.params.get(p.name) for p in params},
                "epochs": len(t.intermediate_values),
                "seconds": None if seconds is None else round(seconds, 1),
                "run_dir": trial_dir(Path("."), t.number).name,
                "note": note,
            }
        )
    return rows


def _best(rows: list[dict], direction: str) -> dict | None:
    """The best complete trial; a tie goes to the earlier one."""
    complete = [r for r in rows if r["state"] == "complete"]
    if not complete:
        return None
    sign = -1 if direction == "maximize" else 1
    return min(complete, key=lambda r: (sign * r["value"], r["number"]))


def _write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=list(rows[0]) if rows else ["number", "state", "value"], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _plot(rows: list[dict], metric: str, direction: str, best: dict | None, path: Path) -> None:
    """The value of each trial (pruned ones at the value they were stopped at), the best so far,
    and the best trial starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    for state, style, label in (
        ("complete", "o", "complete"),
        ("pruned", "x", "pruned (value when stopped)"),
    ):
        xs = [r["number"] for r in rows if r["state"] == state and r["value"] is not None]
        ys = [r["value"] for r in rows if r["state"] == state and r["value"] is not None]
        if xs:
            ax.plot(
                xs, ys, style, label=label, color="tab:blue" if state == "complete" else "tab:red"
            )
    complete = [r for r in rows if r["state"] == "complete"]
    if complete:  # the best value so far, trial after trial, up to the last trial
        pick = max if direction == "maximize" else min
        running = [pick(r["value"] for r in complete[: i + 1]) for i in range(len(complete))]
        xs = [r["number"] for r in complete] + [rows[-1]["number"]]
        ax.step(
            xs,
            running + running[-1:],
            where="post",
            color="tab:green",
            alpha=0.6,
            label="best so far",
        )
    if best is not None:
        ax.plot(
            [best["number"]],
            [best["value"]],
            "*",
            markersize=16,
            color="gold",
            markeredgecolor="black",
            label=f"best: trial {best['number']}",
        )
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(f"valid {metric} ({direction})")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
