"""The house style, enforced: ruff's lint (line length at most 110) and format (code wrapped at 100)
pass, and lines over 100 characters stay under 5% of the code lines."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TREES = ["src", "tests", "benchmarks"]


def ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if exe is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    return subprocess.run([exe, *args, *TREES], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check_passes_with_lines_of_at_most_110_characters():
    done = ruff("check", "--output-format", "concise")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format_leaves_every_file_as_it_is():
    done = ruff("format", "--check")
    assert done.returncode == 0, done.stdout + done.stderr


def test_lines_over_100_characters_are_under_5_percent_of_the_code():
    code = long = 0
    for path in (ROOT / "src").rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip() and not line.strip().startswith("#"):
                code += 1
                long += len(line) > 100
    assert long / code < 0.05, f"{long} of {code} code lines are over 100 characters"
