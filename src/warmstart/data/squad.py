"""Extractive question answering data: questions over contexts with the answers' character spans,
read from SQuAD JSON (v1.1, and v2 with ``is_impossible``) or a table, and cut into the windows a
model reads.

A table (CSV, TSV, JSONL, Parquet, or a dataset split) has ``question``, ``context`` and
``answers`` columns; ``answers`` is the Hugging Face ``squad`` layout, ``{"text": [...],
"answer_start": [...]}`` (a JSON string in a CSV cell), or a list of ``{"text", "answer_start"}``;
an empty list is a question with no answer in its context (SQuAD v2). Every answer must stand in its
context at its start: a wrong offset fails naming the file and row, before any training.

A context longer than the model's window is cut with the one windowing helper (data.windows): the
question and the special tokens take their room, the context's tokens are windowed with --stride,
and each context token is answered for by the window where it has the most context (BERT's "maximum
context" rule). A training window holds its answer's first and last token positions, found through
the fast tokenizer's character offsets, or [CLS]'s when the answer is not all inside it."""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from warmstart.data.batching import Encoded
from warmstart.data.hub import DatasetSplit
from warmstart.data.tables import read_table, source_of
from warmstart.data.windows import owners, token_windows
from warmstart.errors import UserError, where

Answer = tuple[str, int]  # (text, character offset of its start in the context)


@dataclass
class QAExamples:
    """Questions with their contexts and reference answers (none: no answer in the context)."""

    source: str
    questions: list[str]
    contexts: list[str]
    answers: list[list[Answer]]
    ids: list[str]
    places: list[str]  # where each question stands in ``source``, for messages
    impossible: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.questions)

    @property
    def with_negatives(self) -> bool:
        """SQuAD v2: some questions have no answer in their context."""
        return any(self.impossible)

    def take(self, index: np.ndarray | list[int] | slice) -> QAExamples:
        idx = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)

        def pick(xs: list) -> list:
            return [xs[i] for i in idx]

        return replace(
            self,
            questions=pick(self.questions),
            contexts=pick(self.contexts),
            answers=pick(self.answers),
            ids=pick(self.ids),
            places=pick(self.places),
            impossible=pick(self.impossible),
        )

    def where(self, i: int) -> str:
        return f"{self.places[i]}"


def read_qa(path: str | Path | DatasetSplit, limit: int | None = None, labelled: bool = True):
    """Questions from SQuAD JSON or a table; with ``labelled`` each answerable question must have
    an answer standing in its context."""
    if not isinstance(path, DatasetSplit) and str(path).lower().endswith(".json"):
        squad = _squad_json(Path(path).expanduser())
        if squad is not None:
            ex = _from_squad(squad, str(path), limit)
            return _checked(ex) if labelled else ex
    if isinstance(path, DatasetSplit):
        read_table(path, 0)  # an empty split fails as an empty file does
        df, source = path.frame(limit), path.place
    else:
        df, source = read_table(path, limit), source_of(path)
    ex = _from_table(df, source, labelled)
    return _checked(ex) if labelled else ex


def _squad_json(path: Path) -> dict | None:
    """The parsed file when it is SQuAD JSON (a ``data`` list of articles), else None (a table)."""
    if not path.is_file():
        raise UserError(f"{where(path)} does not exist")
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError:
        return None  # JSON Lines, or not JSON: the table reader says which
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        return doc
    return None


def _from_squad(doc: dict, source: str, limit: int | None) -> QAExamples:
    ex = QAExamples(source, [], [], [], [], [], [])
    for a, article in enumerate(doc["data"], 1):
        for p, para in enumerate(article.get("paragraphs") or [], 1):
            context = para.get("context")
            for q in para.get("qas") or []:
                qid = str(q.get("id", len(ex)))
                place = f"{where(source)}, article {a}, paragraph {p}, question '{qid}'"
                if not isinstance(context, str) or not context.strip():
                    raise UserError(f"{place}: the paragraph has no context")
                question = q.get("question")
                if not isinstance(question, str) or not question.strip():
                    raise UserError(f"{place}: the question is empty")
                impossible = bool(q.get("is_impossible", False))
                answers = [] if impossible else q.get("answers") or []
                try:
                    refs = [(str(x["text"]), int(x["answer_start"])) for x in answers]
                except (KeyError, TypeError, ValueError):
                    raise UserError(
                        f"{place}: each answer needs 'text' and 'answer_start'"
                    ) from None
                ex.questions.append(question)
                ex.contexts.append(context)
                ex.answers.append(refs)
                ex.ids.append(qid)
                ex.places.append(place)
                ex.impossible.append(impossible or not refs)
                if limit and len(ex) >= limit:
                    return ex
    if not len(ex):
        raise UserError(f"{where(source)} holds no questions")
    return ex


