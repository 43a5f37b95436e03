"""`tune --storage URL --study-name NAME`: several `warmstart tune` processes on one Optuna storage
share one study: each trial runs once, in one worker, the search stops at --trials among them, and
the best model is copied once. The storage is a real PostgreSQL server started here on a loopback
port where PostgreSQL and a driver are installed, else one SQLite file (the skip reason says
which)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

import warmstart
from warmstart.errors import UserError
from warmstart.tasks.tune import open_study


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    initdb = found[-1] if found else shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def why_no_postgres() -> str | None:
    if postgres_bin() is None:
        return "PostgreSQL is not installed (no initdb): the workers share a SQLite file"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "no PostgreSQL driver (pip install psycopg2-binary): the workers share a SQLite file"
    return None


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    """A PostgreSQL server of our own on a loopback port (trust login), else a SQLite file URL."""
    if why_no_postgres():
        yield f"sqlite:///{tmp_path_factory.mktemp('optuna') / 'shared.db'}"
        return
    bin_dir, port = postgres_bin(), free_port()
    data = Path(tempfile.mkdtemp(prefix="warmstart-pg-"))
    # initdb and postgres refuse to run as root: as the postgres user then
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(data, "postgres")
    subprocess.run(
        [
            *as_user,
            str(bin_dir / "initdb"),
            "-D",
            str(data / "db"),
            "-A",
            "trust",
            "-U",
            "postgres",
        ],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    pg_ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log")]
    subprocess.run([*pg_ctl, "-o", options, "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def probe_search(tiny_models, imdb_head, tmp_path) -> dict:
    base = tmp_path / "probe.yaml"
    base.write_text(
        yaml.safe_dump(
            {
                "data": str(imdb_head),
                "split": "100,50",
                "model": str(tiny_models["bert"]),
                "max_length": 32,
            }
        )
    )
    space = tmp_path / "space.yaml"
    space.write_text(
        yaml.safe_dump({"c": {"type": "float", "low": 1e-3, "high": 10.0, "log": True}})
    )
    return dict(base=str(base), space=str(space), command="probe")


def test_workers_given_one_storage_open_one_study_and_a_bad_url_is_one_line(
    tiny_models, imdb_head, tmp_path
):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    search = probe_search(tiny_models, imdb_head, tmp_path)
    a = open_study(**search, storage=url, study_name="s", out=str(tmp_path / "a"))
    b = open_study(**search, storage=url, study_name="s", out=str(tmp_path / "b"))
    a.enqueue_trial({"c": 0.5})
    # one study, seen by both: b sees the trial a queued
    assert [(t.state.name, t.system_attrs["fixed_params"]) for t in b.get_trials()] == [
        ("WAITING", {"c": 0.5})
    ]
    assert not (tmp_path / "a" / "study.db").exists()  # it lives in the storage, not the folder
    with pytest.raises(UserError, match="--overwrite with --storage"):
        warmstart.tune(
            **search, storage=url, study_name="s", out=str(tmp_path / "a"), overwrite=True
        )
    with pytest.raises(UserError, match=r"--storage postgresql://u:\*\*\*@127\.0\.0\.1:1/x"):
        open_study(**search, storage="postgresql://u:secret@127.0.0.1:1/x", out=str(tmp_path / "c"))


@pytest.mark.slow
def test_two_tune_workers_on_one_storage_share_the_trials_and_keep_one_best(
    storage, tiny_models, imdb_head, tmp_path
):
    if reason := why_no_postgres():
        print(f"note: {reason}")
    search = probe_search(tiny_models, imdb_head, tmp_path)
    outs = [tmp_path / "worker-a", tmp_path / "worker-b"]
    flags = ["--base", search["base"], "--space", search["space"], "--command", "probe"]
    shared = ["--storage", storage, "--study-name", "two-workers", "--trials", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "warmstart", "tune", *flags, *shared, "--out", str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for out in outs
    ]
    for w in workers:
        _, err = w.communicate(timeout=900)
        assert w.returncode == 0, err[-3000:]

    import optuna

    study = optuna.load_study(study_name="two-workers", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.params["c"] for t in trials}) == 4  # no values drawn twice
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2  # both workers ran trials
    # each trial's run folder is in exactly one worker's --out
    folders = [p.name for out in outs for p in out.glob("trial-*")]
    assert sorted(folders) == [f"trial-{t.number:03d}" for t in trials]
    best = study.best_trial.number
    copies = [out for out in outs if (out / "best").is_dir()]
    assert len(copies) == 1 and (copies[0] / f"trial-{best:03d}").is_dir()
    for out in outs:
        assert json.loads((out / "best.json").read_text())["trial"] == best
