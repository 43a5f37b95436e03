"""Prompts from arguments, a file or standard input: read with the standard library only, since
`generate` on the ONNX route imports nothing heavier (data/tables.py brings pandas)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from warmstart.errors import UserError, where

__all__ = ["read_prompts", "prompts_file", "stdin_lines"]


def stdin_lines(what: str) -> list[str]:
    """The non-blank lines of standard input without their line ends (``\\n`` or ``\\r\\n``)."""
    if sys.stdin is None or sys.stdin.isatty():
        raise UserError(
            f"no {what}: pass them as arguments, with --input FILE, or on standard input"
        )
    return [line.rstrip("\r\n") for line in sys.stdin if line.strip()]


def read_prompts(prompts: list[str], input: str | None) -> list[str]:
    """Prompts given as arguments, else an --input file (see ``prompts_file``), else standard
    input."""
    if prompts and input:
        raise UserError("give prompts as arguments or with --input, not both")
    if input:
        return prompts_file(Path(input))
    if prompts:
        for i, p in enumerate(prompts):
            if not p.strip():
                raise UserError(f"prompt {i + 1} is empty")
        return list(prompts)
    lines = stdin_lines("prompts")
    if not lines:
        raise UserError("no prompts on standard input")
    return lines


def prompts_file(path: Path) -> list[str]:
    """One prompt per line (blank lines skipped), or JSON Lines: a string or an object with 'prompt'
    or 'text'."""
    if not path.is_file():
        raise UserError(f"input file '{path}' does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"input file '{path}' is not UTF-8 text") from None
    jsonl = path.suffix in (".jsonl", ".ndjson")
    prompts = []
    for row, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        prompt: object = line
        if jsonl:
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{where(path, row)} is not valid JSON") from None
            prompt = item.get("prompt", item.get("text")) if isinstance(item, dict) else item
            if not isinstance(prompt, str):
                raise UserError(
                    f"{where(path, row)} needs a string or an object with a 'prompt' string"
                )
        if not prompt.strip():
            raise UserError(f"{where(path, row)} has an empty prompt")
        prompts.append(prompt)
    if not prompts:
        raise UserError(f"input file '{path}' has no prompts")
    return prompts