def _from_table(df: pd.DataFrame, source: Any, labelled: bool) -> QAExamples:
    columns = {c.strip().lower(): c for c in df.columns}
    names = ", ".join(f"'{c}'" for c in df.columns)
    for need in ("question", "context"):
        if need not in columns:
            raise UserError(f"{where(source)}: no '{need}' column (columns: {names})")
    flat = "answers.text" in columns and "answers.answer_start" in columns  # a flattened dataset
    if labelled and "answers" not in columns and not flat:
        raise UserError(
            f"{where(source)}: no 'answers' column with each question's answer text and "
            f"answer_start (columns: {names})"
        )
    ex = QAExamples(source, [], [], [], [], [], [])
    for i, row in enumerate(df.to_dict("records")):
        place = where(source, i + 1)
        question, context = row[columns["question"]], row[columns["context"]]
        for what, text in (("question", question), ("context", context)):
            if not isinstance(text, str) or not text.strip():
                raise UserError(f"{where(source, i + 1, columns[what])}: the {what} is empty")
        if flat:
            raw: Any = {
                "text": row[columns["answers.text"]],
                "answer_start": row[columns["answers.answer_start"]],
            }
        else:
            raw = row.get(columns["answers"]) if "answers" in columns else []
        refs = _answers(raw, where(source, i + 1, columns.get("answers", "answers")))
        impossible = "is_impossible" in columns and _truthy(row[columns["is_impossible"]])
        ex.questions.append(question)
        ex.contexts.append(context)
        ex.answers.append([] if impossible else refs)
        ex.ids.append(str(row.get(columns["id"], i + 1)) if "id" in columns else str(i + 1))
        ex.places.append(place)
        ex.impossible.append(impossible or not refs)
    return ex


def _truthy(v: Any) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes")


def _answers(raw: Any, place: str) -> list[Answer]:
    """A cell's answers: ``{"text": [...], "answer_start": [...]}`` or a list of ``{"text",
    "answer_start"}`` (a JSON string in CSV)."""
    if isinstance(raw, str):
        if not raw.strip():
            return []
        try:
            raw = json.loads(raw)
        except ValueError:
            raise UserError(f"{place}: answers is not JSON ({raw[:60]!r})") from None
    if raw is None or (isinstance(raw, float) and np.isnan(raw)):
        return []
    try:
        if isinstance(raw, dict):
            texts, starts = list(raw["text"]), list(raw["answer_start"])
            if len(texts) != len(starts):
                raise ValueError
            return [(str(t), int(s)) for t, s in zip(texts, starts)]
        return [(str(a["text"]), int(a["answer_start"])) for a in list(raw)]
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f'{place}: answers must be {{"text": [...], "answer_start": [...]}} or a list of '
            '{"text", "answer_start"}'
        ) from None


def _checked(ex: QAExamples) -> QAExamples:
    """Every reference answer stands in its context at its start: a wrong offset would train the
    model on the wrong words."""
    for i, (context, refs) in enumerate(zip(ex.contexts, ex.answers)):
        for text, start in refs:
            if not text.strip():
                raise UserError(f"{ex.where(i)}: an answer is empty")
            if context[start : start + len(text)] != text:
                found = context.find(text)
                hint = f" (it is at {found})" if found >= 0 else " (it is nowhere in the context)"
                raise UserError(
                    f"{ex.where(i)}: the answer {text[:60]!r} is not in its context at "
                    f"answer_start {start}{hint}"
                )
    return ex


# -- windows -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairFrame:
    """The special tokens around a (question, context) pair (BERT: [CLS] q [SEP] c [SEP]; RoBERTa:
    <s> q </s></s> c </s>) and each part's token type, to put windows of a context cut by hand
    together as the tokenizer would."""

    before: list[int]
    middle: list[int]
    after: list[int]
    types: tuple[list[int], int, list[int], int, list[int]] | None  # None: no token_type_ids
    cls: int  # the position a window without the answer points at

    @property
    def size(self) -> int:
        return len(self.before) + len(self.middle) + len(self.after)

    def build(self, question: list[int], piece: list[int]) -> dict[str, list[int]]:
        ids = [*self.before, *question, *self.middle, *piece, *self.after]
        if self.types is None:
            return {"input_ids": ids}
        tb, tq, tm, tc, ta = self.types
        types = [*tb, *[tq] * len(question), *tm, *[tc] * len(piece), *ta]
        return {"input_ids": ids, "token_type_ids": types}


