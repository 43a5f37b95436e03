"""`warmstart serve MODEL`: the model behind an HTTP API (FastAPI + uvicorn) with dynamic batching.

    >>> import warmstart
    >>> warmstart.serve(model="runs/x/model", port=8000)          # blocks; Ctrl-C or SIGTERM stops it
    >>> from warmstart.serving import ServedModel, create_app
    >>> app = create_app(ServedModel.load("runs/x/model"))   # an ASGI app: for tests and other ASGI servers

(The package is `serving`, not `serve`: `warmstart.serve` is the public function, and a subpackage
of the same name would replace it as an attribute of `warmstart` as soon as it is imported.)"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import logging
import logging.config
import re
import signal
import socket
import sys
import threading

from warmstart.config import ServeConfig, make, settle
from warmstart.errors import UserError
from warmstart.serving.app import API_KEY_VARIABLE, api_key, create_app
from warmstart.serving.model import ServedModel

logger = logging.getLogger("warmstart.serving")
# What a browser sends as Origin: scheme://host[:port], no path (a trailing slash would never
# match).
_ORIGIN = re.compile(r"https?://[^/\s]+")

__all__ = ["ServeConfig", "ServedModel", "create_app", "serve"]


def check(cfg: ServeConfig) -> None:
    """Reject impossible settings before the model loads (each number's range is checked when the
    config is built)."""
    if not cfg.model:
        raise UserError(
            "no model given: warmstart serve MODEL (a run folder, minilm, smollm2, ...)"
        )
    key = api_key(cfg)
    if key is not None and not re.fullmatch(
        r"[\x21-\x7e]+", key
    ):  # what a header carries unchanged
        source = "--api-key" if cfg.api_key else API_KEY_VARIABLE
        raise UserError(
            f"{source} must be printable ASCII without spaces (e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    for origin in cfg.cors_origin:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise UserError(
                "--cors-origin must be * or scheme://host[:port] with no path, as browsers send it"
                f" (e.g. https://app.example.com), got '{origin}'"
            )


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host`` (a name other than localhost may resolve to
    anything)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_open(cfg: ServeConfig) -> None:
    if api_key(cfg) is None and not is_loopback(cfg.host):
        logger.warning(
            "no API key: anyone who can reach %s:%d can use this server and its model; give"
            " --api-key or set %s",
            cfg.host,
            cfg.port,
            API_KEY_VARIABLE,
        )


def _log_config(level: str) -> dict:
    """uvicorn's logging, and ours (request failures with their id, timeouts, warnings) on the same
    handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["warmstart"] = {
        "handlers": ["default"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def _check_port(host: str, port: int) -> None:
    # uvicorn reports a taken port only in its log, after the model has loaded; say it up front, in
    # one line.
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(
            f"--host '{host}' is not an address this machine can listen on ({e.strerror})"
        ) from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def serve(config: ServeConfig | None = None, **kwargs) -> None:
    """Load the model and serve it until interrupted; SIGTERM lets the requests in flight finish
    first."""
    import uvicorn

    cfg = make(ServeConfig, config, kwargs)
    check(cfg)
    _check_port(cfg.host, cfg.port)
    cfg = _settle_quantize(cfg)
    served = ServedModel.load(
        cfg.model,
        max_length=cfg.max_length,
        cpu=cfg.cpu,
        backend=cfg.backend,
        quantize=cfg.quantize,
        long_text=cfg.long_text,
        stride=cfg.stride,
        chunk_aggregation=cfg.chunk_aggregation,
        hub=cfg,
        quant_block_size=cfg.quant_block_size,
        max_batch_size=cfg.max_batch_size,
    )
    app = create_app(served, cfg)
    log_config = _log_config(cfg.log_level)
    logging.config.dictConfig(
        log_config
    )  # uvicorn applies it again; ours must hold for the warning already
    shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    print(
        f"serving {cfg.model} ({served.kind}: {', '.join('/' + e for e in served.endpoints)}) at "
        f"http://{shown}:{cfg.port} (API docs: /docs)",
        file=sys.stderr,
        flush=True,
    )
    warn_if_open(cfg)
    with _stop_quietly():
        uvicorn.run(
            app,
            host=cfg.host,
            port=cfg.port,
            log_level=cfg.log_level,
            log_config=log_config,
            timeout_graceful_shutdown=30,
        )


def _settle_quantize(cfg: ServeConfig) -> ServeConfig:
    """A causal LM's --quantize, settled: auto measured on GenAI's route (inference.quantize), none
    on transformers'; the choice and its reason are said once. Other models keep their own
    meaning of auto (int8 with onnx for a classifier)."""
    from warmstart.inference import onnx_lm, quantize, served_lm

    folder = onnx_lm.model_folder(cfg.model)
    config = onnx_lm.read_json(folder / "config.json") if folder is not None else {}
    if not any(a.endswith("ForCausalLM") for a in config.get("architectures") or []):
        if cfg.quantize == "int4" and folder is not None:
            raise UserError(
                f"--quantize int4 is for causal LMs (GenAI's int4 weights); model '{cfg.model}' "
                "takes none or int8"
            )
        return cfg
    onnx = served_lm.route(cfg.model, cfg.backend, cfg.cpu) is None
    chosen = quantize.choice(folder, cfg.quantize, cfg.quant_block_size, onnx)
    if chosen.reason:
        print(chosen.reason, file=sys.stderr, flush=True)
    return settle(cfg, quantize=chosen)


class _Stopped(Exception):
    pass


@contextlib.contextmanager
def _stop_quietly():
    """Exit status 0 after a SIGTERM or Ctrl-C. uvicorn drains the requests in flight, then
    re-raises the signal to the handler it found: ours ends the server normally, rather than dying
    of the signal (or, for Ctrl-C, reaching the CLI's KeyboardInterrupt message)."""
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
