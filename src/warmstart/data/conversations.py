"""Conversations and preference pairs: read, checked, rendered with a chat template.

Three formats read to the same messages (``{"role", "content"}``; roles system, user, assistant):
a ``messages`` list (OpenAI, TRL), a ShareGPT ``conversations`` list (``from``/``value``: human,
gpt, system) and an HH-RLHF transcript (``\\n\\nHuman: …\\n\\nAssistant: …``). A conversation may
open with a system message, then alternates user and assistant, starting with the user; one for
training ends with an assistant reply. Every problem is a UserError naming the file, row and column.

Rendering (``ChatRenderer``) goes through the tokenizer's chat template, so what is trained is what
`generate --chat` and the server's chat route ask. An assistant turn's tokens are found by rendering
the conversation up to it (with the generation prompt) and through it: the characters in between
are the reply as the template writes it; the tokens starting there are labelled, up to and
including the end-of-turn token (the tokenizer's EOS, e.g. ``<|im_end|>``), not what the template
writes after it (a new line) — the span a ``{% generation %}`` block marks in TRL's templates."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from warmstart.data.batching import IGNORE
from warmstart.data.hub import DatasetSplit
from warmstart.data.tables import find_column, read_table, source_of
from warmstart.errors import UserError, where

# Looked for in this order when --conversation-column is not given.
CONVERSATION_COLUMNS = ("messages", "conversations", "conversation", "dialogue", "chat")
# ShareGPT's speakers (and OpenAI's roles, which some ShareGPT dumps use).
SPEAKERS = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}
HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
# A conversation template with the usual ChatML markers, for a model that has none (--template chatml).
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def parse_hh(text: str, place: str) -> list[dict]:
    """An HH-RLHF transcript as messages: ``\\n\\nHuman: …\\n\\nAssistant: …`` turns."""
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise UserError(
            f"{place}: not a conversation: expected a messages list, a ShareGPT conversations list"
            " or an HH transcript starting with '\\n\\nHuman:'"
        )
    roles = {"Human": "user", "Assistant": "assistant"}
    messages: list[dict] = []
    for r, c in zip(parts[1::2], parts[2::2]):
        # Two turns of one speaker in a row: the published HH data misspells a marker now and then
        # ("\n\nHumans:"), which leaves the other speaker's turn inside this one; read as one.
        if messages and messages[-1]["role"] == roles[r]:
            messages[-1]["content"] += f"\n\n{r}: {c}"
        else:
            messages.append({"role": roles[r], "content": c})
    return messages


def to_messages(cell: object, place: str) -> list[dict]:
    """One table cell as messages: a list (or JSON text of one) of role/content or from/value
    dicts, or an HH transcript."""
    if isinstance(cell, str):
        stripped = cell.lstrip()
        if stripped.startswith("["):
            try:
                cell = json.loads(cell)
            except json.JSONDecodeError:
                raise UserError(
                    f"{place}: not valid JSON: a list of messages was expected"
                ) from None
        else:
            return parse_hh(cell, place)
    if isinstance(cell, np.ndarray):  # Parquet's lists arrive as arrays
        cell = cell.tolist()
    if not isinstance(cell, list) or not cell:
        raise UserError(f"{place}: not a conversation: expected a non-empty list of messages")
    messages = []
    for k, m in enumerate(cell, 1):
        if not isinstance(m, dict):
            raise UserError(f"{place}, message {k}: not an object with role and content")
        if "role" in m:
            role, content = m.get("role"), m.get("content")
        elif "from" in m:
            role, content = SPEAKERS.get(str(m.get("from")).lower()), m.get("value")
            if role is None:
                raise UserError(
                    f"{place}, message {k}: unknown speaker {m.get('from')!r} (human, gpt, system)"
                )
        else:
            raise UserError(f"{place}, message {k}: has neither role/content nor from/value")
        if not isinstance(content, str):
            raise UserError(f"{place}, message {k}: its content is not text")
        messages.append({"role": role, "content": content})
    return messages


def check(messages: list[dict], place: str, end_with_assistant: bool = True) -> list[dict]:
    """Raise unless ``messages`` are an optional system message, then user and assistant turns in
    turn from the user's (ending with the assistant's when ``end_with_assistant``)."""
    body = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for k, m in enumerate(body):
        want = "user" if k % 2 == 0 else "assistant"
        if m["role"] != want:
            n = k + 1 + (len(messages) - len(body))
            raise UserError(
                f"{place}: message {n} is from '{m['role']}' where '{want}' was expected: roles"
                " must alternate user, assistant (after an optional first system message)"
            )
    if not any(m["role"] == "assistant" for m in body):
        raise UserError(f"{place}: the conversation has no assistant turn, nothing to learn")
    if end_with_assistant and body[-1]["role"] != "assistant":
        raise UserError(f"{place}: the conversation ends with a user turn: no reply to learn")
    return messages


@dataclass
class Conversations:
    """Checked conversations and their row numbers in ``source`` (as Pairs and Examples have)."""

    source: str
    messages: list[list[dict]]
    rows: list[int]
    column: str

    def __len__(self) -> int:
        return len(self.messages)

    def take(self, index: np.ndarray | list[int] | slice) -> Conversations:
        idx = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        return replace(
            self,
            messages=[self.messages[int(i)] for i in idx],
            rows=[self.rows[int(i)] for i in idx],
        )

    def where(self, i: int) -> str:
        return where(self.source, self.rows[i], self.column)


def conversation_column(df: pd.DataFrame, path: object, given: str | None) -> str | None:
    """The column holding conversations: the one named, else the first of CONVERSATION_COLUMNS
    present, else None (the table holds something else: pairs)."""
    return find_column(
        df, path, given, CONVERSATION_COLUMNS, "conversation", "--conversation-column", False
    )


def read_conversations(
    path: str | Path | DatasetSplit, column: str | None = None, limit: int | None = None
) -> Conversations:
    df = read_table(path, limit)
    col = conversation_column(df, path, column)
    if col is None:
        raise UserError(
            f"{where(path)}: no conversation column found ({', '.join(CONVERSATION_COLUMNS)});"
            " name it with --conversation-column"
        )
    source = source_of(path)
    messages = [
        check(to_messages(cell, where(source, i, col)), where(source, i, col))
        for i, cell in enumerate(df[col].tolist(), 1)
    ]
    return Conversations(source, messages, list(range(1, len(df) + 1)), col)


def has_conversations(path: str | Path, column: str | None) -> bool:
    """Whether a table's first rows hold conversations (a conversation column is present)."""
    return conversation_column(read_table(path, 5), path, column) is not None


