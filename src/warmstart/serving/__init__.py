"""`warmstart serve MODEL`: the model behind an HTTP API (FastAPI + uvicorn) with dynamic batching.

    >>> import warmstart
    >>> warmstart.serve(model="runs/x/model", port=8000)          # blocks; Ctrl-C or SIGTERM stops it
    >>> from warmstart.serving import ServedModel, create_app
    >>> app = create_app(ServedModel.load("runs/x/model"))   # an ASGI app: for tests and other ASGI servers

(The package is `serving`, not `serve`: `warmstart.serve` is the public function, and a subpackage of the
same name would replace it as an attribute of `warmstart` as soon as it is imported.)
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading

from warmstart.config import ServeConfig, make
from warmstart.errors import UserError
from warmstart.serving.app import create_app
from warmstart.serving.model import ServedModel

__all__ = ["ServeConfig", "ServedModel", "create_app", "serve"]


def check(cfg: ServeConfig) -> None:
    """Reject impossible settings before the model loads."""
    if not cfg.model:
        raise UserError("no model given: warmstart serve MODEL (a run folder, minilm, smollm2, ...)")
    if not 0 <= cfg.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {cfg.port}")
    for name in ("max_batch_size", "max_texts_per_request", "max_text_chars", "max_body_bytes", "max_new_tokens"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.max_wait_ms < 0:
        raise UserError(f"--max-wait-ms must be 0 or more, got {cfg.max_wait_ms}")


def _check_port(host: str, port: int) -> None:
    # uvicorn reports a taken port only in its log, after the model has loaded; say it up front, in one line.
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host '{host}' is not an address this machine can listen on ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def serve(config: ServeConfig | None = None, **kwargs) -> None:
    """Load the model and serve it until interrupted; SIGTERM lets the requests in flight finish first."""
    import uvicorn

    cfg = make(ServeConfig, config, kwargs)
    check(cfg)
    _check_port(cfg.host, cfg.port)
    served = ServedModel.load(cfg.model, max_length=cfg.max_length, cpu=cfg.cpu, backend=cfg.backend,
                              quantize=cfg.quantize)
    app = create_app(served, cfg)
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(f"serving {cfg.model} ({served.kind}: {', '.join('/' + e for e in served.endpoints)}) at "
          f"http://{shown}:{cfg.port} (API docs: /docs)", file=sys.stderr, flush=True)
    with _stop_quietly():
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_graceful_shutdown=30)


class _Stopped(Exception):
    pass


@contextlib.contextmanager
def _stop_quietly():
    """Exit status 0 after a SIGTERM or Ctrl-C. uvicorn drains the requests in flight, then re-raises the signal
    to the handler it found: ours ends the server normally, rather than dying of the signal (or, for Ctrl-C,
    reaching the CLI's KeyboardInterrupt message)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise _Stopped

    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except _Stopped:
        print("server stopped", file=sys.stderr, flush=True)
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)

