"""Sharded training: `--fsdp` under several processes shards the model with FSDP2 (Accelerate's on
GPUs; torch's own, applied by the native engine, on CPU processes, which Accelerate would train as
plain DDP). Checkpoints hold each process's shards (torch.distributed.checkpoint, Accelerate's
layout), a killed run resumes from them to the same metrics, and the model is gathered into an
ordinary save_pretrained folder. DeepSpeed needs GPUs: refused on CPUs in one line."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import wait_for_checkpoint
from warmstart import distributed
from warmstart.cli import main

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
NO_GPUS = (
    "needs 2 GPUs (Accelerate's FSDP2/DeepSpeed over NCCL) and this machine has fewer; the CPU"
    " path is tested here, the GPU command is on the Scaling out page"
)
VOLATILE = {"epoch_seconds", "elapsed_seconds", "samples_per_s"}


def finetune_args(model, data, out, split="250,75,75", epochs=3) -> list[str]:
    # 250 rows in global batches of 16: uneven last batches; --save-steps 4: checkpoints mid-epoch.
    return [
        "finetune",
        "--data",
        str(data),
        "--split",
        split,
        "--model",
        str(model),
        "--epochs",
        str(epochs),
        "--batch-size",
        "8",
        "--lr",
        "1e-2",
        "--max-length",
        "64",
        "--precision",
        "fp32",
        "--logging-steps",
        "5",
        "--save-steps",
        "4",
        "--no-progress",
        "--cpu",
        "--out",
        str(out),
    ]


def run(args: list[str], timeout: float = 300) -> str:
    """`warmstart ARGS` in a child process (it relaunches itself under `accelerate launch`): its
    output, after checking it succeeded."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "warmstart", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def held_per_process(log: str) -> tuple[list[int], int]:
    m = re.search(r"parameter elements held per process ([\d,+ ]+) of ([\d,]+)", log)
    assert m, log[-3000:]
    parts = [int(x.replace(",", "")) for x in m.group(1).split("+")]
    return parts, int(m.group(2).replace(",", ""))


def stable(metrics: dict) -> tuple:
    epochs = [{k: v for k, v in e.items() if k not in VOLATILE} for e in metrics["epochs"]]
    return metrics["test"], epochs


