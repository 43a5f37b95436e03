"""Running as one of several processes (`accelerate launch`, torchrun): who am I, which rows are
mine, and putting every process's results back together in input order.

Rank and world size come from the environment the launchers set (RANK, WORLD_SIZE), so asking costs
nothing and a plain single-process run never initialises torch.distributed. The process group is set
up (through Accelerate's PartialState: gloo on CPUs, nccl on GPUs) only when a collective is first
needed.

Sharding is by contiguous, near-equal row ranges (``np.array_split``): results are gathered to every
process and written back at their row indices, so nothing is counted twice however uneven the last
shard is, and every process ends with the same full result (and so takes the same decisions).

`--num-processes N` (``relaunch``) runs the same command again under `accelerate launch` with N
local processes: they see WORLD_SIZE > 1 and so run the command itself; the parent only waits and
passes on their exit status. On a CPU-only machine the processes talk over gloo; with GPUs, each
process takes one; `--fsdp` / `--deepspeed CONFIG` launch them sharded: through Accelerate on GPUs,
and for `--fsdp` on CPUs by torch's FSDP2 in the native engine (training.sharding: Accelerate does
not shard CPU processes); DeepSpeed needs GPUs. For several machines, call `accelerate launch`
yourself with a config file (configs/accelerate/).

`scored_by` lets another engine (Ray actors, `--engine ray`) score the rows that ``probabilities``
would score here."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable

import numpy as np

from warmstart.errors import UserError


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


def use_cpu(cpu: bool = False) -> bool:
    """Whether to run on the CPU. Launched processes on a machine without CUDA must say so to
    Accelerate: asked for a GPU there, it falls back to a single, non-distributed process."""
    if cpu or not is_distributed():
        return cpu
    import torch

    return not torch.cuda.is_available()


def state(cpu: bool = False):
    """Accelerate's process state (initialises the process group on first use; the first call
    decides)."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu(cpu))


def barrier() -> None:
    if is_distributed():
        state().wait_for_everyone()


def finish() -> None:
    """End a launched command's process group once every process is done. Left to interpreter exit,
    gloo's threads can be torn down while a peer still talks to them, and a process that did its
    work aborts ("terminate called without an active exception"), failing the whole launch."""
    if (
        not is_distributed() or "torch" not in sys.modules
    ):  # no group to end (and no torch to import for it)
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def omp_threads() -> int | None:
    """$OMP_NUM_THREADS when it is set to a positive count (what torch and ONNX Runtime are told to
    use), else None."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def shard(n: int, index: int | None = None, size: int | None = None) -> np.ndarray:
    """Row indices of ``n`` rows that process ``index`` (default: this one) of ``size`` handles."""
    index = rank() if index is None else index
    size = world_size() if size is None else size
    return np.array_split(np.arange(n), size)[index]


# Set while every process must compute every row itself (see rows_everywhere).
_EVERYWHERE: list[bool] = []


@contextlib.contextmanager
def rows_everywhere(on: bool = True):
    """Within the block (when ``on``), ``gather_rows`` computes all rows in every process instead of
    a shard each: a model sharded by FSDP runs each forward as a collective, so every process must
    run the same batches."""
    if on:
        _EVERYWHERE.append(True)
    try:
        yield
    finally:
        if on:
            _EVERYWHERE.pop()


def gather_rows(n: int, compute: Callable[[np.ndarray], np.ndarray | list]) -> np.ndarray | list:
    """``compute(indices)`` on this process's shard of ``n`` rows, gathered from all processes and
    put back in input order; one process (or within ``rows_everywhere``): just
    ``compute(arange(n))``. Every process gets the whole result. ``compute`` may return an array (a
    row per index) or a list (an entry per index, e.g. ragged rows)."""
    if not is_distributed() or _EVERYWHERE:
        return compute(np.arange(n))
    import torch

    state()  # the process group must exist before the collective
    idx = shard(n)
    rows = compute(idx) if len(idx) else None
    parts: list = [None] * world_size()
    torch.distributed.all_gather_object(parts, (idx, rows))
    filled = [(i, r) for i, r in parts if r is not None and len(i)]
    first = filled[0][1]
    if isinstance(first, list):
        entries: list = [None] * n
        for i, r in filled:
            for j, x in zip(i.tolist(), r):
                entries[j] = x
        return entries
    out = np.empty((n, *first.shape[1:]), dtype=first.dtype)
    for i, r in filled:
        out[i] = r
    return out


def sum_all(values: list[float], cpu: bool = False) -> list[float]:
    """Element-wise sum of ``values`` over all processes (identity for one process)."""
    if not is_distributed():
        return list(values)
    import torch

    st = state(cpu)
    t = torch.tensor(values, dtype=torch.float64, device=st.device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def broadcast(obj, cpu: bool = False):
    """The main process's ``obj`` on every process."""
    if not is_distributed():
        return obj
    import torch

    state(cpu)
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def batch_part(batch: list[int], index: int, size: int) -> tuple[list[int], float]:
    """This process's part of one global training batch, and the weight of its loss.

    Each process gets a contiguous, near-equal slice. The model's loss is a mean over the slice, and
    DDP averages gradients over processes, so weighting each loss by ``len(part) * size /
    len(batch)`` makes the average exactly the gradient of the mean over the whole batch (as one
    process would compute). A process left without rows (a batch smaller than the world) repeats one
    row with weight 0: it still has to take part in the gradient all-reduce."""
    part = np.array_split(np.asarray(batch), size)[index].tolist()
    if not part:
        return [batch[0]], 0.0
    return part, len(part) * size / len(batch)


