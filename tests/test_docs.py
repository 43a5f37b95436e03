"""The docs stay true to the code: the generated CLI reference lists every option of every command as
the real parser has it, every page is in mkdocs.yml's nav, every relative link (and #anchor) resolves,
the guides' examples marked runnable run on the shared data, and the site builds with --strict where
MkDocs is installed (`make docs` installs it; `make test` does not)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

from warmstart import cli, reference
from warmstart.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SHARED = ROOT.parent / "shared"
# Written by `python -m warmstart.reference docs/reference` (make docs), not committed.
GENERATED = {"reference/cli.md": reference.cli_markdown, "reference/python-api.md": None}

MARKER = re.compile(r"^<!-- runnable(?::[^>]*)? -->$", re.MULTILINE)
RUNNABLE = re.compile(
    r"^<!-- runnable(?P<slow>: slow)? -->\s*\n```(?:bash|sh)[^\n]*\n(?P<code>.*?)\n```",
    re.DOTALL | re.MULTILINE,
)
# A page may show the marker itself inside a four-backtick block (contributing.md): not an example.
SHOWN = re.compile(r"^````.*?^````", re.DOTALL | re.MULTILINE)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)", re.MULTILINE)


def pages() -> list[str]:
    return sorted(
        p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md") if "reference" not in p.parts
    )


def nav_pages(nav) -> list[str]:
    found = []
    for item in nav:
        for value in item.values() if isinstance(item, dict) else [item]:
            found += nav_pages(value) if isinstance(value, list) else [value]
    return found


def mkdocs_config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def prose(text: str) -> str:
    """The text outside fenced code blocks, where links are links."""
    return "".join(FENCE.split(text)[::4])


def section(markdown: str, command: str) -> str:
    start = markdown.index(f"\n## {command}\n")
    end = markdown.find("\n## ", start + 1)
    return markdown[start : end if end > 0 else None]


def slug(heading: str) -> str:
    """Python-Markdown's toc slugify (what MkDocs makes of a heading's anchor)."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(markdown: str) -> set[str]:
    """The anchors of a page's headings; a repeated heading gets _1, _2... as Python-Markdown does."""
    ids: set[str] = set()
    for line in prose(markdown).splitlines():
        found = re.match(r"#{1,6} (.+?)\s*#*$", line)
        if found:
            base = anchor = slug(found.group(1))
            n = 1
            while anchor in ids:
                anchor, n = f"{base}_{n}", n + 1
            ids.add(anchor)
    return ids


def test_the_cli_reference_lists_every_option_of_every_command_as_the_parser_has_it():
    markdown = reference.cli_markdown()
    subparsers = cli.parser().get_default("subparsers")
    assert set(subparsers) == set(COMMANDS)
    for name, sub in subparsers.items():
        part = section(markdown, name)
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.option_strings:  # a positional: MODEL, TEXTS...
                assert f"`{action.dest.upper()}` (positional)" in part, (name, action.dest)
                continue
            for flag in action.option_strings:
                assert f"`{flag}" in part, f"{name}: {flag} is missing from the CLI reference"
            for choice in action.choices or ():
                assert f"`{choice}`" in part, f"{name} {action.option_strings[0]}: {choice}"


def test_the_cli_reference_states_each_options_default_range_and_help():
    part = section(reference.cli_markdown(), "finetune")
    epochs = next(line for line in part.splitlines() if line.startswith("- `--batch-size "))
    assert "default `16`" in epochs and "≥ 1" in epochs and "batch size" in epochs
    lr = next(line for line in part.splitlines() if line.startswith("- `--warmup-ratio "))
    assert "≥ 0 and ≤ 1" in lr
    assert "- `--shuffle` / `--no-shuffle` (bool; default off)" in part


def test_the_python_api_page_names_every_command_and_result():
    markdown = reference.api_markdown()
    for c in COMMANDS.values():
        assert f"::: {c.where}.{c.name}\n" in markdown
        if c.result:
            assert f"::: {c.where}.{c.result}\n" in markdown


def test_every_docs_page_is_in_the_nav_and_every_nav_entry_exists():
    listed = nav_pages(mkdocs_config()["nav"])
    missing = sorted(set(pages()) - set(listed))
    assert not missing, f"add these pages to mkdocs.yml's nav: {missing}"
    absent = [p for p in listed if not (DOCS / p).is_file() and p not in GENERATED]
    assert not absent, f"mkdocs.yml's nav lists pages that do not exist: {absent}"
    assert len(listed) == len(set(listed)), "a page is listed twice in the nav"


