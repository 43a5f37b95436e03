"""`warmstart push` and `finetune --push-to-hub` through the real huggingface_hub client: uploads go
to a loopback server of the Hub's upload endpoints (hub_upload_server.py) that commits into git
repositories, which olah (hub_server.py) serves back to `snapshot_download`. A push then a pull gives
the same predictions; every refusal is one line and exit code 2."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, snapshot_download

import warmstart
from conftest import TEXTS
from hub_server import HubServer
from hub_upload_server import HubUploadServer
from warmstart.cli import main

WRITE, READ = "hf_write_token", "hf_read_token"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """(the upload server, olah) over the same folder of git repositories."""
    root = tmp_path_factory.mktemp("hub") / "root"
    root.mkdir()
    with (
        HubUploadServer(root, tokens={WRITE: "write", READ: "read"}) as up,
        HubServer(root) as down,
    ):
        yield up, down


@pytest.fixture(scope="module")
def run(tiny_models, imdb_head, tmp_path_factory):
    return warmstart.finetune(
        data=str(imdb_head),
        split="200,60,60",
        model=str(tiny_models["bert"]),
        label_names="negative,positive",
        max_length=48,
        epochs=1,
        lr=1e-3,
        precision="fp32",
        progress=False,
        out=str(tmp_path_factory.mktemp("push") / "imdb"),
    )


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Point huggingface_hub (whose constants are read once, at its import) at ``endpoint`` with
    ``token``, online, with no stored token of this machine's user."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "tokens"))

    def connect(endpoint: str, token: str | None = WRITE, offline: bool = False) -> None:
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        if token is None:
            monkeypatch.delenv("HF_TOKEN", raising=False)
        else:
            monkeypatch.setenv("HF_TOKEN", token)

    return connect


def pull(endpoint: str, repo: str, folder: Path, revision: str | None = None) -> Path:
    return Path(
        snapshot_download(repo, revision=revision, endpoint=endpoint, local_dir=str(folder))
    )


def probabilities(model: Path, **backend) -> list[tuple]:
    found = warmstart.predict(model=str(model), texts=TEXTS, **backend)
    return [(p.label, p.probabilities) for p in found]


def test_push_then_pull_gives_identical_predictions(run, hub, online, tmp_path, capsys):
    up, down = hub
    online(up.endpoint)
    assert main(["push", str(run.run_dir), "--repo", "test-org/imdb-tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"pushed {run.model_dir} to {up.endpoint}/test-org/imdb-tiny (branch main"
    )
    pulled = pull(down.endpoint, "test-org/imdb-tiny", tmp_path / "pulled")
    assert sorted(p.name for p in pulled.iterdir() if not p.name.startswith(".")) == sorted(
        p.name for p in run.model_dir.iterdir() if p.name != "onnx"
    )
    torch = dict(backend="torch", quantize="none")
    assert probabilities(pulled, **torch) == probabilities(run.model_dir, **torch)
    # The published card is the local one, now loading the model by its repo id.
    card = ModelCard.load(pulled / "README.md")
    assert (pulled / "README.md").read_text() == (run.model_dir / "README.md").read_text()
    assert 'pipeline("text-classification", model="test-org/imdb-tiny")' in card.text
    assert card.data.to_dict()["model-index"][0]["name"] == "test-org/imdb-tiny"
    index = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert index["accuracy"] == run.metrics["test"]["accuracy"] and "n" not in index
    # Pushing the same folder again sends nothing: no new commit.
    commits = len(up.commits)
    assert warmstart.push(model=str(run.model_dir), repo="test-org/imdb-tiny").commit
    assert len(up.commits) == commits


def test_with_onnx_uploads_the_export_to_the_branch_asked(run, hub, online, tmp_path):
    up, down = hub
    online(up.endpoint)
    model = tmp_path / "model"
    shutil.copytree(run.model_dir, model)
    pushed = warmstart.push(
        model=str(model), repo="test-org/imdb-onnx", revision="onnx", with_onnx=True
    )
    assert pushed.onnx == model / "onnx" and pushed.revision == "onnx"
    assert up.commits[-1]["branch"] == "onnx" and "onnx/model.int8.onnx" in up.commits[-1]["paths"]
    pulled = pull(down.endpoint, "test-org/imdb-onnx", tmp_path / "pulled", revision="onnx")
    assert {"model.onnx", "model.int8.onnx", "config.json"} <= {
        p.name for p in (pulled / "onnx").iterdir()
    }
    # The pulled export is self-contained: it predicts as the local one does.
    int8 = dict(backend="onnx", quantize="int8")
    assert probabilities(pulled / "onnx", **int8) == probabilities(model, **int8)
    # main holds only the initial commit: the push went to its branch.
    assert not (
        pull(down.endpoint, "test-org/imdb-onnx", tmp_path / "main") / "config.json"
    ).exists()


def test_a_run_saved_without_a_card_is_pushed_with_one_from_its_run_folder(
    run, hub, online, tmp_path
):
    up, down = hub
    online(up.endpoint)
    copy = tmp_path / "older-run"
    shutil.copytree(run.run_dir, copy)
    (copy / "model" / "README.md").unlink()
    warmstart.push(model=str(copy), repo="test-org/older")
    card = ModelCard.load(pull(down.endpoint, "test-org/older", tmp_path / "pulled") / "README.md")
    assert "## Evaluation" in card.text and 'model="test-org/older"' in card.text
    index = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert index["accuracy"] == run.metrics["test"]["accuracy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HINT = "set HF_TOKEN to a token with write access, or run `hf auth login`"


@pytest.mark.parametrize(
    "case",
    ["no token", "invalid token", "read-only token", "unknown namespace", "unreachable", "offline"],
)
def test_each_refusal_is_one_line_and_exit_2(case, run, hub, online, capsys):
    up, _ = hub
    endpoint = f"http://127.0.0.1:{free_port()}" if case == "unreachable" else up.endpoint
    token = {"no token": None, "invalid token": "hf_bogus", "read-only token": READ}.get(
        case, WRITE
    )
    online(endpoint, token, offline=case == "offline")
    repo = "nobody/imdb" if case == "unknown namespace" else "test-org/refused"
    card = (run.model_dir / "README.md").read_bytes()
    commits = len(up.commits)
    assert main(["push", str(run.run_dir), "--repo", repo]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    expected = {
        "no token": f"error: no Hugging Face token to push '{repo}' with: {HINT}",
        "invalid token": f"error: the Hub at {endpoint} refused the token (401 Unauthorized): it is"
        f" invalid or expired; {HINT}",
        "read-only token": f"error: the token may not write to '{repo}' at {endpoint} (403"
        " Forbidden) (the server said: Forbidden: you must use a write token to write to a"
        " repository): use a token with write access to that namespace (a fine-grained token"
        " needs write permission on it)",
        "unknown namespace": f"error: '{repo}' (branch 'main') was not found at {endpoint} and"
        " could not be created (404) (the server said: Namespace 'nobody' not found): check the"
        " namespace is your user name or an organization you belong to",
        "offline": f"error: pushing to '{repo}' needs the network, but HF_HUB_OFFLINE=1 keeps"
        " warmstart off it: unset it (or set HF_HUB_OFFLINE=0) to push",
    }
    if case == "unreachable":
        assert err.startswith(f"error: cannot reach the Hub at {endpoint} (") and err.endswith(
            f"check the network and HF_ENDPOINT, then push again (`warmstart push"
            f" {run.model_dir} --repo {repo}`)\n"
        ), err
    else:
        assert err == expected[case] + "\n"
    assert (run.model_dir / "README.md").read_bytes() == card and len(up.commits) == commits


def test_a_bad_repo_id_or_a_folder_that_is_no_model_is_one_line(run, hub, online, tmp_path, capsys):
    online(hub[0].endpoint)
    assert main(["push", str(run.run_dir), "--repo", "a/b/c"]) == 2
    assert capsys.readouterr().err.startswith("error: --repo 'a/b/c' is not a Hub repo id")
    (tmp_path / "empty").mkdir()
    assert main(["push", str(tmp_path / "empty"), "--repo", "test-org/x"]) == 2
    assert "has no config.json, so it is not a saved model" in capsys.readouterr().err


def test_finetune_push_to_hub_pushes_the_finished_run(
    tiny_models, imdb_head, hub, online, tmp_path, capsys
):
    up, down = hub
    args = [
        "finetune",
        "--data",
        str(imdb_head),
        "--split",
        "120,40,40",
        "--model",
        str(tiny_models["bert"]),
        "--max-length",
        "32",
        "--epochs",
        "1",
        "--precision",
        "fp32",
        "--no-progress",
        "--push-to-hub",
        "test-org/finetuned",
    ]
    # Without a token it is refused before any training: no run folder.
    online(up.endpoint, token=None)
    assert main([*args, "--out", str(tmp_path / "refused")]) == 2
    assert "no Hugging Face token" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()

    online(up.endpoint)
    out = tmp_path / "run"
    assert main([*args, "--out", str(out)]) == 0
    assert f"pushed {out / 'model'} to {up.endpoint}/test-org/finetuned" in capsys.readouterr().err
    pushed = next(c for c in up.commits if c["repo"] == "test-org/finetuned")
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(
        pushed["paths"]
    )
    pulled = pull(down.endpoint, "test-org/finetuned", tmp_path / "pulled")
    metrics = json.loads((out / "metrics.json").read_text())
    index = ModelCard.load(pulled / "README.md").data.eval_results
    assert {r.metric_type: r.metric_value for r in index}["accuracy"] == metrics["test"]["accuracy"]
