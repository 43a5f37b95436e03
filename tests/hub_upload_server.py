"""The upload side of a Hugging Face Hub on loopback, for `warmstart push`: exactly the endpoints
``huggingface_hub``'s ``create_repo``, ``create_branch`` and ``upload_folder`` call (read from its
hf_api.py, _commit_api.py and _upload_pipeline.py), writing into git repositories laid out as olah
serves them (tests/hub_server.py: ``ROOT/models/ORG/NAME``), so a push is pulled back through the
real clients.

    POST /api/repos/create                         {name, organization, visibility}: git init + a
                                                   first commit of .gitattributes; 409 if it exists
    GET  /api/models/ORG/NAME[/revision/REV]       model_info: id, sha, siblings
    POST /api/models/ORG/NAME/branch/BRANCH        a branch from main (or startingPoint); 409 if it
                                                   exists
    POST /api/models/ORG/NAME/preupload/REV        every file "regular" (base64 in the commit, so no
                                                   LFS or Xet endpoint is needed), with the blob sha
                                                   REV holds for it (unchanged files are skipped)
    POST /api/models/ORG/NAME/commit/REV           the NDJSON body: a header (summary, description,
                                                   parentCommit), then file / deletedFile /
                                                   deletedFolder lines: one git commit on REV
    POST /api/validate-yaml                        a README's metadata parses
    GET  /api/whoami-v2                            the token's user

Tokens, as the Hub answers them: none → 401; one it does not know → 401 "Invalid credentials in
Authorization header"; a read token → 403 on every write; a write token writes to its user's and its
organizations' namespaces, and creating a repo anywhere else is 404 (no such namespace).

    with HubUploadServer(tmp_path / "hub", tokens={"hf_w": "write"}) as up:
        env HF_ENDPOINT=up.endpoint HF_TOKEN=hf_w warmstart push runs/x --repo test-org/x
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

USER = "tester"
ORGS = ("test-org",)
# Fixed identity, no user or system git config: the same pushes give the same commits.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "hub upload server",
    "GIT_AUTHOR_EMAIL": "upload@warmstart.invalid",
    "GIT_COMMITTER_NAME": "hub upload server",
    "GIT_COMMITTER_EMAIL": "upload@warmstart.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
GITATTRIBUTES = "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git(repo: Path, *args: str, data: bytes | None = None, env: dict | None = None) -> str:
    done = subprocess.run(
        ["git", "-c", "core.compression=0", *args],
        cwd=repo,
        env={**os.environ, **GIT_ENV, **(env or {})},
        input=data,
        capture_output=True,
    )
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args)} in {repo}: {done.stderr.decode().strip()}")
    return done.stdout.decode().strip()


def error(status: int, message: str, code: str | None = None) -> JSONResponse:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class HubUploadServer:
    """A FastAPI app of the Hub's upload endpoints, served by uvicorn in a thread on a free
    loopback port; ``.endpoint`` is what ``HF_ENDPOINT`` takes. ``tokens``: token -> "write" or
    "read". ``.commits`` records every commit made (repo, branch, summary, paths)."""

    def __init__(self, root: Path, tokens: dict[str, str] | None = None) -> None:
        self.root = Path(root).resolve()
        self.tokens = dict(tokens or {})
        self.commits: list[dict] = []
        self.lock = threading.Lock()  # one git write at a time
        self.endpoint = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = self.build()

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> HubUploadServer:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError(f"the upload server did not start on {self.endpoint}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)

    # -- repositories --------------------------------------------------------------------------
    def repo(self, org: str, name: str) -> Path:
        return self.root / "models" / org / name

    def head(self, repo: Path, rev: str) -> str | None:
        try:
            return git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
        except RuntimeError:
            return None

    def blob(self, repo: Path, rev: str, path: str) -> str | None:
        try:
            return git(repo, "rev-parse", "--verify", "--quiet", f"{rev}:{path}")
        except RuntimeError:
            return None

    def files(self, repo: Path, rev: str) -> list[str]:
        out = git(repo, "ls-tree", "-r", "--name-only", rev)
        return out.splitlines() if out else []

    def commit(
        self, repo: Path, branch: str, parent: str | None, changes: list[dict], message: str
    ) -> str:
        """One commit on ``branch`` from ``parent`` with ``changes`` (file adds and deletions),
        through a private index: the repository's working tree is never touched (olah reads
        commits, not files)."""
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            git(repo, "read-tree", *([parent] if parent else ["--empty"]), env=env)
            for change in changes:
                if change["key"] == "file":
                    sha = git(repo, "hash-object", "-w", "--stdin", data=change["content"])
                    git(
                        repo,
                        "update-index",
                        "--add",
                        "--cacheinfo",
                        f"100644,{sha},{change['path']}",
                        env=env,
                    )
                else:  # deletedFile / deletedFolder
                    prefix = change["path"].rstrip("/")
                    paths = git(repo, "ls-files", "--", prefix, env=env).splitlines()
                    for path in paths:
                        git(repo, "update-index", "--force-remove", "--", path, env=env)
            tree = git(repo, "write-tree", env=env)
        sha = git(repo, "commit-tree", tree, *(["-p", parent] if parent else []), "-m", message)
        git(repo, "update-ref", f"refs/heads/{branch}", sha, *([parent] if parent else []))
        return sha

    # -- authorisation -------------------------------------------------------------------------
    def caller(self, request: Request, write: bool) -> JSONResponse | None:
        """None when the request may go on; else the Hub's answer (401, 403)."""
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not token:
            return error(401, "You must be authenticated to access this resource")
        if token not in self.tokens:
            return error(401, "Invalid credentials in Authorization header")
        if write and self.tokens[token] != "write":
            return error(403, "Forbidden: you must use a write token to write to a repository")
        return None

    # -- the app -------------------------------------------------------------------------------
    def build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/api/whoami-v2")
        def whoami(request: Request):
            refused = self.caller(request, write=False)
            if refused:
                return refused
            return {"type": "user", "name": USER, "orgs": [{"name": o} for o in ORGS]}

        @app.post("/api/validate-yaml")
        async def validate_yaml(request: Request):
            body = await request.json()
            content = body.get("content", "")
            if content.startswith("---"):
                try:
                    yaml.safe_load(content.split("---")[1])
                except yaml.YAMLError as e:
                    return JSONResponse({"errors": [{"message": str(e)}]}, status_code=400)
            return {"errors": [], "warnings": []}

        @app.post("/api/repos/create")
        async def create(request: Request):
            refused = self.caller(request, write=True)
            if refused:
                return refused
            body = await request.json()
            org, name = body.get("organization") or USER, body["name"]
            if body.get("type", "model") != "model":
                return error(400, "this test server holds model repositories only")
            if org not in (USER, *ORGS):
                return error(404, f"Namespace '{org}' not found")
            repo = self.repo(org, name)
            url = f"{self.endpoint}/{org}/{name}"
            if (repo / ".git").exists():
                return JSONResponse(
                    {"error": "You already created this model repo", "url": url}, status_code=409
                )
            with self.lock:
                repo.mkdir(parents=True)
                git(repo, "init", "-q", "-b", "main")
                self.commit(
                    repo,
                    "main",
                    None,
                    [{"key": "file", "path": ".gitattributes", "content": GITATTRIBUTES.encode()}],
                    "initial commit",
                )
            return {"url": url, "name": f"{org}/{name}", "id": f"{org}/{name}"}

        def info(org: str, name: str, rev: str):
            repo = self.repo(org, name)
            if not (repo / ".git").exists():
                return error(404, "Repository not found", "RepoNotFound")
            sha = self.head(repo, rev)
            if sha is None:
                return error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            return {
                "id": f"{org}/{name}",
                "modelId": f"{org}/{name}",
                "sha": sha,
                "private": False,
                "siblings": [{"rfilename": f} for f in self.files(repo, sha)],
            }

        @app.get("/api/models/{org}/{name}")
        def model_info(org: str, name: str):
            return info(org, name, "main")

        @app.get("/api/models/{org}/{name}/revision/{rev}")
        def model_info_at(org: str, name: str, rev: str):
            return info(org, name, rev)

        @app.post("/api/models/{org}/{name}/branch/{branch}")
        async def branch(org: str, name: str, branch: str, request: Request):
            refused = self.caller(request, write=True)
            if refused:
                return refused
            repo = self.repo(org, name)
            if not (repo / ".git").exists():
                return error(404, "Repository not found", "RepoNotFound")
            body = await request.body()
            start = (json.loads(body) if body else {}).get("startingPoint") or "main"
            if self.head(repo, branch) is not None:
                return error(409, f"Reference refs/heads/{branch} already exists")
            sha = self.head(repo, start)
            if sha is None:
                return error(404, f"Invalid rev id: {start}", "RevisionNotFound")
            with self.lock:
                git(repo, "update-ref", f"refs/heads/{branch}", sha)
            return {}

        @app.post("/api/models/{org}/{name}/preupload/{rev}")
        async def preupload(org: str, name: str, rev: str, request: Request):
            refused = self.caller(request, write=True)
            if refused:
                return refused
            repo = self.repo(org, name)
            if not (repo / ".git").exists():
                return error(404, "Repository not found", "RepoNotFound")
            if self.head(repo, rev) is None:
                return error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            files = (await request.json())["files"]
            return {
                "files": [
                    {
                        "path": f["path"],
                        "uploadMode": "regular",
                        "shouldIgnore": False,
                        "oid": self.blob(repo, rev, f["path"]),
                    }
                    for f in files
                ]
            }

        @app.post("/api/models/{org}/{name}/commit/{rev}")
        async def commit(org: str, name: str, rev: str, request: Request):
            refused = self.caller(request, write=True)
            if refused:
                return refused
            repo = self.repo(org, name)
            if not (repo / ".git").exists():
                return error(404, "Repository not found", "RepoNotFound")
            lines = [json.loads(x) for x in (await request.body()).splitlines() if x.strip()]
            header = next((x["value"] for x in lines if x["key"] == "header"), {})
            changes = []
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    if value.get("encoding") != "base64":
                        return error(400, f"unsupported encoding {value.get('encoding')}")
                    content = base64.b64decode(value["content"])
                    changes.append({"key": key, "path": value["path"], "content": content})
                elif key in ("deletedFile", "deletedFolder"):
                    changes.append({"key": key, "path": value["path"]})
                elif key != "header":
                    return error(422, f"'{key}' is not supported here: every file is regular")
            with self.lock:
                parent = self.head(repo, rev)
                if parent is None:
                    return error(404, f"Invalid rev id: {rev}", "RevisionNotFound")
                wanted = header.get("parentCommit")
                if wanted and not parent.startswith(wanted):
                    return error(412, "A commit has happened since. Please refresh and try again.")
                message = header.get("summary") or "upload"
                if header.get("description"):
                    message += "\n\n" + header["description"]
                sha = self.commit(repo, rev, parent, changes, message)
            self.commits.append(
                {
                    "repo": f"{org}/{name}",
                    "branch": rev,
                    "summary": header.get("summary"),
                    "paths": sorted(c["path"] for c in changes),
                }
            )
            return {
                "success": True,
                "commitOid": sha,
                "commitUrl": f"{self.endpoint}/{org}/{name}/commit/{sha}",
            }

        return app