@pytest.mark.parametrize("page", [*pages(), "../README.md"])
def test_every_relative_link_and_anchor_resolves(page):
    path = DOCS / page
    text = path.read_text(encoding="utf-8")
    broken = []
    for match in LINK.finditer(prose(text)):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path.resolve()
        generated = (
            resolved.relative_to(DOCS.resolve()).as_posix() if DOCS in resolved.parents else ""
        )
        if generated in GENERATED:
            body = GENERATED[generated]() if GENERATED[generated] else ""
        elif resolved.is_file():
            body = resolved.read_text(encoding="utf-8") if resolved.suffix == ".md" else ""
        else:
            broken.append(f"{target} (no such file)")
            continue
        if anchor and body and anchor not in anchors(body):
            broken.append(f"{target} (no heading with anchor #{anchor})")
    assert not broken, f"{page}: broken links: {broken}"


def runnable_blocks() -> list[tuple[str, list[tuple[str, bool]]]]:
    """Each page's marked blocks: (code, slow) in page order."""
    found = []
    for page in pages():
        text = SHOWN.sub("", (DOCS / page).read_text(encoding="utf-8"))
        blocks = list(RUNNABLE.finditer(text))
        assert len(blocks) == len(MARKER.findall(text)), (
            f"{page}: a runnable marker must be followed by a ```bash block"
        )
        if blocks:
            found.append((page, [(b.group("code"), bool(b.group("slow"))) for b in blocks]))
    return found


def test_runnable_markers_are_followed_by_a_code_block():
    assert runnable_blocks(), "no runnable example in the docs"


def run_blocks(page: str, blocks: list[str], tmp_path: Path, timeout: float) -> None:
    """A page's marked blocks in order, in one scratch folder beside ../shared, as a user runs them
    from a checkout (so ../shared/data/... and configs/ resolve)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is missing: the examples read the shared data")
    work = tmp_path / "checkout"
    work.mkdir()
    (tmp_path / "shared").symlink_to(SHARED)
    (work / "configs").symlink_to(ROOT / "configs")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for i, code in enumerate(blocks, 1):
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", code],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, (
            f"{page}, runnable block {i} failed ({done.returncode}):\n{code}\n"
            f"--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
        )


# The default suite runs a page's quick blocks (which must not need its slow ones); the slow suite
# runs every block of a page that has a slow one, in order.
@pytest.mark.parametrize(
    "page,blocks",
    [
        pytest.param(p, [code for code, slow in b if not slow], id=p)
        for p, b in runnable_blocks()
        if not all(slow for _, slow in b)
    ],
)
def test_runnable_examples_run(page, blocks, tmp_path):
    run_blocks(page, blocks, tmp_path, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize(
    "page,blocks",
    [
        pytest.param(p, [code for code, _ in b], id=p)
        for p, b in runnable_blocks()
        if any(slow for _, slow in b)
    ],
)
def test_slow_runnable_examples_run(page, blocks, tmp_path):
    run_blocks(page, blocks, tmp_path, timeout=1800)


def test_the_site_builds_strictly(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings_handlers.python"):
        if importlib.util.find_spec(module.split(".")[0]) is None or (
            "." in module and importlib.util.find_spec(module) is None
        ):
            pytest.skip(f"{module} is not installed: `make docs` installs the docs tools")
    # A copy, so the generated reference pages are written beside the copy, not into docs/.
    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("reference"))
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    (tmp_path / "src").symlink_to(ROOT / "src")
    reference.write(tmp_path / "docs" / "reference")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()


def commands_in(text: str) -> list[str]:
    """The `warmstart ...` command lines of a page's code blocks, continuation lines joined."""
    found = []
    for block in re.findall(
        r"^```[^\n]*\n(.*?)^```", SHOWN.sub("", text), re.DOTALL | re.MULTILINE
    ):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^\s*(\$ |[A-Z_]+=\S+ )*", "", line)  # a prompt, HF_HUB_OFFLINE=1 ...
            if line.startswith("warmstart ") and "..." not in line:
                found.append(line)
    return found


@pytest.mark.parametrize("page", pages())
def test_every_warmstart_command_in_the_docs_takes_the_options_it_is_given(page):
    """Each documented command line parses: its command exists and every flag, choice and type
    is one the CLI takes (the examples are not run here; runnable ones are, above)."""
    refused = []
    for line in commands_in((DOCS / page).read_text(encoding="utf-8")):
        try:
            argv = shlex.split(line, comments=True)
        except ValueError:
            continue  # an example holding a quote it explains, not a command to run
        with contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                cli.parse(argv[1:])
            except SystemExit as e:
                if e.code:
                    refused.append(f"{line}\n    {err.getvalue().strip()}")
    assert not refused, f"{page}: commands the CLI refuses:\n" + "\n".join(refused)
