"""The search folder and the Optuna study in it (study.db): refusing a folder in use or holding
something else, creating or resuming the study, and recovering the trials a killed search left
running.

Trials are counted in study.db, so the same command run again runs only the trials still missing;
a search with other settings in the folder is refused rather than mixed in."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
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
    interrupted ones: sharing is asked for by --storage, whose workers may share one folder."""
    out = search.out
    if search.shared and search.cfg.overwrite:
        raise UserError(
            "--overwrite with --storage: other workers may be using the study; delete it with"
            f" `optuna delete-study --storage URL --study-name {search.cfg.study_name}` and remove"
            f" '{out}' yourself, or choose another --study-name"
        )
    try:
        pid = int((out / ".lock").read_text())
    except (OSError, ValueError):
        pid = None
    if pid and pid != os.getpid() and process_alive(pid):
        raise UserError(f"another `warmstart tune` (process {pid}) is using '{out}'")
    if search.cfg.overwrite and out.exists():
        shutil.rmtree(out)
    elif (
        out.exists()
        and any(out.iterdir())
        and not (out / "study.db").is_file()
        and not (out / "study.json").is_file()
    ):
        raise UserError(
            f"'{out}' already holds something other than a search; pass --overwrite to replace it, "
            "or choose another --out"
        )


@contextlib.contextmanager
def locked(search: Search):
    """The folder is this process's while the block runs (its pid in .lock); with --storage it is
    shared with the study's other workers, and study.json names the study instead."""
    out = search.out
    out.mkdir(parents=True, exist_ok=True)
    if search.shared:
        where = {"storage": redact(search.storage), "study_name": search.cfg.study_name}
        atomic_write_text(out / "study.json", json.dumps(where, indent=1))
        yield
        return
    atomic_write_text(out / ".lock", str(os.getpid()))
    try:
        yield
    finally:
        (out / ".lock").unlink(missing_ok=True)


def redact(url: str) -> str:
    """``url`` without its password, for files and messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: open_storage says so
        return url


def open_storage(search: Search) -> Any:
    """Optuna's RDB storage at --storage (or the folder's study.db); one line when it cannot be
    reached."""
    import optuna

    url = search.storage
    # Several workers on one SQLite file take turns at its write lock: wait for it, not fail.
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except ModuleNotFoundError as e:
        raise UserError(
            f"--storage {redact(url)} needs the database driver {e.name}: pip install it"
            " (e.g. psycopg2-binary for PostgreSQL, pymysql for MySQL)"
        ) from None
    except Exception as e:  # SQLAlchemy's errors: a bad URL, a server down, a login refused
        raise UserError(
            f"--storage {redact(url)}: cannot open it: {str(e).strip().splitlines()[0]}"
        ) from None


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
    """Create the study in --storage (default: --out's study.db), or load the one there after
    checking it searches the same thing."""
    import optuna

    storage = open_storage(search)
    name = search.cfg.study_name
    existing = name in {s.study_name for s in storage.get_all_studies()}
    trials_so_far = (
        len(optuna.load_study(study_name=name, storage=storage).trials) if existing else 0
    )
    sampler, pruner = _sampler_and_pruner(search, trials_so_far)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
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
        where = (
            f"study '{name}' in {redact(search.storage)}" if search.shared else f"'{search.out}'"
        )
        fix = (
            "choose another --study-name"
            if search.shared
            else "pass --overwrite to start again, or choose another --out"
        )
        raise UserError(f"{where} holds a search with other settings ({', '.join(differ)}); {fix}")
    return study


def _sampler_and_pruner(search: Search, trials_so_far: int) -> tuple[Any, Any]:
    import optuna

    # Seeded by the trials already in the study too: a resumed search restarting the same random
    # stream would propose the very values its first trials already tried.
    seed = search.cfg.sampler_seed + trials_so_far
    if search.shared:
        # Workers sharing a study must not draw the same values: each its own seed, and TPE's
        # constant liar counts the others' running trials as (bad) results while they run.
        return _pruned(
            search, optuna.samplers.TPESampler(seed=seed + os.getpid(), constant_liar=True)
        )
    return _pruned(search, optuna.samplers.TPESampler(seed=seed))


def _pruned(search: Search, sampler: Any) -> tuple[Any, Any]:
    import optuna

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
    them failed, delete their half-written folders and run their parameters again first. With a
    shared --storage, only trials of this machine whose worker process is gone: the others are
    another worker's, running."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if search.shared and not orphaned(t.user_attrs.get("worker")):
            continue
        study.tell(t.number, state=TrialState.FAIL)
        shutil.rmtree(trial_dir(search.out, t.number), ignore_errors=True)
        if set(t.params) == {p.name for p in search.params}:
            study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number})
        say(f"trial {t.number} was interrupted: marked failed; its parameters run again")


def worker() -> dict:
    """Who runs a trial (a trial's user attribute): its host and tune process."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


def orphaned(who: dict | None) -> bool:
    """Whether a running trial's worker was on this machine and is gone."""
    if not who or who.get("host") != socket.gethostname():
        return False
    return who.get("pid") != os.getpid() and not process_alive(int(who.get("pid", 0)))


def in_hand(study: Any) -> int:
    """Trials counted (see ``counted``) plus those running now in any worker: a worker starts a
    trial only while this is short of --trials, so workers sharing a study do not overshoot."""
    from optuna.trial import TrialState

    return counted(study) + len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def counted(study: Any) -> int:
    """Trials that count towards --trials: complete, pruned, or failed because the training diverged
    (a result); trials failed by an interruption run again."""
    from optuna.trial import TrialState

    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and t.user_attrs.get("note") == "diverged")
        for t in study.get_trials(deepcopy=False)
    )


def wait_for_others(study: Any, search: Search, say, deadline: float | None = None) -> None:
    """With a shared --storage: wait until the other workers' trials end (a dead worker's on this
    machine excepted), so that the last publish sees the final best and best/ is copied once, by
    the worker whose --out holds it. Interrupting the wait loses nothing: the trials are in the
    storage, and the same command run again publishes them."""
    import time

    from optuna.trial import TrialState

    said = False
    while deadline is None or time.time() < deadline:
        running = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not orphaned(t.user_attrs.get("worker"))
        ]
        if not running:
            return
        if not said:
            say(f"waiting for {len(running)} trial(s) of other workers to end")
            said = True
        time.sleep(2)