# The engine that scores rows instead of this process while a `scored_by` block runs (e.g. Ray
# actors for `evaluate --engine ray`): the kinds call ``probabilities`` and need not know.
_SCORERS: list[Callable] = []


@contextlib.contextmanager
def scored_by(scorer: Callable | None):
    """Within the block, ``probabilities`` is ``scorer(clf, ex, batch_size, progress)``; None: no
    change."""
    if scorer is not None:
        _SCORERS.append(scorer)
    try:
        yield
    finally:
        if scorer is not None:
            _SCORERS.remove(scorer)


def probabilities(clf, ex, batch_size: int, progress: bool = False) -> np.ndarray:
    """``clf.probabilities(ex)`` with each process scoring its shard of the examples (see
    gather_rows), or by the engine of an enclosing `scored_by`."""
    if _SCORERS:
        return _SCORERS[-1](clf, ex, batch_size, progress)
    return gather_rows(
        len(ex),
        lambda idx: clf.probabilities(ex.take(idx), batch_size, progress=progress and is_main()),
    )


# --- `--num-processes N`: the same command again under `accelerate launch`
# ----------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Accelerate's FSDP2 flags for `--fsdp`: each transformer block its own shard unit, checkpoints as
# sharded state (every process writes its part; resume with the same number of processes), the
# parameters freed again after each forward. The best model is gathered (training.common.full_weights).
FSDP_FLAGS = [
    "--use_fsdp",
    "--fsdp_version",
    "2",
    "--fsdp_auto_wrap_policy",
    "TRANSFORMER_BASED_WRAP",
    "--fsdp_state_dict_type",
    "SHARDED_STATE_DICT",
    "--fsdp_reshard_after_forward",
    "true",
]


def command(
    argv: list[str],
    processes: int,
    port: int | None = None,
    fsdp: bool = False,
    deepspeed: str | None = None,
) -> list[str]:
    """The `accelerate launch` command line that runs ``warmstart ARGV`` in ``processes`` local
    processes: plain data parallel, or sharded by FSDP2 or DeepSpeed (``deepspeed``: its config)."""
    # --multi_gpu selects torch.distributed's launcher; on a machine without GPUs Accelerate then
    # uses gloo. --use_fsdp and --use_deepspeed select it too (Accelerate takes one of the three).
    if fsdp:
        kind = FSDP_FLAGS
    elif deepspeed:
        kind = ["--use_deepspeed", "--deepspeed_config_file", deepspeed]
    else:
        kind = ["--multi_gpu"]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *kind,
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(port or free_port()),
        "-m",
        "warmstart",
        *argv,
    ]


def check_sharding(fsdp: bool, deepspeed: str | None, gpus: int, cfg: object = None) -> None:
    """Refuse in one line, before any process starts, sharding that cannot run here. DeepSpeed
    needs GPUs (its ZeRO engine runs on accelerator devices). FSDP runs on either: Accelerate's FSDP2
    on GPUs, torch's FSDP2 applied by warmstart on CPU processes (training.sharding), which leaves
    out what it does not support there."""
    if deepspeed and not gpus:
        raise UserError(
            "--deepspeed needs GPUs and this machine has none (DeepSpeed's ZeRO runs on"
            " accelerator devices): use --fsdp to shard over CPU processes"
        )
    if deepspeed:
        try:
            import deepspeed as _  # noqa: F401
        except ImportError:
            raise UserError(
                "--deepspeed needs the package deepspeed: pip install deepspeed"
            ) from None
    if fsdp and not gpus and cfg is not None:
        refuse_unsupported_fsdp(cfg)


def refuse_unsupported_fsdp(cfg: object) -> None:
    """What FSDP on CPU processes (training.sharding) does not run, refused in one line: before the
    launch, and again in each process (a launcher may have asked for FSDP)."""
    if getattr(cfg, "engine", "native") == "trainer":
        raise UserError(
            "--fsdp on CPU processes runs in the native engine (the Trainer takes FSDP from"
            " Accelerate, which shards only GPU processes): drop --engine trainer"
        )
    if getattr(cfg, "lora_r", None):
        raise UserError(
            "--fsdp with --lora-r is not supported on CPU processes: LoRA trains a small"
            " fraction of the weights, so train it with --num-processes N alone (data parallel)"
        )


def relaunch(
    argv: list[str],
    processes: int,
    fsdp: bool = False,
    deepspeed: str | None = None,
    cfg: object = None,
) -> int | None:
    """Exit status of the command run in ``processes`` processes; None when this already is one of
    them. ``cfg``: the command's settings, for what FSDP on CPU processes refuses."""
    if is_distributed():
        return None
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU processes
        gpus = 0
    on_gpus = 0 if "--cpu" in argv else gpus
    check_sharding(fsdp, deepspeed, on_gpus, cfg)
    if gpus and processes > gpus and "--cpu" not in argv:
        raise UserError(
            f"--num-processes {processes} is more than the {gpus} GPU(s) here; use at most {gpus} "
            "or add --cpu"
        )
    # One thread per process unless told otherwise: N processes each using every core only fight.
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes)), **os.environ}
    # On CPUs --fsdp launches plain processes (Accelerate would not shard them): the command's
    # own --fsdp makes the native engine shard the model with torch's FSDP2.
    launch = command(argv, processes, fsdp=fsdp and bool(on_gpus), deepspeed=deepspeed)
    proc = subprocess.Popen(launch, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)  # torchrun passes it to the workers
        proc.wait()
        raise
