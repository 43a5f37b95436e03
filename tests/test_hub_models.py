"""--model as a Hugging Face id: downloaded once into the cache (safetensors preferred, --revision
honoured and recorded), then used offline; `warmstart download`; one line for each way a download
fails; `import warmstart` leaves the environment alone.

The real huggingface_hub client talks to a Hub on loopback (tests/hub_server.py: olah serving git
repositories); nothing reaches the internet. Each test has its own HF_HOME and cache. In-process
tests point huggingface_hub's constants (read once, at its import) at the server and the cache;
the CLI in a subprocess gets them as environment variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

import warmstart
from hub_server import HubServer, free_port, make_git_repo, minilm_repo_files, use_endpoint
from warmstart.cli import main
from warmstart.errors import UserError

TEXTS = "A wonderful film.\nDull and far too long.\nThe actors did what they could.\n"
# Custom code for a model type transformers does not know: loaded only with --trust-remote-code.
CUSTOM_CONFIG = (
    "from transformers import BertConfig\n\n\n"
    "class CustomConfig(BertConfig):\n"
    '    model_type = "warmstart-custom"\n'
)
CUSTOM_MODEL = (
    "from transformers import BertModel\n\n"
    "from .configuration_custom import CustomConfig\n\n\n"
    "class CustomModel(BertModel):\n"
    "    config_class = CustomConfig\n"
)


@pytest.fixture(scope="module")
def repos(tmp_path_factory, tiny_models) -> SimpleNamespace:
    """models/test-org/minilm (the bundled MiniLM and a decoy pytorch_model.bin),
    models/test-org/tiny (a tiny BERT with decoys; commit 1 tagged v1, commit 2 on main adds a key
    to config.json) and models/test-org/custom-code (a config whose model type needs its own
    code)."""
    root = tmp_path_factory.mktemp("hub")
    decoys = {"pytorch_model.bin": b"decoy: never downloaded", "tf_model.h5": b"decoy"}
    make_git_repo(root / "models/test-org/minilm", {**minilm_repo_files(), **decoys})
    tiny = tiny_models["bert"]
    files = {p.name: p for p in tiny.iterdir() if p.is_file()}
    first = make_git_repo(root / "models/test-org/tiny", {**files, **decoys}, tags=["v1"])
    config = json.loads((tiny / "config.json").read_text())
    second = make_git_repo(
        root / "models/test-org/tiny",
        {"config.json": json.dumps({**config, "warmstart_test_commit": "second"})},
    )
    custom = {
        **files,
        "config.json": json.dumps(
            {
                **config,
                "model_type": "warmstart-custom",
                "auto_map": {
                    "AutoConfig": "configuration_custom.CustomConfig",
                    "AutoModel": "modeling_custom.CustomModel",
                },
            }
        ),
        "configuration_custom.py": CUSTOM_CONFIG,
        "modeling_custom.py": CUSTOM_MODEL,
    }
    make_git_repo(root / "models/test-org/custom-code", custom)
    return SimpleNamespace(root=root, first=first, second=second)


@pytest.fixture(scope="module")
def hub(repos):
    with HubServer(repos.root) as server:
        yield server


@pytest.fixture()
def texts(tmp_path) -> Path:
    path = tmp_path / "texts.txt"
    path.write_text(TEXTS, encoding="utf-8")
    return path


def cli_env(tmp_path: Path, endpoint: str | None = None, offline: bool = False) -> dict[str, str]:
    """The environment of a CLI subprocess: its own HF_HOME and cache, no token, the loopback Hub
    (or a port nothing listens on: never the internet)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_CACHE=str(tmp_path / "hf" / "hub"),
        HF_ENDPOINT=endpoint or f"http://127.0.0.1:{free_port()}",
        TOKENIZERS_PARALLELISM="false",
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """`warmstart ARGS` in a process of its own, in the test's folder (relative outputs land
    there)."""
    return subprocess.run(
        [sys.executable, "-m", "warmstart", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture()
def online(monkeypatch, tmp_path):
    """This process's huggingface_hub pointed at a Hub (``online(endpoint)``), with an empty cache
    in tmp_path and no token; returns the cache folder."""
    import huggingface_hub.constants as constants

    def connect(endpoint: str | None = None, offline: bool = False) -> Path:
        cache = tmp_path / "hf" / "hub"
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        use_endpoint(monkeypatch, endpoint or f"http://127.0.0.1:{free_port()}")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf" / "tokens"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        if offline:
            monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        else:
            monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        return cache

    return connect


def error_line(capsys, argv: list[str]) -> str:
    """The one line the CLI prints for ``argv``, which must fail with exit code 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def snapshot_files(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}


def test_a_hub_id_is_downloaded_once_then_used_offline_with_the_server_stopped(
    repos, texts, tmp_path, online, capsys
):
    argv = ["embed", "--model", "test-org/minilm", "--data", str(texts), "--out"]
    with HubServer(repos.root) as server:
        cache = online(server.endpoint)
        assert main([*argv, str(tmp_path / "a.npy")]) == 0, capsys.readouterr().err
    (snapshot,) = (cache / "models--test-org--minilm" / "snapshots").iterdir()
    files = snapshot_files(snapshot)
    assert {"model.safetensors", "tokenizer.json", "1_Pooling/config.json"} <= files
    assert not {"pytorch_model.bin", "tf_model.h5"} & files  # safetensors preferred
    online(offline=True)  # HF_HUB_OFFLINE=1, and the server is gone
    assert main([*argv, str(tmp_path / "b.npy")]) == 0, capsys.readouterr().err
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (3, 384) and np.allclose(a, b)


def test_download_prints_the_snapshot_folder_without_pickled_or_foreign_weights(
    hub, repos, tmp_path
):
    done = cli(["download", "test-org/tiny"], cli_env(tmp_path, hub.endpoint), tmp_path)
    assert done.returncode == 0, done.stderr
    path = Path(done.stdout.strip())
    assert done.stdout.count("\n") == 1 and path.name == repos.second  # main: the second commit
    assert path.is_relative_to(tmp_path / "hf" / "hub")
    files = snapshot_files(path)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
    assert "pytorch_model.bin" not in files and "tf_model.h5" not in files


def test_revision_tag_and_commit_are_honoured_and_recorded_in_config_yaml(
    hub, repos, imdb_head, tmp_path, online, capsys
):
    args = ["--data", str(imdb_head), "--limit", "48", "--split", "32,16", "--epochs", "1"]
    online(hub.endpoint)
    tagged = ["finetune", "--model", "test-org/tiny", "--revision", "v1", *args]
    assert main([*tagged, "--out", str(tmp_path / "tag")]) == 0, capsys.readouterr().err
    text = (tmp_path / "tag" / "config.yaml").read_text()
    assert yaml.safe_load(text)["revision"] == repos.first
    assert "test-org/tiny at 'v1', downloaded" in text  # the header says why
    # v1 is the first commit: the key the second adds to config.json is not in the model.
    saved = json.loads((tmp_path / "tag" / "model" / "config.json").read_text())
    assert "warmstart_test_commit" not in saved
    # The commit itself, offline, from the cache the run above filled.
    online(offline=True)
    by_sha = ["finetune", "--model", "test-org/tiny", "--revision", repos.first, *args]
    assert main([*by_sha, "--out", str(tmp_path / "sha")]) == 0, capsys.readouterr().err
    assert yaml.safe_load((tmp_path / "sha" / "config.yaml").read_text())["revision"] == repos.first
    # Offline, the cache knows v1 (recorded then) but not a branch it never fetched.
    with pytest.raises(UserError, match="revision 'dev' is not available offline"):
        warmstart.evaluate(model="test-org/tiny", revision="dev", data=str(imdb_head))


def test_unknown_repo_is_one_line_saying_so_and_how_to_log_in(hub, online, capsys):
    online(hub.endpoint)
    err = error_line(capsys, ["download", "test-org/no-such-model"])
    assert (
        f"model 'test-org/no-such-model' is not an alias (minilm, smollm2), a local folder, or a "
        f"model on the Hugging Face Hub ({hub.endpoint}); check the name, or if it is private, log "
        "in first: `hf auth login` or set HF_TOKEN" in err
    )


def test_unknown_revision_is_one_line_listing_the_branches_and_tags(hub, online, capsys):
    online(hub.endpoint)
    err = error_line(capsys, ["download", "test-org/tiny", "--revision", "nope"])
    assert (
        "revision 'nope' of model 'test-org/tiny' does not exist on the Hugging Face Hub: give a "
        "branch, tag or commit of the repo (branches: main; tags: v1)" in err
    )


def test_offline_without_the_model_in_the_cache_says_how_to_fetch_it(
    online, texts, tmp_path, capsys
):
    online(offline=True)  # HF_HUB_OFFLINE=1
    err = error_line(capsys, ["download", "test-org/tiny"])
    assert "model 'test-org/tiny' is not available offline" in err
    assert (
        "downloads are off (HF_HUB_OFFLINE=1)" in err
        and "`warmstart download test-org/tiny`" in err
    )
    online()  # online, but --offline
    out = str(tmp_path / "x.npy")
    argv = ["embed", "--model", "test-org/tiny", "--offline", "--data", str(texts), "--out", out]
    err = error_line(capsys, argv)
    assert "is not available offline" in err and "downloads are off (--offline)" in err


def test_unreachable_hub_without_the_model_in_the_cache_says_so(online, imdb_head, capsys):
    port = free_port()  # nothing listens there
    online(f"http://127.0.0.1:{port}")
    args = ["--data", str(imdb_head), "--limit", "48", "--split", "32,16"]
    err = error_line(capsys, ["finetune", "--model", "test-org/tiny", *args])
    assert (
        f"model 'test-org/tiny' is not in the Hugging Face cache and the Hub cannot be reached "
        f"(http://127.0.0.1:{port}: " in err
    )
    assert "fetch it where there is a network (`warmstart download test-org/tiny`)" in err


class GatedHub(BaseHTTPRequestHandler):
    """What the Hub answers a client without a token for a gated repo (olah cannot simulate one:
    its local mirrors are never gated)."""

    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("X-Error-Message", "Access to model test-org/gated is restricted.")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args) -> None:  # quiet
        pass


def test_gated_repo_says_how_to_log_in_or_that_the_token_has_no_access(online, monkeypatch, capsys):
    server = ThreadingHTTPServer(("127.0.0.1", 0), GatedHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        online(endpoint)
        without = error_line(capsys, ["download", "test-org/gated"])
        monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
        with_token = error_line(capsys, ["download", "test-org/gated"])
    finally:
        server.shutdown()
    page = f"{endpoint}/test-org/gated"
    assert (
        f"model 'test-org/gated' is gated: accept its conditions at {page}, then log in: "
        "`hf auth login` or set HF_TOKEN" in without
    )
    assert (
        "model 'test-org/gated' is gated and your token has no access to it: accept its "
        f"conditions at {page} with the account of that token (HF_TOKEN or `hf auth login`)"
        in with_token
    )


def test_a_model_needing_its_own_code_is_refused_before_its_weights_unless_trusted(
    hub, online, texts, tmp_path, capsys
):
    cache = online(hub.endpoint)
    out = str(tmp_path / "c.npy")
    argv = ["embed", "--model", "test-org/custom-code", "--data", str(texts), "--out", out]
    err = error_line(capsys, argv)
    assert (
        "model 'test-org/custom-code' needs its own Python code to load "
        "(configuration_custom.CustomConfig, modeling_custom.CustomModel), which would run on this "
        "machine; read that code in the model's files, then pass --trust-remote-code to allow it"
        in err
    )
    assert not list(cache.rglob("model.safetensors"))  # refused on its config alone
    # Allowed, the code runs (in a process of its own, with its own module cache in HF_HOME).
    done = cli([*argv, "--trust-remote-code"], cli_env(tmp_path, hub.endpoint), tmp_path)
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "c.npy").shape == (3, 32)


def test_disk_full_during_download_leaves_no_model_and_says_so(hub, tmp_path):
    # Files over 100 kB cannot be written (the tiny model's weights are 220 kB): the write fails
    # as on a full disk (EFBIG, one of the errors files.disk_error knows).
    limited = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "from warmstart.cli import main\n"
        "sys.exit(main(['download', 'test-org/tiny']))\n"
    )
    env = cli_env(tmp_path, hub.endpoint)
    done = subprocess.run(
        [sys.executable, "-c", limited], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.count("\n") == 1
    assert (
        f"cannot download model 'test-org/tiny' into the Hugging Face cache ({tmp_path}/hf/hub): "
        "File too large; free some space (or point HF_HUB_CACHE at a disk with room) and run the "
        "command again: files cut short stay blobs/*.incomplete, resumed then and never used as "
        "the model" in done.stderr
    )
    # What was written is not taken for the model.
    offline = cli(["download", "test-org/tiny"], cli_env(tmp_path, offline=True), tmp_path)
    assert offline.returncode == 2 and "is not available offline" in offline.stderr


def test_revision_of_an_alias_or_folder_is_refused(tiny_models, texts, tmp_path):
    with pytest.raises(UserError, match="--revision applies to a Hugging Face id as --model"):
        warmstart.embed(model="minilm", revision="v1", data=str(texts), out=str(tmp_path / "x.npy"))
    with pytest.raises(UserError, match="is bundled with warmstart: nothing to download"):
        warmstart.download(model="minilm")
    with pytest.raises(UserError, match="is a local folder: nothing to download"):
        warmstart.download(model=str(tiny_models["bert"]))


def test_import_warmstart_leaves_the_environment_unchanged(tmp_path):
    probe = (
        "import json, os\n"
        "before = dict(os.environ)\n"
        # The package, the CLI's module and the light model layer (the Hub's part of it); the torch
        # stack behind the commands is other libraries'.
        "import warmstart, warmstart.cli, warmstart.config, warmstart.models.download\n"
        "after = dict(os.environ)\n"
        "print(json.dumps(sorted(k for k in set(before) | set(after) "
        "if before.get(k) != after.get(k))))\n"
    )
    env = {
        k: v
        for k, v in cli_env(tmp_path).items()
        if k not in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")
    }
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
