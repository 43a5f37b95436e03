"""A Hugging Face Hub on loopback for the tests: local git repositories served by olah.

Every Hub test drives the real `huggingface_hub` (and `datasets`) clients against it with
``HF_ENDPOINT`` set to ``HubServer.endpoint``; nothing reaches the internet. olah runs with
``offline = true`` and ``mirrors-path`` pointing at a folder laid out as the Hub's URLs are:
``models/ORG/NAME`` and ``datasets/ORG/NAME``, each a git repository (a dataset repository needs a
README.md whose YAML lists ``configs:``).

    root = tmp_path / "hub"
    sha = make_git_repo(root / "models" / "test-org" / "minilm", minilm_repo_files(), tags=["v1"])
    with HubServer(root) as hub:
        subprocess.run([...], env={**os.environ, "HF_ENDPOINT": hub.endpoint, ...})

huggingface_hub reads HF_ENDPOINT once, when it is imported, into ``constants.ENDPOINT`` (API calls)
and ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` (file downloads): a test in this process must change
both (``use_endpoint``), or a file download goes to huggingface.co. A subprocess with HF_ENDPOINT in
its environment needs nothing more.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

# Fixed identity and dates: the same files give the same commit shas on every run.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "warmstart tests",
    "GIT_AUTHOR_EMAIL": "tests@warmstart.invalid",
    "GIT_AUTHOR_DATE": "2024-01-01T00:00:00+00:00",
    "GIT_COMMITTER_NAME": "warmstart tests",
    "GIT_COMMITTER_EMAIL": "tests@warmstart.invalid",
    "GIT_COMMITTER_DATE": "2024-01-01T00:00:00+00:00",
    # No user or system git config (signing, hooks, templates) changes what is committed.
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _git(path: Path, *args: str) -> str:
    done = subprocess.run(
        # Uncompressed objects: the bundled MiniLM's 90 MB of weights commit in a fraction of the
        # time zlib takes.
        ["git", "-c", "core.compression=0", "-c", "init.defaultBranch=main", *args],
        cwd=path,
        env={**os.environ, **GIT_ENV},
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed in {path}: {done.stderr.strip()}")
    return done.stdout.strip()


def make_git_repo(
    path: Path,
    files: dict[str, bytes | str | Path],
    tags: Sequence[str] = (),
    branch: str = "main",
) -> str:
    """Commit ``files`` (repository path -> bytes, text, or a file to copy) to ``branch`` of the git
    repository at ``path`` (created if missing), tag the commit with each of ``tags``, and return
    its sha. Called again on the same path, it adds a commit on top: files not named stay."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not (path / ".git").exists():
        _git(path, "init", "-q", "-b", branch)
    elif _git(path, "rev-parse", "--abbrev-ref", "HEAD") != branch:
        _git(path, "switch", "-q", "-C", branch)
    for name, content in files.items():
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        elif isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content, encoding="utf-8")
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "--allow-empty", "-m", f"commit {len(files)} file(s)")
    for tag in tags:
        _git(path, "tag", "-f", tag)
    return _git(path, "rev-parse", "HEAD")


def minilm_repo_files() -> dict[str, Path]:
    """The bundled MiniLM's files (alias ``minilm``), repository path -> file, to publish as
    ``models/test-org/minilm``."""
    from warmstart.models.bundled import minilm  # the alias's folder, without loading transformers

    folder = minilm()
    return {
        p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(folder).parts
    }


def use_endpoint(monkeypatch, endpoint: str) -> None:
    """Point this process's huggingface_hub at ``endpoint`` for one test (``monkeypatch``: pytest's
    fixture, which undoes it): what HF_ENDPOINT would have set had it been there at import."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    url = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)  # for libraries that read it later (datasets)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubServer:
    """olah serving the git repositories under ``root`` (``models/ORG/NAME``,
    ``datasets/ORG/NAME``) on a free loopback port, offline: ``.endpoint`` is what
    ``HF_ENDPOINT`` takes. A context manager: started on entry, stopped on exit."""

    def __init__(self, root: Path, timeout: float = 60.0) -> None:
        self.root = Path(root).resolve()
        self.timeout = timeout
        self.port = 0
        self.endpoint = ""
        self._proc: subprocess.Popen | None = None
        self._work = self.root.parent / f".{self.root.name}-olah"

    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._work.mkdir(parents=True, exist_ok=True)
        config = self._work / "olah.toml"
        # olah's config loader (olah.configs.OlahConfig.read_toml): [basic] and [accessibility].
        config.write_text(
            "[basic]\n"
            f'host = "127.0.0.1"\n'
            f"port = {self.port}\n"
            f'repos-path = "{(self._work / "repos").as_posix()}"\n'
            f'mirror-netloc = "127.0.0.1:{self.port}"\n'
            f'mirror-lfs-netloc = "127.0.0.1:{self.port}"\n'
            f'mirrors-path = ["{self.root.as_posix()}"]\n'
            "[accessibility]\n"
            "offline = true\n",
            encoding="utf-8",
        )
        self._log = open(self._work / "olah.out", "wb")  # noqa: SIM115 (closed in stop)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "olah.server",
                "--config",
                str(config),
                "--log-path",
                str(self._work / "logs"),
            ],
            cwd=self._work,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.timeout
        while True:
            if self._proc.poll() is not None:
                self._log.close()
                out = (self._work / "olah.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"olah exited with {self._proc.returncode}:\n{out}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/api/whoami-v2", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # it answers (whoami without a token is 401): up
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"olah did not answer on {self.endpoint}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
            self._log.close()
