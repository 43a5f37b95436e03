"""The search folder and the Optuna study in it (study.db): refusing a folder in use or holding
something else, creating or resuming the study, and recovering the trials a killed search left
running.

Trials are counted in study.db, so the same command run again runs only the trials still missing;
a search with other settings in the folder is refused rather than mixed in."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from warmstart.errors import UserError
from warmstart.files import atomic_write_text, process_alive
from warmstart.tuning.search import Search

STUDY_NAME = "warmstart-tune"


def trial_dir(out: Path, number: int) -> Path:
    """The run folder of trial ``number``."""
    return out / f"trial-{number:03d}"


def check_folder(search: Search) -> None:
    """Refuse a folder that another tune is using, or that holds something other than a search;
    --overwrite starts again. Optuna could share a study between processes, but two tunes on 2 cores
    would only slow each other down, and the second would take the first one's running trials for
    interrupted ones."""
    out = search.out
    try:
        pid = int((out / ".lock").read_text())
    except (OSError, ValueError):
        pid = None
    if pid and pid != os.getpid() and process_alive(pid):
        raise UserError(f"another `warmstart tune` (process {pid}) is using '{out}'")
    if search.cfg.overwrite and out.exists():
        shutil.rmtree(out)
    elif out.exists() and any(out.iterdir()) and not (out / "study.db").is_file():
        raise UserError(
            f"'{out}' already holds something other than a search; pass --overwrite to replace it, "
            "or choose another --out"
        )


@contextlib.contextmanager
def locked(out: Path):
    """The folder is this process's while the block runs (its pid in .lock)."""
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / ".lock", str(os.getpid()))
    try:
        yield
    finally:
        (out / ".lock").unlink(missing_ok=True)


@contextlib.contextmanager
def quiet_optuna():
    """Optuna logs every trial at INFO; tune says what happened in its own words."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def open_study(search: Search) -> Any:
    """Create the study in --out, or load the one there after checking it searches the same
    thing."""
    import optuna

    storage = f"sqlite:///{(search.out / 'study.db').resolve()}"
    existing = (search.out / "study.db").is_file()
    trials_so_far = (
        len(optuna.load_study(study_name=STUDY_NAME, storage=storage).trials) if existing else 0
    )
    sampler, pruner = _sampler_and_pruner(search, trials_so_far)
    study = optuna.create_study(
        storage=storage,
        study_name=STUDY_NAME,
        direction=search.direction,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    saved = study.user_attrs.get("setup")
    if saved is None:
        study.set_user_attr("setup", search.setup())
    elif saved != search.setup():
        differ = sorted(k for k in saved if saved[k] != search.setup().get(k))
        raise UserError(
            f"'{search.out}' holds a search with other settings ({', '.join(differ)}); pass"
            " --overwrite to start again, or choose another --out"
        )
    return study


def _sampler_and_pruner(search: Search, trials_so_far: int) -> tuple[Any, Any]:
    import optuna

    # Seeded by the trials already in the study too: a resumed search restarting the same random
    # stream would propose the very values its first trials already tried.
    sampler = optuna.samplers.TPESampler(seed=search.cfg.sampler_seed + trials_so_far)
    cfg = search.cfg
    if cfg.command == "probe" or cfg.pruner == "none":
        return sampler, optuna.pruners.NopPruner()
    # Steps are epochs from 1: pruning may start after prune_warmup epochs.
    if cfg.pruner == "hyperband":
        return sampler, optuna.pruners.HyperbandPruner(
            min_resource=cfg.prune_warmup + 1, max_resource="auto"
        )
    return sampler, optuna.pruners.MedianPruner(
        n_startup_trials=cfg.prune_after, n_warmup_steps=cfg.prune_warmup + 1
    )


def recover_interrupted(study: Any, search: Search, say) -> None:
    """Trials still RUNNING were cut off by a killed search (the lock rules out a live one): mark
    them failed, delete their half-written folders and run their parameters again first."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        shutil.rmtree(trial_dir(search.out, t.number), ignore_errors=True)
        if set(t.params) == {p.name for p in search.params}:
            study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number})
        say(f"trial {t.number} was interrupted: marked failed; its parameters run again")


def counted(study: Any) -> int:
    """Trials that count towards --trials: complete, pruned, or failed because the training diverged
    (a result); trials failed by an interruption run again."""
    from optuna.trial import TrialState

    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and t.user_attrs.get("note") == "diverged")
        for t in study.get_trials(deepcopy=False)
    )
