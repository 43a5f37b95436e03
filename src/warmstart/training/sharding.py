"""FSDP2 on CPU processes: `--fsdp` (or `accelerate launch --use_fsdp`) under several gloo processes.

Accelerate turns FSDP on only for GPU processes: on CPUs its state stays plain data parallel, and
its FSDP2 preparation reads that state. PyTorch's FSDP2 itself runs on a CPU device mesh over gloo,
so the native engine shards the model here with torch's own API, the way Accelerate's
TRANSFORMER_BASED_WRAP does on GPUs: ``fully_shard`` on each transformer block, then on the root,
before the optimizer is built (its state is then sharded too).

Checkpoints keep Accelerate's sharded layout (``pytorch_model_fsdp_0/`` and ``optimizer_0/``,
torch.distributed.checkpoint folders with the keys ``model`` and ``optimizer``): every process
writes its own shard, a resumed run reads its shard back, and ``accelerate merge-weights`` reads
them as it reads a GPU run's. The model saved is gathered from the shards (``full_state_dict``).
Scheduler and RNG states stay with Accelerate's ``save_state``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from warmstart.errors import UserError

MODEL_DIR = "pytorch_model_fsdp_0"  # Accelerate's names (FSDP_MODEL_NAME, OPTIMIZER_NAME)
OPTIMIZER_DIR = "optimizer_0"


def asked(cfg: Any) -> bool:
    """FSDP asked for: --fsdp, or `accelerate launch --use_fsdp` / an FSDP config file."""
    return bool(getattr(cfg, "fsdp", False)) or (
        os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"
    )


def on_cpu_processes(accelerator: Any, cfg: Any) -> bool:
    """Whether this run shards here: FSDP asked for, several processes, and Accelerate running
    them as CPU processes (where it would fall back to plain data parallel)."""
    from accelerate.utils import DistributedType

    return (
        asked(cfg)
        and accelerator.num_processes > 1
        and accelerator.distributed_type == DistributedType.MULTI_CPU
    )


def blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules each sharded on its own: those of the model's ``_no_split_modules`` classes
    (Accelerate's TRANSFORMER_BASED_WRAP), else the entries of its longest ModuleList (the
    layers). A module sharing a parameter with the rest of the model (tied embeddings) stays in
    the root's unit: a parameter belongs to one unit."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    found = [(n, m) for n, m in model.named_modules() if type(m).__name__ in names]
    if not found:
        lists = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
        if lists:
            name, layers = max(lists, key=lambda nm: len(nm[1]))
            found = [(f"{name}.{i}", m) for i, m in enumerate(layers)]
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    out = []
    for name, m in found:
        own: dict[int, int] = {}
        for _, p in m.named_parameters(remove_duplicate=False):
            own[id(p)] = own.get(id(p), 0) + 1
        if own and all(uses[i] == n for i, n in own.items()):
            out.append((name, m))
    # Deepest first: FSDP2 shards a block nested in another listed block before its parent.
    return [m for _, m in sorted(out, key=lambda nm: -nm[0].count("."))]


def shard(model: torch.nn.Module, world: int, mixed_precision: str) -> torch.nn.Module:
    """``model`` sharded in place over ``world`` CPU processes (FSDP2). With bf16, parameters are
    gathered in bf16 for compute and gradients reduced in fp32 (the optimizer keeps fp32 shards),
    and the forward runs under autocast as Accelerate's prepared models do, so the loss and
    softmaxes are computed in fp32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh("cpu", (world,))
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision == "bf16"
        else MixedPrecisionPolicy()
    )
    for block in blocks(model):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    if mixed_precision == "bf16":
        forward = model.forward
        model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(forward)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def held(model: torch.nn.Module) -> tuple[int, int]:
    """(parameter elements this process holds, elements of the whole model)."""
    local = total = 0
    for p in model.parameters():
        total += p.numel()
        local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
    return local, total


def describe(model: torch.nn.Module, world: int) -> str:
    """One line for the run log: the units and what each process holds (a collective)."""
    import torch.distributed as dist

    local, total = held(model)
    parts: list = [None] * world
    dist.all_gather_object(parts, local)
    from torch.distributed.fsdp import FSDPModule

    units = sum(isinstance(m, FSDPModule) for m in model.modules())
    return (
        f"FSDP2 over {world} CPU processes: {units} units ({units - 1} blocks + root); parameter"
        f" elements held per process {' + '.join(f'{n:,}' for n in parts)} of {total:,}"
    )


def save(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Each process writes its shards of the model and optimizer into ``folder`` (a
    collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state}, checkpoint_id=str(folder / MODEL_DIR))
    dcp.save({"optimizer": optim_state}, checkpoint_id=str(folder / OPTIMIZER_DIR))


def check_resumable(folder: Path, sharded: bool, accelerator: Any) -> None:
    """A checkpoint is resumed the way it was written: sharded by FSDP or whole."""
    from accelerate.utils import DistributedType

    has_shards = (folder / MODEL_DIR).is_dir()
    if sharded and not has_shards:
        raise UserError(
            f"--resume: '{folder}' holds no sharded FSDP state ({MODEL_DIR}/): it was written"
            " without FSDP; resume it without --fsdp"
        )
    if has_shards and not sharded and accelerator.distributed_type != DistributedType.FSDP:
        raise UserError(
            f"--resume: '{folder}' holds sharded FSDP state: resume it with --fsdp and"
            " --num-processes N (N > 1)"
        )


def load(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Each process reads its shards back (the same number of processes as wrote them)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    model_box, optim_box = {"model": model_state}, {"optimizer": optim_state}
    dcp.load(model_box, checkpoint_id=str(folder / MODEL_DIR))
    dcp.load(optim_box, checkpoint_id=str(folder / OPTIMIZER_DIR))
    set_state_dict(
        model,
        optimizer,
        model_state_dict=model_box["model"],
        optim_state_dict=optim_box["optimizer"],
    )


def full_state_dict(model: torch.nn.Module) -> dict:
    """The whole model's weights gathered from the shards, on the CPU; every process must call
    this, the main one gets them (the others an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
