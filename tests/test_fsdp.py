"""Sharded training: `--fsdp` / `--deepspeed CONFIG` relaunch the command under Accelerate's FSDP2 or
DeepSpeed; where Accelerate cannot shard (CPU processes: it falls back to plain data parallel over
gloo, silently) the run is refused in one line rather than trained unsharded. On two GPUs, an FSDP
run checkpoints sharded state, resumes from it, and gathers the best model into an ordinary
save_pretrained folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from warmstart import distributed
from warmstart.cli import main

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
NO_GPUS = (
    "Accelerate shards with FSDP only on GPU processes (on CPUs its state falls back to DDP over"
    " gloo), and this machine has fewer than 2 GPUs; the README's Scaling out page gives the"
    " command to run on GPUs"
)


def finetune_args(model, data, out) -> list[str]:
    return [
        "finetune",
        "--data",
        str(data),
        "--split",
        "120,40,40",
        "--model",
        str(model),
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--max-length",
        "32",
        "--save-steps",
        "4",
        "--no-progress",
        "--out",
        str(out),
    ]


def test_fsdp_relaunches_under_accelerates_fsdp2_with_sharded_checkpoints():
    cmd = distributed.command(["finetune", "--fsdp"], 2, port=29500, fsdp=True)
    flags = cmd[cmd.index("accelerate.commands.launch") + 1 : cmd.index("-m", 3)]
    pairs = dict(zip(flags[1::2], flags[2::2]))
    assert flags[0] == "--use_fsdp" and "--multi_gpu" not in flags  # Accelerate takes one of them
    assert pairs["--fsdp_version"] == "2"
    assert pairs["--fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert pairs["--fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert cmd[-2:] == ["finetune", "--fsdp"]
    ds = distributed.command(["finetune"], 2, port=29500, deepspeed="ds.json")
    assert ds[ds.index("--use_deepspeed") + 1 : ds.index("--use_deepspeed") + 3] == [
        "--deepspeed_config_file",
        "ds.json",
    ]


@pytest.mark.skipif(GPUS > 0, reason="this machine has GPUs: --fsdp runs there")
def test_fsdp_on_a_machine_without_gpus_is_refused_in_one_line_with_exit_code_2(
    tiny_models, imdb_head, tmp_path, capsys
):
    out = tmp_path / "run"
    args = finetune_args(tiny_models["bert"], imdb_head, out)
    assert main([*args, "--num-processes", "2", "--fsdp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--fsdp shards the model over GPUs" in err[0]
    assert not out.exists()  # refused before any process started
    assert main([*args, "--fsdp"]) == 2  # one process: nothing to shard over
    assert "--fsdp shards over several processes" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(GPUS > 0, reason="this machine has GPUs: FSDP runs there")
def test_an_fsdp_launch_on_cpu_processes_is_refused_not_trained_as_plain_ddp(
    tiny_models, imdb_head, tmp_path
):
    # `accelerate launch --use_fsdp` (or an FSDP config file) on CPUs: Accelerate would train plain
    # DDP over gloo and write unsharded checkpoints; each process says why it stops instead.
    out = tmp_path / "run"
    cmd = distributed.command([*finetune_args(tiny_models["bert"], imdb_head, out), "--cpu"], 2)
    cmd[cmd.index("--multi_gpu")] = distributed.FSDP_FLAGS[0]
    cmd[cmd.index("--use_fsdp") + 1 : cmd.index("--use_fsdp") + 1] = distributed.FSDP_FLAGS[1:]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "error: FSDP was asked for but cannot shard this run" in proc.stderr
    assert not (out / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.skipif(GPUS < 2, reason=NO_GPUS)
def test_fsdp_on_two_gpus_checkpoints_sharded_state_resumes_and_saves_an_ordinary_model(
    tiny_models, imdb_head, tmp_path
):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "run"
    args = [*finetune_args(tiny_models["bert"], imdb_head, out), "--num-processes", "2", "--fsdp"]
    first = subprocess.Popen(
        [sys.executable, "-m", "warmstart", *args],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    from conftest import wait_for_checkpoint

    wait_for_checkpoint(first, out)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    checkpoint = sorted((out / "checkpoints").glob("checkpoint-*"))[0]
    # SHARDED_STATE_DICT: each process wrote its part (torch.distributed.checkpoint files)
    assert list(checkpoint.glob("pytorch_model_fsdp_0/*.distcp"))
    resumed = subprocess.run(
        [sys.executable, "-m", "warmstart", *args, "--resume"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")  # gathered weights
    assert model.config.id2label
    assert json.loads((out / "metrics.json").read_text())["test"]["accuracy"] >= 0


@pytest.mark.slow
@pytest.mark.skipif(GPUS < 2, reason="DeepSpeed ZeRO runs on GPUs; " + NO_GPUS)
def test_deepspeed_zero2_on_two_gpus_saves_an_ordinary_model(tiny_models, imdb_head, tmp_path):
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed")
    config = tmp_path / "ds.json"
    config.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 2},
                "train_micro_batch_size_per_gpu": 8,
                "gradient_accumulation_steps": 1,
            }
        )
    )
    out = tmp_path / "run"
    args = [*finetune_args(tiny_models["bert"], imdb_head, out), "--num-processes", "2"]
    assert main([*args, "--deepspeed", str(config)]) == 0
    assert (out / "model" / "config.json").is_file()
