"""One trial: Optuna's values written as the tuned command's options, the command run in its own
process, its epochs reported to Optuna as they end, the trial stopped when the pruner says so or the
time is up, and Optuna told how the trial ended.

Each trial runs `python -m warmstart COMMAND --config logs/trial-NNN.yaml`, the command line's own
code path, in a subprocess: stopping a process frees its memory at once (a thread could not be
stopped), and tasks do not call each other in this package. The epochs come up a pipe: tune opens
one per trial, the trial inherits its write end, and the trial's engine, through the callback in
callbacks/pipe.py, writes each epoch's record there as one JSON line the moment the epoch ends. Two
threads wait for the trial (its next line, its exit) and queue what they see; the search waits on that
queue, so it acts on an epoch as soon as it ends and never reads the trial's files while it runs.

The search answers each epoch down a second pipe: go on, or stop (the pruner's verdict). A stopped
trial ends its epoch as any early stop does (history line, model, checkpoint), says its training has
ended, and the search then ends its process before it scores its test split: a pruned trial's folder
is whole, and holds no metrics.json.

A trial's value is the valid metric of the epoch whose model the run keeps (its best epoch, from its
metrics.json), so best/ holds exactly the model that won, never the last one trained."""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from warmstart.callbacks import pipe
from warmstart.errors import UserError
from warmstart.files import atomic_write_text
from warmstart.runs import Run
from warmstart.tuning.search import Search
from warmstart.tuning.study import trial_dir, worker

# Once a trial has exited, every line it wrote is already in the pipe; this is only how long reading
# them may take before the pipe counts as drained (a process the trial left behind may hold it open).
EXIT_GRACE_SECONDS = 5.0
# How long a trial told to stop may take to finish its epoch (save its model and checkpoint) and say
# its training has ended, before its process is stopped all the same.
STOP_GRACE_SECONDS = 300.0


def run_trial(study: Any, search: Search, deadline: float | None, say) -> None:
    """Ask Optuna for values, run the trial, tell Optuna how it ended."""
    from optuna.trial import TrialState

    trial = study.ask()
    # Whose it is: with a shared --storage, only its own worker (or a rerun on its machine after
    # that worker died) may take it for interrupted.
    trial.set_user_attr("worker", worker())
    params = {p.name: p.suggest(trial) for p in search.params}
    run_dir = trial_dir(search.out, trial.number)
    logs = search.out / "logs"
    options, log = logs / f"{run_dir.name}.yaml", logs / f"{run_dir.name}.log"
    atomic_write_text(
        options, yaml.safe_dump(trial_options(search, params, run_dir), sort_keys=False)
    )
    say(f"trial {trial.number}: {describe(params)}")
    process = TrialProcess(search.cfg.command, options, log)
    try:
        how = watch(process, trial, search, run_dir, deadline, say)
    except BaseException:  # Ctrl-C, or a bug here: the trial must not train on unwatched
        process.stop()
        interrupted(study, trial, params, "interrupted", run_dir)
        raise
    finally:
        process.close()
        # Tune never resumes a trial (an interrupted one runs again from the start): its
        # checkpoints, with their optimizer states, would only fill the disk, trial after trial.
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    returncode = process.proc.returncode
    resolved = resolved_metric(search, run_dir)
    if search.metric is None and resolved and "metric" not in study.user_attrs:
        # finetune's default, as the trial resolved it: for the files
        study.set_user_attr("metric", resolved)
    if how == "pruned":
        study.tell(trial, state=TrialState.PRUNED)
        say(f"trial {trial.number}: pruned")
    elif how == "timeout":
        interrupted(study, trial, params, "time limit", run_dir)
        say(
            f"trial {trial.number}: stopped at the time limit; it runs again first when the search"
            " resumes"
        )
    elif returncode in (130, -signal.SIGINT):  # Ctrl-C reached the trial before tune saw it
        interrupted(study, trial, params, "interrupted", run_dir)
        raise KeyboardInterrupt
    elif returncode != 0:
        trial.set_user_attr("note", "error")
        study.tell(trial, state=TrialState.FAIL)
        message = (
            f"trial {trial.number} ({describe(params)}) failed: {_last_error(log)} (its output:"
            f" {log})"
        )
        if returncode == UserError.exit_code:  # bad input the checks could not see (a model name)
            raise UserError(message)
        raise RuntimeError(message)
    else:
        value = final_value(search, run_dir)
        if math.isfinite(value):
            study.tell(trial, value)
            say(f"trial {trial.number}: valid {resolved} {value:.4f}")
        # Optuna refuses NaN; training that diverged is still a result for this point of the space
        else:
            trial.set_user_attr("note", "diverged")
            study.tell(trial, state=TrialState.FAIL)
            say(f"trial {trial.number}: diverged (valid metric {value})")


