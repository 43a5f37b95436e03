"""A tune trial's end of its channel to the search: each epoch's record goes up one pipe, the pruner's
verdict comes back down another.

`warmstart tune` runs each trial as `python -m warmstart COMMAND` with two pipes open in the child
and named in its environment (``environment``). The engines build their callbacks with
``for_training``, which adds ``from_environment()``: outside a tune trial it is None and nothing
changes. Inside one, as each epoch ends:

    trial -> search   {"event": "epoch_end", "record": {"step": ..., "epoch": 1, "valid_loss": ...}}
    search -> trial   {"stop": false}   or   {"stop": true, "reason": "pruned by tune (...)"}

A stop is the engine's ordinary one (Control.stop): the epoch's history line, its model and its
checkpoint are written, training ends, and

    trial -> search   {"event": "train_end", "summary": {"best_epoch": ..., "stopped_early": ...}}

after which a pruned trial waits for the search to end its process: its test split is not scored
and it writes no metrics.json. Stopping the process rather than the loop frees its memory at once;
stopping it only here, rather than the moment the pruner decides, leaves its folder whole (the epoch
it was judged on is in history.jsonl, its model saved)."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from warmstart import distributed
from warmstart.callbacks.base import Callback, Control

# The descriptor numbers in the trial: the write end of the events pipe, the read end of the
# verdicts pipe; and which pipes they must be ("st_dev:st_ino" of each): under `--num-processes`
# the launched processes inherit the environment but not the descriptors, and those numbers may be
# other files there, which must not be written to or read from.
EVENTS_VARIABLE = "WARMSTART_TUNE_EVENTS_FD"
VERDICTS_VARIABLE = "WARMSTART_TUNE_VERDICTS_FD"
PIPES_VARIABLE = "WARMSTART_TUNE_PIPES"


def _identity(fd: int) -> str:
    st = os.fstat(fd)
    return f"{st.st_dev}:{st.st_ino}"


def environment(events: int, verdicts: int) -> dict[str, str]:
    """The variables a trial process needs to talk to its search: ``events`` is the write end of a
    pipe the search reads, ``verdicts`` the read end of one it writes. The caller passes both
    descriptors to the process too, e.g. ``subprocess.Popen(pass_fds=(events, verdicts))``."""
    return {
        EVENTS_VARIABLE: str(events),
        VERDICTS_VARIABLE: str(verdicts),
        PIPES_VARIABLE: f"{_identity(events)} {_identity(verdicts)}",
    }


class TunePipe(Callback):
    """Sends each epoch's record and the end of training to the search (one JSON line each), and
    stops training when the search's answer to an epoch says so."""

    def __init__(self, events: int, verdicts: int):
        self.events: int | None = events
        self.verdicts = verdicts
        self.pruned = False
        self._unread = b""

    def on_epoch_end(self, record: dict, control: Control) -> None:
        if not self._send({"event": "epoch_end", "record": record}):
            return
        verdict = self._receive()
        if verdict and verdict.get("stop"):
            self.pruned = True
            if not control.stop:
                control.stop, control.reason = True, str(verdict.get("reason") or "pruned by tune")

    def on_train_end(self, summary: dict) -> None:
        self._send({"event": "train_end", "summary": summary})
        if self.pruned:
            # The search ends this process now; should it close the pipe instead, the run goes on.
            while self._receive() is not None:
                pass

    def _send(self, message: dict) -> bool:
        if self.events is None:
            return False
        line = (json.dumps(message, default=_plain) + "\n").encode("utf-8")
        try:
            # os.write, not a buffered file: the line leaves at once (nothing to flush), and no file
            # object can close the descriptor behind another's back when it is collected. A line is
            # far below PIPE_BUF, so it arrives whole.
            os.write(self.events, line)
        except OSError:  # the search has gone (it is killed with its trials); training goes on
            self.events = None
            return False
        return True

    def _receive(self) -> dict | None:
        """The search's next line; None once it has closed its end."""
        while b"\n" not in self._unread:
            try:
                chunk = os.read(self.verdicts, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                return None
            self._unread += chunk
        line, self._unread = self._unread.split(b"\n", 1)
        try:
            message = json.loads(line)
        except ValueError:
            return {}
        return message if isinstance(message, dict) else {}


def _plain(value: Any) -> Any:
    """A numpy or torch scalar as a Python number; anything else as its text."""
    item = getattr(value, "item", None)
    return item() if callable(item) else str(value)


def from_environment() -> TunePipe | None:
    """The channel to the tune search this process is a trial of, on the main process only; None
    outside a search, and when the descriptors named are not its pipes (see PIPES_VARIABLE)."""
    named = (os.environ.get(EVENTS_VARIABLE), os.environ.get(VERDICTS_VARIABLE))
    if not all(named) or not distributed.is_main():
        return None
    try:
        events, verdicts = (int(v) for v in named)
        for fd in (events, verdicts):
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return None
        if f"{_identity(events)} {_identity(verdicts)}" != os.environ.get(PIPES_VARIABLE):
            return None
        # Processes this one starts must not hold the pipes: the search reads the events to their
        # end.
        for fd in (events, verdicts):
            os.set_inheritable(fd, False)
    except (ValueError, OSError):
        return None
    return TunePipe(events, verdicts)
