"""`warmstart tune`: hyperparameter search with Optuna (TPE sampler, median or Hyperband pruning)
over the options of `finetune` or `probe`.

    out/
      study.db              the Optuna study (SQLite): the same command run again resumes it
      trial-NNN/            one ordinary run folder per trial (its checkpoints are deleted when it ends)
      logs/trial-NNN.yaml   the options the trial was started with: the base config plus the sampled values
      logs/trial-NNN.log    the trial's own output
      best/                 a copy of the best complete trial's run folder (config.yaml, model/...)
      best.json             its number, value and parameters
      trials.csv            every trial: number, state, value, parameters, epochs run, seconds
      trials.png            the metric per trial, pruned ones marked

Each trial runs `python -m warmstart COMMAND --config logs/trial-NNN.yaml` in a subprocess, the
command line's own code path. A subprocess because pruning needs the valid metric of each epoch
while the trial runs and the training loop has no callback for it: tune reads the epoch lines of the
trial's history.jsonl as they are written, reports them to Optuna and, when the pruner says so,
stops the process, which frees its memory at once. (A thread could not be stopped, and tasks do not
call each other in this package.) A trial's value is the valid metric of the epoch whose model the
run keeps (its best epoch), so best/ holds exactly the model that won, never the last one trained.

Resuming: trials are counted in study.db; the same command runs only the trials still missing. A
trial left running by a killed search is marked failed, its half-written folder deleted and its
parameters run again first."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from warmstart.config import (
    FinetuneConfig,
    ProbeConfig,
    TuneConfig,
    build,
    make,
    read_config_file,
    refuse_inapplicable,
)
from warmstart.errors import UserError
from warmstart.files import (
    atomic_dir,
    atomic_file,
    atomic_write_json,
    atomic_write_text,
    process_alive,
    read_jsonl,
)
from warmstart.runs import Run

COMMAND_CONFIGS: dict[str, type] = {"finetune": FinetuneConfig, "probe": ProbeConfig}
# Set by tune for every trial, so neither the base config nor the space may choose them.
OWNED = ("out", "overwrite", "resume")
# The valid metrics a probe's metrics.json holds (metrics.classification_metrics).
PROBE_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "precision_macro", "recall_macro")
SPEC_KEYS = {
    "float": ("low", "high", "log", "step"),
    "int": ("low", "high", "log", "step"),
    "categorical": ("choices",),
}
STUDY_NAME = "warmstart-tune"
POLL_SECONDS = 0.5  # how often a running trial's history.jsonl is read: an epoch lasts far longer


@dataclass
class Param:
    """One searched option and its distribution, as the space file gives it."""

    name: str
    type: str  # float, int or categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list[Any] = field(default_factory=list)

    def values_to_check(self) -> list[Any]:
        """Values whose acceptance by the option shows every sampled value is accepted (bounds are
        intervals)."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(
                self.name, self.low, self.high, step=self.step or 1, log=self.log
            )
        return trial.suggest_categorical(self.name, self.choices)


@dataclass
class Search:
    """Everything checked before any work: the tuned command, the base options, the space, metric
    and direction."""

    cfg: TuneConfig
    cls: type
    base: dict[str, Any]
    params: list[Param]
    space: dict[str, Any]
    metric: (
        str | None
    )  # None: finetune resolves its default (per task); read from the first trial's config.yaml
    direction: str  # maximize or minimize

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    def setup(self) -> dict[str, Any]:
        """What a resumed search must share with the one in the folder (trials, timeout and pruner
        may change)."""
        return json.loads(
            json.dumps(
                {
                    "command": self.cfg.command,
                    "base": self.base,
                    "space": self.space,
                    "metric": self.metric,
                    "direction": self.direction,
                },
                default=str,
            )
        )


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


# ---- checking the input, before any work ----