@dataclass
class Preferences:
    """Preference pairs: the conversation so far (ending with the user's turn) and two replies, the
    chosen one and the rejected one."""

    source: str
    prompts: list[list[dict]]
    chosen: list[str]
    rejected: list[str]
    rows: list[int]
    column: str = "chosen"

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, index: np.ndarray | list[int] | slice) -> Preferences:
        idx = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        pick = [int(i) for i in idx]
        return replace(
            self,
            prompts=[self.prompts[i] for i in pick],
            chosen=[self.chosen[i] for i in pick],
            rejected=[self.rejected[i] for i in pick],
            rows=[self.rows[i] for i in pick],
        )

    def where(self, i: int, column: str | None = None) -> str:
        return where(self.source, self.rows[i], column or self.column)


def _reply(cell: object, place: str) -> str:
    """A chosen/rejected cell beside a prompt column: the reply's text, or its last message's."""
    if isinstance(cell, str) and not cell.lstrip().startswith(("[", "\n\nHuman:")):
        return cell
    messages = to_messages(cell, place)
    if messages[-1]["role"] != "assistant":
        raise UserError(f"{place}: the reply's last message is not the assistant's")
    return messages[-1]["content"]


def is_preference_table(path: str | Path | DatasetSplit) -> bool:
    df = read_table(path, 5)
    lower = {c.strip().lower() for c in df.columns}
    return {"chosen", "rejected"} <= lower


def read_preferences(path: str | Path | DatasetSplit, limit: int | None = None) -> Preferences:
    """Pairs from ``prompt``/``chosen``/``rejected`` columns, or from ``chosen``/``rejected``
    conversations that share every turn but the last assistant reply (HH-RLHF as published)."""
    df = read_table(path, limit)
    cc = find_column(df, path, None, ("chosen",), "chosen", "a 'chosen' column")
    rc = find_column(df, path, None, ("rejected",), "rejected", "a 'rejected' column")
    pc = find_column(df, path, None, ("prompt",), "prompt", "", required=False)
    source = source_of(path)
    prompts, chosen, rejected = [], [], []
    for i, (c, r) in enumerate(zip(df[cc].tolist(), df[rc].tolist()), 1):
        place = where(source, i, cc)
        if pc is not None:
            p = df[pc].iloc[i - 1]
            prompt = (
                [{"role": "user", "content": p}]
                if isinstance(p, str) and not p.lstrip().startswith(("[", "\n\nHuman:"))
                else to_messages(p, where(source, i, pc))
            )
            check(prompt + [{"role": "assistant", "content": "-"}], where(source, i, pc))
            a, b = _reply(c, place), _reply(r, where(source, i, rc))
        else:
            mc, mr = to_messages(c, place), to_messages(r, where(source, i, rc))
            check(mc, place)
            check(mr, where(source, i, rc))
            if mc[:-1] != mr[:-1]:
                raise UserError(
                    f"{where(source, i)}: the chosen and rejected conversations differ before"
                    " their last reply: a pair must share its prompt"
                )
            prompt, a, b = mc[:-1], mc[-1]["content"], mr[-1]["content"]
        if a.strip() == b.strip():
            raise UserError(f"{place}: the chosen and rejected replies are the same")
        prompts.append(prompt)
        chosen.append(a)
        rejected.append(b)
    return Preferences(source, prompts, chosen, rejected, list(range(1, len(df) + 1)), cc)