@pytest.fixture(scope="module")
def no_dropout_bert(tiny_models, tmp_path_factory) -> Path:
    """The tiny BERT without dropout: FSDP and DDP then differ only by float rounding."""
    folder = tmp_path_factory.mktemp("bert-nodrop")
    shutil.copytree(tiny_models["bert"], folder, dirs_exist_ok=True)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_fsdp_on_two_cpu_processes_shards_the_model_and_saves_the_gathered_weights(
    tiny_models, imdb_head, tmp_path, capfd, monkeypatch
):
    from accelerate.utils import merge_fsdp_weights
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import warmstart

    out = tmp_path / "run"
    args = finetune_args(tiny_models["bert"], imdb_head, out, split="96,32,32", epochs=1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # Relaunched from this process under `accelerate launch`: the processes write to its stderr.
    assert main([*args, "--num-processes", "2", "--fsdp"]) == 0
    log = capfd.readouterr().err

    # Each process holds its half of every parameter (FSDP2 shards dim 0, padded to even rows).
    parts, total = held_per_process(log)
    print({"held per process": parts, "of": total})
    assert len(parts) == 2 and sum(parts) == total
    assert all(abs(p - total / 2) <= 0.01 * total for p in parts)

    # The checkpoint is sharded: a torch.distributed.checkpoint file per process, no whole model.
    checkpoint = sorted((out / "checkpoints").glob("checkpoint-*"))[-1]
    assert sorted(p.name for p in (checkpoint / "pytorch_model_fsdp_0").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    assert (checkpoint / "optimizer_0" / ".metadata").is_file()
    assert not list(checkpoint.glob("*.safetensors")) and not list(checkpoint.glob("*.bin"))

    # One epoch: the best model is the last checkpoint's, so the gathered weights saved in model/
    # are exactly those shards put together (read by Accelerate's own merge).
    merged = tmp_path / "merged"
    merge_fsdp_weights(str(checkpoint / "pytorch_model_fsdp_0"), str(merged))
    shards, saved = (
        load_file(merged / "model.safetensors"),
        load_file(out / "model" / "model.safetensors"),
    )
    assert set(saved) <= set(shards)
    for name, tensor in saved.items():
        assert torch.equal(tensor, shards[name]), name

    # An ordinary model folder: plain transformers loads it whole and predicts as warmstart does.
    model, info = AutoModelForSequenceClassification.from_pretrained(
        out / "model", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    texts = ["A wonderful film with a moving story.", "Dull and far too long.", "It was fine."]
    tok = AutoTokenizer.from_pretrained(out / "model")
    with torch.no_grad():
        logits = model.eval()(**tok(texts, padding=True, return_tensors="pt")).logits
    temperature = getattr(model.config, "calibration_temperature", None) or 1.0
    expected = torch.softmax(logits / temperature, -1).numpy()
    preds = warmstart.predict(model=str(out / "model"), texts=texts, backend="torch")
    got = np.array([list(p.probabilities.values()) for p in preds])
    assert np.allclose(got, expected, atol=1e-5)
    assert [p.label for p in preds] == [model.config.id2label[i] for i in expected.argmax(-1)]


def test_sharding_that_cannot_run_here_is_refused_in_one_line_with_exit_code_2(
    tiny_models, imdb_head, tmp_path, capsys
):
    out = tmp_path / "run"
    args = [*finetune_args(tiny_models["bert"], imdb_head, out), "--num-processes", "2"]
    cases = [
        (["--fsdp", "--lora-r", "4"], "--fsdp with --lora-r is not supported on CPU processes"),
        (["--fsdp", "--engine", "trainer"], "--fsdp on CPU processes runs in the native engine"),
    ]
    if not GPUS:
        ds = tmp_path / "ds.json"
        ds.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
        cases.append((["--deepspeed", str(ds)], "--deepspeed needs GPUs and this machine has none"))
    for extra, message in cases:
        assert main([*args, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not out.exists()  # refused before any process started
    one = [a for a in args if a not in ("--num-processes", "2")]
    assert main([*one, "--fsdp"]) == 2  # one process: nothing to shard over
    assert "--fsdp shards over several processes" in capsys.readouterr().err
    assert not out.exists()


def test_fsdp_launches_accelerates_fsdp2_on_gpus_and_plain_processes_on_cpus():
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


def test_each_transformer_block_is_its_own_shard_unit_and_tied_weights_stay_in_the_root():
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    from warmstart.training.sharding import blocks

    bert = BertForMaskedLM(
        BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64)
    )
    # The MLM head is tied to the word embeddings: BertEmbeddings (a _no_split_modules class)
    # would split one parameter over two units, so it stays with the root.
    assert [type(b).__name__ for b in blocks(bert)] == ["BertLayer"] * 3
    distil = DistilBertForSequenceClassification(
        DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64)
    )
    # No _no_split_modules: the entries of the longest ModuleList (the layers).
    assert [type(b).__name__ for b in blocks(distil)] == ["TransformerBlock"] * 2


def test_a_sharded_models_rows_are_scored_by_every_process(monkeypatch):
    # Every forward of a sharded model is a collective: within rows_everywhere each process
    # computes all rows itself (no shard, no gather), so they all run the same batches.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    seen = []
    with distributed.rows_everywhere():
        out = distributed.gather_rows(5, lambda idx: seen.append(idx.tolist()) or idx * 10)
    assert seen == [[0, 1, 2, 3, 4]] and out.tolist() == [0, 10, 20, 30, 40]
    assert distributed.shard(5).tolist() == [3, 4]  # outside it: this process's shard


@pytest.mark.slow
def test_an_accelerate_fsdp_launch_on_cpu_processes_shards_too(
    tiny_models, imdb_head, tmp_path, capsys
):
    # `accelerate launch --use_fsdp` (or an FSDP config file) on CPUs: Accelerate alone would train
    # plain DDP; warmstart shards with torch's FSDP2 instead.
    out = tmp_path / "run"
    args = finetune_args(tiny_models["bert"], imdb_head, out, split="96,32,32", epochs=1)
    cmd = distributed.command(args, 2)
    at = cmd.index("--multi_gpu")
    cmd[at : at + 1] = distributed.FSDP_FLAGS
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts, total = held_per_process(proc.stderr)
    assert sum(parts) == total and max(parts) < 0.51 * total
    assert list((out / "checkpoints").glob("checkpoint-*/pytorch_model_fsdp_0/__1_0.distcp"))
    # Left as a kill after step 4 would leave it: its sharded checkpoint cannot be resumed by plain
    # processes, which is said in one line.
    (out / "metrics.json").unlink()
    shutil.rmtree(out / "checkpoints" / "checkpoint-6")
    assert main([*args, "--resume"]) == 2
    assert "holds sharded FSDP state: resume it with --fsdp" in capsys.readouterr().err


@pytest.mark.slow
def test_fsdp_on_two_cpu_processes_trains_like_data_parallel(no_dropout_bert, imdb_head, tmp_path):
    args = finetune_args(no_dropout_bert, imdb_head, tmp_path / "x")[:-1]
    run([*args, str(tmp_path / "ddp"), "--num-processes", "2"])
    run([*args, str(tmp_path / "fsdp"), "--num-processes", "2", "--fsdp"])
    ddp, fsdp = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("ddp", "fsdp"))
    # Gradients reduce-scattered instead of all-reduced: the same steps up to float rounding.
    assert fsdp["test"]["confusion_matrix"] == ddp["test"]["confusion_matrix"]
    for a, b in zip(fsdp["epochs"], ddp["epochs"], strict=True):
        for key in ("train_loss", "valid_loss", "valid_accuracy", "train_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), key


@pytest.mark.slow
def test_an_fsdp_run_killed_mid_run_resumes_from_its_shards_to_the_same_metrics(
    tiny_models, imdb_head, tmp_path
):
    import psutil

    # Dropout on: the resumed run must also restore each process's RNG state.
    def args(out: Path) -> list[str]:
        return [
            *finetune_args(tiny_models["bert"], imdb_head, out),
            "--num-processes",
            "2",
            "--fsdp",
        ]

    run(args(tmp_path / "full"))
    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "warmstart", *args(killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_checkpoint(proc, killed, 240)
    # The launcher starts the workers in sessions of their own: kill every one of them at once.
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in family:
        p.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists()
    state = json.loads(next((killed / "checkpoints").glob("checkpoint-*/state.json")).read_text())
    assert state["processes"] == 2 and 0 < state["step"] < 48

    log = run([*args(killed), "--resume"])
    assert "resumed from" in log
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    resumed = json.loads((killed / "metrics.json").read_text())
    assert stable(resumed) == stable(full)


@pytest.mark.slow
@pytest.mark.skipif(GPUS < 2, reason="FSDP on GPUs " + NO_GPUS)
def test_fsdp_on_two_gpus_checkpoints_sharded_state_resumes_and_saves_an_ordinary_model(
    tiny_models, imdb_head, tmp_path
):
    from transformers import AutoModelForSequenceClassification

    out = tmp_path / "run"
    args = [*finetune_args(tiny_models["bert"], imdb_head, out), "--num-processes", "2", "--fsdp"]
    args.remove("--cpu")
    first = subprocess.Popen(
        [sys.executable, "-m", "warmstart", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_checkpoint(first, out)
    import psutil

    for p in [psutil.Process(first.pid), *psutil.Process(first.pid).children(recursive=True)]:
        p.send_signal(signal.SIGKILL)
    first.wait()
    checkpoint = sorted((out / "checkpoints").glob("checkpoint-*"))[0]
    # SHARDED_STATE_DICT: each process wrote its part (torch.distributed.checkpoint files)
    assert list(checkpoint.glob("pytorch_model_fsdp_0/*.distcp"))
    log = run([*args, "--resume"], timeout=600)
    assert "resumed from" in log
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")  # gathered weights
    assert model.config.id2label
    assert json.loads((out / "metrics.json").read_text())["test"]["accuracy"] >= 0


@pytest.mark.slow
@pytest.mark.skipif(GPUS < 2, reason="DeepSpeed ZeRO " + NO_GPUS)
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
    args.remove("--cpu")
    assert main([*args, "--deepspeed", str(config)]) == 0
    assert (out / "model" / "config.json").is_file()
