"""`--num-processes N`: run the same command again under `accelerate launch` with N local processes.

The child processes see WORLD_SIZE > 1 and so run the command itself (the flag is ignored there); the
parent only waits and passes on their exit status. On a CPU-only machine the processes talk over gloo;
with GPUs, each process takes one. For several machines, FSDP or DeepSpeed, call `accelerate launch`
yourself with a config file (see configs/accelerate/)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from warmstart import distributed
from warmstart.errors import UserError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(argv: list[str], processes: int, port: int | None = None) -> list[str]:
    """The `accelerate launch` command line that runs ``warmstart ARGV`` in ``processes`` local processes."""
    # --multi_gpu selects torch.distributed's launcher; on a machine without GPUs Accelerate then uses gloo.
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port or free_port()), "-m", "warmstart", *argv]


def relaunch(argv: list[str], processes: int) -> int | None:
    """Exit status of the command run in ``processes`` processes; None when this already is one of them."""
    if distributed.is_distributed():
        return None
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU processes
        gpus = 0
    if gpus and processes > gpus and "--cpu" not in argv:
        raise UserError(f"--num-processes {processes} is more than the {gpus} GPU(s) here; use at most {gpus} "
                        "or add --cpu")
    # One thread per process unless told otherwise: N processes each using every core only fight.
    env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes)), **os.environ}
    proc = subprocess.Popen(command(argv, processes), env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)  # torchrun passes it to the workers
        proc.wait()
        raise