@dataclass
class Rendered:
    """A conversation as token ids with labels (IGNORE outside the trained assistant turns)."""

    ids: list[int]
    labels: list[int]
    dropped_turns: int = 0  # user/assistant exchanges cut from the start to fit
    cut: bool = False  # still too long with the last exchange alone: its end cut


class ChatRenderer:
    """A tokenizer's chat template turned into token ids and assistant-only labels."""

    def __init__(self, tokenizer, name: str = "this model", template: str | None = None):
        if template is not None:
            tokenizer.chat_template = chat_template_of(template)
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(
                f"model '{name}' has no chat template, so conversations cannot be rendered; give"
                " one with --template (chatml, a Jinja template, or a file holding one)"
            )
        if tokenizer.eos_token_id is None:
            raise UserError(f"model '{name}': its tokenizer has no end-of-sequence token")
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id

    def text(self, messages: list[dict], generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        """The ids the model continues to reply to ``messages`` (generate --chat, scoring)."""
        return self.tokenizer(self.text(messages, True), add_special_tokens=False)["input_ids"]

    def spans(self, messages: list[dict], train_on: str) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the character spans of the assistant turns to learn."""
        full = self.text(messages)
        turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
        spans = []
        for k in turns[-1:] if train_on == "last" else turns:
            before, through = self.text(messages[:k], True), self.text(messages[: k + 1])
            if not (full.startswith(before) and full.startswith(through)):
                raise UserError(
                    "the chat template renders earlier turns differently once later ones follow,"
                    " so the assistant turns cannot be located; give another with --template"
                )
            spans.append((len(before), len(through)))
        return full, spans

    def render(self, messages: list[dict], train_on: str = "all") -> Rendered:
        full, spans = self.spans(messages, train_on)
        enc = self.tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        labels = [IGNORE] * len(ids)
        for start, end in spans:
            inside = [j for j, (a, _) in enumerate(offsets) if start <= a < end]
            ends = [j for j in inside if ids[j] == self.eos]
            # The reply and its end-of-turn token; what the template writes after it is not.
            for j in inside if not ends else [j for j in inside if j <= ends[-1]]:
                labels[j] = ids[j]
        return Rendered(ids, labels)

    def fit(self, messages: list[dict], max_length: int, train_on: str = "all") -> Rendered:
        """The conversation rendered within ``max_length`` tokens: whole user/assistant exchanges
        dropped from the start (a system message kept) until it fits, the last one always kept;
        if that alone is too long, its end is cut."""
        system = messages[:1] if messages[0]["role"] == "system" else []
        body = messages[len(system) :]
        dropped = 0
        out = self.render(messages, train_on)
        while len(out.ids) > max_length and len(body) > 2:
            body = body[2:]
            dropped += 1
            out = self.render(system + body, train_on)
        out.dropped_turns = dropped
        if len(out.ids) > max_length:
            out.ids, out.labels, out.cut = out.ids[:max_length], out.labels[:max_length], True
        return out


def chat_template_of(template: str) -> str:
    """--template for conversations: ``chatml``, a Jinja template, or a file holding one."""
    if template.strip().lower() == "chatml":
        return CHATML
    if "{%" in template or "{{" in template:
        return template
    path = Path(template).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    raise UserError(
        f"--template {template!r}: for conversations give chatml, a Jinja chat template, or a file"
        " holding one"
    )


def read_messages(value: str) -> list[list[dict]]:
    """`generate --chat --messages`: a JSON list of messages, or a file holding one (.json) or one
    conversation a line (.jsonl: a list, or an object with messages or conversations); each ends
    with the user's turn, which the model answers."""
    text, source = value, "--messages"
    path = Path(value).expanduser()
    if not value.lstrip().startswith("[") and path.is_file():
        text, source = path.read_text(encoding="utf-8"), f"file '{path}'"
    elif not value.lstrip().startswith("["):
        raise UserError(f"--messages {value!r}: neither a JSON list of messages nor a file")
    lines = (
        [ln for ln in text.splitlines() if ln.strip()]
        if path.suffix in (".jsonl", ".ndjson")
        else [text]
    )
    out = []
    for row, line in enumerate(lines, 1):
        place = f"{source}, row {row}" if len(lines) > 1 else source
        try:
            cell = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{place}: not valid JSON ({e.msg})") from None
        if isinstance(cell, dict):
            cell = cell.get("messages", cell.get("conversations"))
        messages = to_messages(cell, place)
        check(messages + [{"role": "assistant", "content": "-"}], place)
        out.append(messages)
    return out