def pair_frame(tokenizer) -> PairFrame:
    """Read the frame off the tokenizer's own output for a pair of one-token texts (its
    special-tokens mask), as data.batching.special_frame does for one text."""
    enc = tokenizer("a", "b", return_special_tokens_mask=True, return_attention_mask=False)
    ids, mask = enc["input_ids"], enc["special_tokens_mask"]
    own = [i for i, m in enumerate(mask) if not m]
    if len(own) != 2 or len(ids) - 2 != tokenizer.num_special_tokens_to_add(pair=True):
        raise ValueError(f"cannot tell the special tokens of {type(tokenizer).__name__}")
    q, c = own
    t = enc.get("token_type_ids")
    types = None if t is None else (t[:q], t[q], t[q + 1 : c], t[c], t[c + 1 :])
    cls_id = tokenizer.cls_token_id
    cls = ids.index(cls_id) if cls_id is not None and cls_id in ids else 0
    return PairFrame(ids[:q], ids[q + 1 : c], ids[c + 1 :], types, cls)


@dataclass
class QAWindows:
    """Every window of every question: the encoded rows (with ``start_positions`` and
    ``end_positions`` when trained on), which question each window reads, where its context
    tokens begin, which of them it answers for, and each context's token character offsets."""

    data: Encoded
    example: np.ndarray  # question index of each window
    first: np.ndarray  # position of the window's first context token in its row
    span: list[tuple[int, int]]  # the window's context tokens [s, e) in the context's tokens
    owned: list[np.ndarray]  # of the window's context tokens, those it answers for (max context)
    offsets: list[np.ndarray]  # per question: (tokens, 2) character offsets into the context
    cls: int

    @property
    def windowed(self) -> int:
        """Questions whose context needed more than one window."""
        return int((np.bincount(self.example) > 1).sum()) if len(self.example) else 0


# The longest question kept whole; the rest of a longer one is cut (the context needs the room).
MAX_QUESTION_SHARE = 0.5


def encode_qa(
    tokenizer, ex: QAExamples, max_length: int, stride: int | None, train: bool = False
) -> QAWindows:
    """Windows of at most ``max_length`` tokens over each question + context; ``train``: with the
    positions of the first reference answer (or [CLS]'s) in each window."""
    frame = pair_frame(tokenizer)
    q_ids = tokenizer(
        ex.questions, add_special_tokens=False, return_attention_mask=False, verbose=False
    )["input_ids"]
    ctx = tokenizer(
        ex.contexts,
        add_special_tokens=False,
        return_offsets_mapping=True,
        return_attention_mask=False,
        verbose=False,
    )
    longest_q = max(1, int((max_length - frame.size) * MAX_QUESTION_SHARE))
    rows: dict[str, list[list[int]]] = {}
    starts: list[int] = []
    ends: list[int] = []
    example, first, spans, owned, offsets = [], [], [], [], []
    for i, (q, c_ids) in enumerate(zip(q_ids, ctx["input_ids"])):
        q = q[:longest_q]
        off = np.asarray(ctx["offset_mapping"][i], dtype=np.int64).reshape(-1, 2)
        offsets.append(off)
        room = max(max_length - frame.size - len(q), 1)
        windows = token_windows(len(c_ids), room, stride)
        owner = owners(np.ones(len(c_ids), dtype=np.int64), windows)
        answer = answer_tokens(off, ex.answers[i][0]) if train and ex.answers[i] else None
        at = len(frame.before) + len(q) + len(frame.middle)
        for k, (s, e) in enumerate(windows):
            for name, values in frame.build(q, c_ids[s:e]).items():
                rows.setdefault(name, []).append(values)
            example.append(i)
            first.append(at)
            spans.append((s, e))
            owned.append(owner[s:e] == k)
            if train:
                inside = answer is not None and s <= answer[0] and answer[1] < e
                starts.append(at + answer[0] - s if inside else frame.cls)
                ends.append(at + answer[1] - s if inside else frame.cls)
    if train:
        rows["start_positions"], rows["end_positions"] = starts, ends  # type: ignore[assignment]
    data = Encoded(rows)  # lengths from input_ids; the positions are one number a row
    return QAWindows(
        data,
        np.asarray(example, dtype=np.int64),
        np.asarray(first, dtype=np.int64),
        spans,
        owned,
        offsets,
        frame.cls,
    )


def answer_tokens(offsets: np.ndarray, answer: Answer) -> tuple[int, int] | None:
    """The first and last context tokens covering an answer's characters (None: it covers no
    token, e.g. only white space between two tokens)."""
    text, start = answer
    end = start + len(text)
    if len(offsets) == 0:
        return None
    # The first token ending after the answer's start, the last one starting before its end.
    first = bisect.bisect_right(offsets[:, 1].tolist(), start)
    last = bisect.bisect_left(offsets[:, 0].tolist(), end) - 1
    if first >= len(offsets) or last < first:
        return None
    return first, last