def trial_options(search: Search, params: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The trial's options file: the tuned options, the sampled values over them, and what tune
    sets."""
    values = {
        "progress": False,
        **search.base,
        **params,
        "out": str(run_dir.resolve()),
        "overwrite": True,
    }
    if search.cfg.command == "finetune":
        values["resume"] = False
        # the epoch each trial keeps is the best by the metric the trials are compared on
        if search.metric:
            values["metric_for_best"] = search.metric
    return values


def describe(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


class TrialProcess:
    """`python -m warmstart COMMAND --config OPTIONS`, its output into ``log``, and its channel:
    ``events`` yields, in the order they happen, ("line", bytes) for each line the trial sends,
    ("eof", None) when its pipe closes and ("exit", returncode) when the process ends; ``answer``
    sends the search's verdict on an epoch."""

    def __init__(self, command: str, options: Path, log: Path):
        events_in, events_out = os.pipe()  # trial -> search
        verdicts_in, verdicts_out = os.pipe()  # search -> trial
        given = (events_out, verdicts_in)
        try:
            with open(log, "wb") as f:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "warmstart", command, "--config", str(options)],
                    stdin=subprocess.DEVNULL,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    pass_fds=given,
                    env={**os.environ, **pipe.environment(*given)},
                    preexec_fn=_dies_with_parent(),
                )
        except BaseException:
            os.close(events_in)
            os.close(verdicts_out)
            raise
        finally:
            # The trial holds the only copies of its ends now: the events pipe ends when it does.
            for fd in given:
                os.close(fd)
        self.verdicts: int | None = verdicts_out
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, args=(events_in,), daemon=True).start()
        threading.Thread(target=self._wait, daemon=True).start()

    def _read(self, fd: int) -> None:
        with open(fd, "rb") as f:
            for line in f:
                self.events.put(("line", line))
        self.events.put(("eof", None))

    def _wait(self) -> None:
        self.events.put(("exit", self.proc.wait()))

    def next(self, timeout: float | None) -> tuple[str, Any] | None:
        """The next event, or None when ``timeout`` seconds pass without one."""
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    def answer(self, stop: bool, reason: str = "") -> None:
        """The verdict on the epoch the trial just sent (it waits for it)."""
        if self.verdicts is None:
            return
        line = json.dumps({"stop": True, "reason": reason} if stop else {"stop": False})
        try:
            os.write(self.verdicts, (line + "\n").encode("utf-8"))
        except OSError:  # the trial has ended
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def close(self) -> None:
        """The search's end of the verdicts pipe (the events' closes when the trial's does)."""
        if self.verdicts is not None:
            os.close(self.verdicts)
            self.verdicts = None


def _dies_with_parent():
    """On Linux a trial is killed with tune (PR_SET_PDEATHSIG): a search killed with SIGKILL leaves
    no orphan training on. Returns the function the child runs before it starts, or None."""
    if sys.platform != "linux":
        return None
    import ctypes

    libc, parent = ctypes.CDLL(None, use_errno=True), os.getpid()

    def preexec() -> None:
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # tune died before the line above took effect
            os._exit(1)

    return preexec