def _number(value: Any, integral: bool) -> float | int | None:
    """A bound as a number, or None. Strings are read too: YAML 1.1 (PyYAML) reads 1e-5 as the
    string '1e-5'."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = int(value) if integral else float(value)
        except ValueError:
            return None
    if integral:
        return value if isinstance(value, int) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _parse_param(name: str, spec: dict, bad) -> Param:
    kind = spec.get("type")
    if kind not in SPEC_KEYS:
        raise bad(f"type must be float, int or categorical, got {kind!r}")
    unknown = sorted(str(k) for k in spec if k != "type" and k not in SPEC_KEYS[kind])
    if unknown:
        raise bad(
            f"unknown key(s) {', '.join(unknown)} for type {kind} (known: type,"
            f" {', '.join(SPEC_KEYS[kind])})"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise bad("choices must be a non-empty list, e.g. choices: [8, 16]")
        if not all(c is None or isinstance(c, (str, int, float, bool)) for c in choices):
            raise bad("each choice must be a single value (number, string, true/false or null)")
        return Param(name, kind, choices=choices)
    integral = kind == "int"
    low, high = (_number(spec.get(k), integral) for k in ("low", "high"))
    for key, value in (("low", low), ("high", high)):
        if value is None:
            raise bad(
                f"{key} must be {'an integer' if integral else 'a number'}, got {spec.get(key)!r}"
            )
    if not low < high:
        raise bad(f"low ({spec['low']}) must be below high ({spec['high']})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise bad(f"log must be true or false, got {log!r}")
    step = spec.get("step")
    if step is not None:
        step = _number(step, integral)
        if step is None or step <= 0:
            raise bad(
                f"step must be a positive {'integer' if integral else 'number'}, got"
                f" {spec.get('step')!r}"
            )
        if log and step != 1:
            raise bad("log and step cannot be combined (Optuna samples a log scale without steps)")
    if log and low <= 0:
        raise bad(f"a log scale needs low > 0, got {spec['low']}")
    return Param(name, kind, low=low, high=high, log=log, step=step)


def read_space(
    path: str, cls: type, base: dict[str, Any], command: str
) -> tuple[list[Param], dict]:
    """The searched options of ``path``, each checked against ``cls``: a known option not set by
    tune, a valid distribution, and every value it can take accepted by the option (type, choices,
    declared range)."""
    where = f"space file '{path}'"
    raw = _read_yaml(path, "space file")
    if not raw:
        raise UserError(f"{where} names no option to search")
    fields = [f.name for f in dataclasses.fields(cls)]
    params = []
    for key, spec in raw.items():
        name = str(key).replace("-", "_")

        def bad(msg: str, key: Any = key) -> UserError:
            return UserError(f"{where}, key '{key}': {msg}")

        if name not in fields:
            raise bad(f"unknown option of {command} (known: {', '.join(fields)})")
        if name in (*OWNED, "metric_for_best"):
            raise bad(
                "is set by tune, not searched (the metric trials are compared on is tune's"
                " --metric)"
            )
        if not isinstance(spec, dict):
            raise bad("must be a mapping such as {type: float, low: 1e-5, high: 1e-3, log: true}")
        param = _parse_param(name, spec, bad)
        for value in param.values_to_check():
            try:
                build(cls, {**base, name: value}, source=where)
            except UserError as e:
                raise bad(f"{value!r} is not a valid value: {e}") from None
        params.append(param)
    return params, {str(k).replace("-", "_"): v for k, v in raw.items()}


def _read_yaml(path: str, what: str) -> dict:
    if not path:
        raise UserError(
            f"tune needs a {what}: --{'space' if what == 'space file' else 'base'} FILE"
        )
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} '{path}' does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{what} '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is not None and not isinstance(data, dict):
        raise UserError(f"{what} '{path}' must hold a mapping of option: distribution")
    return data or {}


def _read_base(cfg: TuneConfig, cls: type) -> dict[str, Any]:
    """The base options, checked as the tuned command checks its --config file. Its
    out/overwrite/resume are dropped: a finished run's config.yaml (which names its out) is a
    natural base."""
    if not cfg.base:
        raise UserError(
            "tune needs the options of the command it tunes: --base FILE (YAML or TOML)"
        )
    values = {k: v for k, v in read_config_file(cfg.base).items() if k not in OWNED}
    parsed = build(cls, values, source=f"base config '{cfg.base}'")
    for key in ("data", "train", "valid", "test"):
        value = getattr(parsed, key, None)
        if isinstance(value, str) and value and not Path(value).expanduser().exists():
            raise UserError(f"base config '{cfg.base}', key '{key}': file '{value}' does not exist")
    if not (getattr(parsed, "valid", None) or (parsed.split and len(parsed.split.split(",")) > 1)):
        raise UserError(
            f"base config '{cfg.base}': trials are compared on a validation split; give it valid:"
            " FILE or a split with a valid part (e.g. split: 0.8,0.1,0.1)"
        )
    return values


def _metric_and_direction(cfg: TuneConfig, base: dict[str, Any]) -> tuple[str | None, str]:
    if cfg.command == "probe":
        metric = cfg.metric or "accuracy"
        if metric not in PROBE_METRICS:
            raise UserError(
                f"--metric {metric}: a probe's valid metrics are {', '.join(PROBE_METRICS)}"
            )
    else:
        metric = cfg.metric or base.get("metric_for_best")
        allowed = {f.name: f for f in dataclasses.fields(FinetuneConfig)}[
            "metric_for_best"
        ].metadata["choices"]
        if metric is not None and metric not in allowed:
            raise UserError(f"--metric {metric}: finetune compares epochs on {', '.join(allowed)}")
    if cfg.direction != "auto":
        return metric, cfg.direction
    return metric, "minimize" if metric == "loss" else "maximize"


def plan(cfg: TuneConfig) -> Search:
    """Check the base config, the space file and the options; raises UserError before anything is
    written."""
    cls = COMMAND_CONFIGS[cfg.command]
    if cfg.command == "probe":
        refuse_inapplicable(
            cfg, ("pruner", "prune_after", "prune_warmup"), "--command probe (it has no epochs)"
        )
    elif cfg.pruner == "none":
        refuse_inapplicable(cfg, ("prune_after", "prune_warmup"), "--pruner none")
    elif cfg.pruner == "hyperband":
        refuse_inapplicable(cfg, ("prune_after",), "--pruner hyperband")
    base = _read_base(cfg, cls)
    params, space = read_space(cfg.space, cls, base, cfg.command)
    metric, direction = _metric_and_direction(cfg, base)
    return Search(cfg, cls, base, params, space, metric, direction)


# ---- the study and its folder ----


def _check_folder(search: Search) -> None:
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
def _locked(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / ".lock", str(os.getpid()))
    try:
        yield
    finally:
        (out / ".lock").unlink(missing_ok=True)


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


def _storage(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').resolve()}"


def _open(search: Search) -> Any:
    """Create the study in --out, or load the one there after checking it searches the same
    thing."""
    import optuna

    storage = _storage(search.out)
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


def open_study(config: TuneConfig | None = None, **kwargs) -> Any:
    """The Optuna study of a search, created in --out if need be (after the same checks as `tune`),
    e.g. to enqueue values to try first: ``open_study(cfg).enqueue_trial({"lr": 1e-4})``, then
    ``tune(cfg)``."""
    search = plan(make(TuneConfig, config, kwargs))
    _check_folder(search)
    search.out.mkdir(parents=True, exist_ok=True)
    with _quiet_optuna():
        return _open(search)


def _recover_interrupted(study: Any, search: Search, say) -> None:
    """Trials still RUNNING were cut off by a killed search (the lock rules out a live one): mark
    them failed, delete their half-written folders and run their parameters again first."""
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(t.number, state=TrialState.FAIL)
        shutil.rmtree(_trial_dir(search.out, t.number), ignore_errors=True)
        if set(t.params) == {p.name for p in search.params}:
            study.enqueue_trial(t.params, user_attrs={"rerun_of": t.number})
        say(f"trial {t.number} was interrupted: marked failed; its parameters run again")


def _counted(study: Any) -> int:
    """Trials that count towards --trials: complete, pruned, or failed because the training diverged
    (a result); trials failed by an interruption run again."""
    from optuna.trial import TrialState

    return sum(
        t.state in (TrialState.COMPLETE, TrialState.PRUNED)
        or (t.state == TrialState.FAIL and t.user_attrs.get("note") == "diverged")
        for t in study.get_trials(deepcopy=False)
    )


# ---- one trial ----


def _trial_dir(out: Path, number: int) -> Path:
    return out / f"trial-{number:03d}"


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def _trial_options(search: Search, params: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    values = {
        "progress": False,
        **search.base,
        **params,
        "out": str(run_dir.resolve()),
        "overwrite": True,
    }
    if search.cfg.command == "finetune":
        values["resume"] = False
        if (
            search.metric
        ):  # the epoch each trial keeps is the best by the metric the trials are compared on
            values["metric_for_best"] = search.metric
    return values


def _launch(command: str, options: Path, log: Path) -> subprocess.Popen:
    """`python -m warmstart COMMAND --config OPTIONS`, its output into ``log``. On Linux it is
    killed with tune (PR_SET_PDEATHSIG): a search killed with SIGKILL leaves no orphan training
    on."""
    preexec = None
    if sys.platform == "linux":
        import ctypes

        libc, parent = ctypes.CDLL(None, use_errno=True), os.getpid()

        def preexec() -> None:
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            if os.getppid() != parent:  # tune died before the line above took effect
                os._exit(1)

    with open(log, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "warmstart", command, "--config", str(options)],
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _resolved_metric(search: Search, run_dir: Path) -> str | None:
    """The metric a finetune trial keeps its best epoch by: tune's, else what the run resolved
    (config.yaml)."""
    return search.metric or Run(run_dir, quiet=True).saved_config().get("metric_for_best")


def _epoch_values(search: Search, run_dir: Path) -> list[tuple[int, float]]:
    """(epoch, valid metric) of each epoch line the trial has written so far."""
    history = read_jsonl(run_dir / "history.jsonl")
    if not history or search.cfg.command != "finetune":
        return []
    metric = _resolved_metric(search, run_dir)
    key = f"valid_{metric}"
    return [(int(r["epoch"]), float(r[key])) for r in history if key in r]


def _watch(
    proc: subprocess.Popen, trial: Any, search: Search, run_dir: Path, deadline: float | None, say
) -> str:
    """Report each epoch's valid metric to Optuna as the trial writes it; stop the process when the
    pruner says so or the time is up. Returns 'ended', 'pruned' or 'timeout'."""
    reported: set[int] = set()
    while True:
        ended = proc.poll() is not None
        for epoch, value in _epoch_values(search, run_dir):
            if epoch in reported:
                continue
            reported.add(epoch)
            trial.report(value, epoch)
            say(
                f"trial {trial.number}: epoch {epoch} valid {_resolved_metric(search, run_dir)}"
                f" {value:.4f}"
            )
            if not ended and trial.should_prune():
                _stop(proc)
                return "pruned"
        if ended:
            return "ended"
        if deadline is not None and time.time() >= deadline:
            _stop(proc)
            return "timeout"
        time.sleep(POLL_SECONDS)


def _final_value(search: Search, run_dir: Path) -> float:
    """The trial's value: the valid metric of the epoch whose model the run kept (finetune), or of
    the probe."""
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    if search.cfg.command == "probe":
        return float(metrics["valid"][search.metric])
    key = f"valid_{_resolved_metric(search, run_dir)}"
    return float(next(e[key] for e in metrics["epochs"] if e["epoch"] == metrics["best_epoch"]))


def _last_error(log: Path) -> str:
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else (lines[-1] if lines else "no output")


def _run_trial(study: Any, search: Search, deadline: float | None, say) -> None:
    """Ask Optuna for values, run the trial, tell Optuna how it ended."""
    from optuna.trial import TrialState

    trial = study.ask()
    params = {p.name: p.suggest(trial) for p in search.params}
    run_dir = _trial_dir(search.out, trial.number)
    logs = search.out / "logs"
    options, log = logs / f"{run_dir.name}.yaml", logs / f"{run_dir.name}.log"
    atomic_write_text(
        options, yaml.safe_dump(_trial_options(search, params, run_dir), sort_keys=False)
    )
    say(f"trial {trial.number}: {_describe(params)}")
    proc = _launch(search.cfg.command, options, log)
    try:
        how = _watch(proc, trial, search, run_dir, deadline, say)
    except BaseException:  # Ctrl-C, or a bug here: the trial must not train on unwatched
        _stop(proc)
        _interrupted(study, trial, params, "interrupted", run_dir)
        raise
    finally:
        # Tune never resumes a trial (an interrupted one runs again from the start): its
        # checkpoints, with their optimizer states, would only fill the disk, trial after trial.
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    resolved = _resolved_metric(search, run_dir)
    if search.metric is None and resolved and "metric" not in study.user_attrs:
        study.set_user_attr(
            "metric", resolved
        )  # finetune's default, as the trial resolved it: for the files
    if how == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        say(f"trial {trial.number}: pruned")
    elif how == "timeout":
        _interrupted(study, trial, params, "time limit", run_dir)
        say(
            f"trial {trial.number}: stopped at the time limit; it runs again first when the search"
            " resumes"
        )
    elif proc.returncode in (130, -signal.SIGINT):  # Ctrl-C reached the trial before tune saw it
        _interrupted(study, trial, params, "interrupted", run_dir)
        raise KeyboardInterrupt
    elif proc.returncode != 0:
        trial.set_user_attr("note", "error")
        study.tell(trial, state=TrialState.FAIL)
        message = (
            f"trial {trial.number} ({_describe(params)}) failed: {_last_error(log)} (its output:"
            f" {log})"
        )
        if (
            proc.returncode == UserError.exit_code
        ):  # bad input the checks could not see (a bad model name...)
            raise UserError(message)
        raise RuntimeError(message)
    else:
        value = _final_value(search, run_dir)
        if math.isfinite(value):
            study.tell(trial, value)
            say(f"trial {trial.number}: valid {_resolved_metric(search, run_dir)} {value:.4f}")
        # Optuna refuses NaN; training that diverged is still a result for this point of the space
        else:
            trial.set_user_attr("note", "diverged")
            study.tell(trial, state=TrialState.FAIL)
            say(f"trial {trial.number}: diverged (valid metric {value})")


def _interrupted(study: Any, trial: Any, params: dict, why: str, run_dir: Path) -> None:
    """A trial cut off (Ctrl-C, time limit): failed, its half-written folder deleted, its values
    queued to run again first, as for a trial a killed search left running
    (_recover_interrupted)."""
    from optuna.trial import TrialState

    trial.set_user_attr("note", why)
    study.tell(trial, state=TrialState.FAIL)
    shutil.rmtree(run_dir, ignore_errors=True)
    study.enqueue_trial(params, user_attrs={"rerun_of": trial.number})


# ---- results ----


def _rows(study: Any, params: list[Param]) -> list[dict]:
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
                "run_dir": _trial_dir(Path("."), t.number).name,
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


def _publish(study: Any, search: Search) -> TuneResult:
    """best/ (a copy of the best trial's run folder, replaced only when another trial becomes the
    best), best.json, trials.csv and trials.png, each written atomically, after every trial."""
    out = search.out
    rows = _rows(study, search.params)
    best = _best(rows, search.direction)
    metric = search.metric or study.user_attrs.get("metric") or "metric"
    best_json = out / "best.json"
    if best is not None:
        saved = json.loads(best_json.read_text(encoding="utf-8")) if best_json.is_file() else {}
        if saved.get("trial") != best["number"] or not (out / "best").is_dir():
            source = _trial_dir(out, best["number"])
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
        out / "best" if best else None,
        best and best["number"],
        best and best["value"],
        {p.name: best[p.name] for p in search.params} if best else {},
        metric,
        search.direction,
        rows,
    )


@contextlib.contextmanager
def _quiet_optuna():
    """Optuna logs every trial at INFO; tune says what happened in its own words."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def tune(config: TuneConfig | None = None, **kwargs) -> TuneResult:
    """Search the options of ``config.space`` for ``config.command`` run with ``config.base``;
    returns the best trial (its copy in ``out/best``) and every trial's row of trials.csv."""
    t0 = time.time()
    cfg = make(TuneConfig, config, kwargs)
    search = plan(cfg)  # bad input fails here, before anything is written
    _check_folder(search)
    run = Run(search.out)
    deadline = t0 + cfg.timeout if cfg.timeout else None
    with _locked(search.out), _quiet_optuna():
        study = _open(search)
        _recover_interrupted(study, search, run.say)
        done = _counted(study)
        if done:
            run.say(f"resuming the search in '{search.out}': {done} of {cfg.trials} trials done")
        result = _publish(study, search)
        while _counted(study) < cfg.trials:
            if deadline is not None and time.time() >= deadline:
                run.say(
                    f"time limit reached ({cfg.timeout:g}s): {_counted(study)} of {cfg.trials}"
                    " trials done"
                )
                break
            try:
                _run_trial(study, search, deadline, run.say)
            # after an interruption or a failed trial too: the files show every trial told to Optuna
            finally:
                result = _publish(study, search)
    return result


def report(cfg: TuneConfig, result: TuneResult) -> str:
    counts = ", ".join(
        f"{result.count(s)} {s}" for s in ("complete", "pruned", "fail") if result.count(s)
    )
    text = f"search folder: {result.out_dir} ({len(result.trials)} trials: {counts or 'none'})\n"
    if result.best_trial is None:
        return text + "no trial completed\n"
    return (
        text + f"best: trial {result.best_trial}, valid {result.metric} {result.best_value:.4f} "
        f"({_describe(result.best_params)})\nbest run folder: {result.best_dir}\n"
    )
