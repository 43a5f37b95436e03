"""`warmstart tune`: hyperparameter search with Optuna (TPE sampler, median or Hyperband pruning)
over the options of `finetune` or `probe`.

    out/
      study.db              the Optuna study (SQLite): the same command run again resumes it
      trial-NNN/            one ordinary run folder per trial (its checkpoints are deleted when it ends)
      logs/trial-NNN.yaml   the options the trial was started with: the tuned options plus the sampled
                            values
      logs/trial-NNN.log    the trial's own output
      best/                 a copy of the best complete trial's run folder (config.yaml, model/...)
      best.json             its number, value and parameters
      trials.csv            every trial: number, state, value, parameters, epochs run, seconds
      trials.png            the metric per trial, pruned ones marked

The tuned command's options come from --base FILE, from its own flags given to tune, or both (the
flags win): `warmstart tune --data reviews.csv --epochs 2 --space space.yaml --trials 8`.

Each trial is the tuned command in its own process. Its epochs come back through a pipe as they
end (its engine's callbacks write them: callbacks/pipe.py) and are reported to Optuna; the pruner's
verdict goes back down another, and a trial told to stop ends its epoch, then its process is stopped
(tuning/trials.py). No trial file is read while the trial runs.

Resuming: trials are counted in study.db; the same command runs only the trials still missing. A
trial left running by a killed search is marked failed, its half-written folder deleted and its
parameters run again first.

This module only puts the steps in order: plan (tuning/search.py, tuning/space.py), the folder and
study (tuning/study.py), the trials (tuning/trials.py), the files and report (tuning/report.py)."""

from __future__ import annotations

import time
from typing import Any

from warmstart.config import TuneConfig, make
from warmstart.runs import Run
from warmstart.tuning import study as studies
from warmstart.tuning.report import TuneResult, publish, report
from warmstart.tuning.search import Search, plan
from warmstart.tuning.space import read_space
from warmstart.tuning.trials import run_trial

__all__ = ["Search", "TuneResult", "open_study", "plan", "read_space", "report", "tune"]


def tune(
    config: TuneConfig | None = None, *, options: dict[str, Any] | None = None, **kwargs
) -> TuneResult:
    """Search the options of ``config.space`` for ``config.command``; returns the best trial (its
    copy in ``out/best``) and every trial's row of trials.csv.

    The tuned command's options are ``options`` (keyword arguments of ``warmstart.finetune`` or
    ``warmstart.probe``, as its flags given to `warmstart tune` are) over those of the ``base``
    file; either may be left out:

    >>> warmstart.tune(space="space.yaml", trials=8, options={"data": "reviews.csv", "epochs": 2})

    is `warmstart tune --space space.yaml --trials 8 --data reviews.csv --epochs 2`."""
    t0 = time.time()
    cfg = make(TuneConfig, config, kwargs)
    search = plan(cfg, options)  # bad input fails here, before anything is written
    studies.check_folder(search)
    run = Run(search.out)
    deadline = t0 + cfg.timeout if cfg.timeout else None
    with studies.locked(search), studies.quiet_optuna():
        study = studies.open_study(search)
        studies.recover_interrupted(study, search, run.say)
        done = studies.counted(study)
        if done:
            run.say(f"resuming the search in '{search.out}': {done} of {cfg.trials} trials done")
        result = publish(study, search)
        # in_hand: with a shared --storage, other workers' running trials count too
        while studies.in_hand(study) < cfg.trials:
            if deadline is not None and time.time() >= deadline:
                run.say(
                    f"time limit reached ({cfg.timeout:g}s): {studies.counted(study)} of"
                    f" {cfg.trials} trials done"
                )
                break
            try:
                run_trial(study, search, deadline, run.say)
            # after an interruption or a failed trial too: the files show every trial told to Optuna
            finally:
                result = publish(study, search)
        if search.shared:  # the other workers' last trials may still become the best
            studies.wait_for_others(study, search, run.say, deadline)
            result = publish(study, search)
    return result


def open_study(
    config: TuneConfig | None = None, *, options: dict[str, Any] | None = None, **kwargs
) -> Any:
    """The Optuna study of a search, created in --out if need be (after the same checks as `tune`),
    e.g. to enqueue values to try first: ``open_study(cfg).enqueue_trial({"lr": 1e-4})``, then
    ``tune(cfg)``."""
    search = plan(make(TuneConfig, config, kwargs), options)
    studies.check_folder(search)
    search.out.mkdir(parents=True, exist_ok=True)
    with studies.quiet_optuna():
        return studies.open_study(search)