def watch(
    process: TrialProcess, trial: Any, search: Search, run_dir: Path, deadline: float | None, say
) -> str:
    """Report each epoch's valid metric to Optuna as the trial sends it and answer with the pruner's
    verdict; stop the process once a pruned trial has ended its training, or when the time is up.
    Returns 'ended', 'pruned' or 'timeout'."""
    exited = drained = False
    stopped_at = None  # when the trial was told to stop
    metric = None  # the metric the trial keeps its best epoch by: known once it has begun
    while not (exited and drained):
        limits = [] if deadline is None else [deadline]
        if stopped_at is not None:
            limits.append(stopped_at + STOP_GRACE_SECONDS)
        if exited:
            timeout = EXIT_GRACE_SECONDS
        else:
            timeout = max(0.0, min(limits) - time.time()) if limits else None
        event = process.next(timeout)
        if event is None:
            if exited:  # the pipe is held open by a process the trial left behind: all is read
                break
            process.stop()
            return "pruned" if stopped_at is not None else "timeout"
        kind, data = event
        if kind == "exit":
            exited = True
        elif kind == "eof":  # before the exit too, when the trial closed its end itself
            drained = True
        elif (message := _message(data)).get("event") == "train_end" and stopped_at is not None:
            process.stop()
            return "pruned"
        elif message.get("event") == "epoch_end":
            record = message.get("record") or {}
            metric = metric or resolved_metric(search, run_dir)
            value = record.get(f"valid_{metric}") if "epoch" in record else None
            prune = False
            if value is not None:
                epoch = int(record["epoch"])
                trial.report(float(value), epoch)
                say(f"trial {trial.number}: epoch {epoch} valid {metric} {value:.4f}")
                # Once the trial has exited its result stands: its last epochs are only reported.
                prune = not exited and stopped_at is None and trial.should_prune()
            # The trial waits for an answer to every epoch it sends.
            if prune:
                process.answer(True, f"pruned by tune: valid {metric} {value:.4f} at epoch {epoch}")
                stopped_at = time.time()
            else:
                process.answer(False)
    return "pruned" if stopped_at is not None else "ended"


def _message(line: bytes) -> dict:
    """A line from the trial ({} for one that is not a message: not ours, or cut short by a
    kill)."""
    try:
        message = json.loads(line)
    except ValueError:
        return {}
    return message if isinstance(message, dict) else {}


def resolved_metric(search: Search, run_dir: Path) -> str | None:
    """The metric a finetune trial keeps its best epoch by: tune's, else what the run resolved
    (config.yaml)."""
    return search.metric or Run(run_dir, quiet=True).saved_config().get("metric_for_best")


def final_value(search: Search, run_dir: Path) -> float:
    """The trial's value: the valid metric of the epoch whose model the run kept (finetune), or of
    the probe."""
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    if search.cfg.command == "probe":
        return float(metrics["valid"][search.metric])
    key = f"valid_{resolved_metric(search, run_dir)}"
    return float(next(e[key] for e in metrics["epochs"] if e["epoch"] == metrics["best_epoch"]))


def interrupted(study: Any, trial: Any, params: dict, why: str, run_dir: Path) -> None:
    """A trial cut off (Ctrl-C, time limit): failed, its half-written folder deleted, its values
    queued to run again first, as for a trial a killed search left running
    (study.recover_interrupted)."""
    from optuna.trial import TrialState

    trial.set_user_attr("note", why)
    study.tell(trial, state=TrialState.FAIL)
    shutil.rmtree(run_dir, ignore_errors=True)
    study.enqueue_trial(params, user_attrs={"rerun_of": trial.number})


def _last_error(log: Path) -> str:
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return errors[-1] if errors else (lines[-1] if lines else "no output")
