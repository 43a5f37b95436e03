"""Retrieval data, read into one shape whatever it came as: a `Collection` of documents, queries and
graded judgements (qrels). Three sources:

    a BEIR folder     corpus.jsonl (_id, title, text), queries.jsonl (_id, text), qrels/SPLIT.tsv
                      (query-id, corpus-id, score); a path to one qrels file picks the split
    SQuAD JSON        each question judges its own paragraph relevant (the paragraphs are the corpus)
    a pairs table     anchor, positive[, negative] columns (query/question, passage/document...)

Training reads (anchor, positive[, negative]) pairs out of a collection (``pairs``); evaluation
searches its corpus for its queries and scores the ranking against its qrels. Bad input (a qrels
row naming a document the corpus lacks, an empty corpus) fails here in one sentence."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from warmstart.data.tables import find_column, read_table
from warmstart.errors import UserError, where

ANCHORS = ("anchor", "query", "question", "sentence1", "text1")
POSITIVES = ("positive", "passage", "document", "doc", "pos", "sentence2", "text2", "context")
NEGATIVES = ("negative", "neg", "hard_negative")
# The qrels file each part reads from a BEIR folder named without a split.
SPLIT_FILES = {"train": ("train",), "valid": ("dev", "valid", "validation"), "test": ("test",)}


@dataclass
class Collection:
    """Documents, queries and their judgements (query id -> document id -> grade, higher is more
    relevant; grade 0 rows are kept out). ``negatives``: documents a source names as not relevant
    to a query (a pairs table's negative column)."""

    source: str
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    negatives: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.qrels)

    def judged(self) -> dict[str, str]:
        """The judged queries' texts, in the qrels' order."""
        return {q: self.queries[q] for q in self.qrels}

    def relevant(self, qid: str) -> set[str]:
        return {d for d, grade in self.qrels.get(qid, {}).items() if grade > 0}

    def pairs(self) -> list[tuple[str, str, str | None]]:
        """(query id, relevant document id, a negative's id or None): one row per judgement, the
        query's named negatives handed out in turn."""
        rows = []
        for qid, docs in self.qrels.items():
            negs = self.negatives.get(qid, [])
            for i, did in enumerate(d for d, g in docs.items() if g > 0):
                rows.append((qid, did, negs[i % len(negs)] if negs else None))
        return rows

    def head(self, n: int | None) -> Collection:
        """The first ``n`` judged queries (all of them for None), with the whole corpus."""
        if n is None or n >= len(self.qrels):
            return self
        keep = dict(list(self.qrels.items())[:n])
        return Collection(self.source, self.corpus, self.queries, keep, self.negatives)


def merge(collections: list[Collection]) -> Collection:
    """One collection of several (ids prefixed by their source's position, so none collide)."""
    if len(collections) == 1:
        return collections[0]

    def tag(i: int, d: dict) -> dict:
        return {f"{i}:{k}": v for k, v in d.items()}

    return Collection(
        " + ".join(c.source for c in collections),
        {k: v for i, c in enumerate(collections) for k, v in tag(i, c.corpus).items()},
        {k: v for i, c in enumerate(collections) for k, v in tag(i, c.queries).items()},
        {
            f"{i}:{q}": tag(i, docs)
            for i, c in enumerate(collections)
            for q, docs in c.qrels.items()
        },
        {
            f"{i}:{q}": [f"{i}:{d}" for d in negs]
            for i, c in enumerate(collections)
            for q, negs in c.negatives.items()
        },
    )


def is_beir(path: str | Path) -> bool:
    """A BEIR folder, or one qrels file inside one (…/qrels/SPLIT.tsv)."""
    p = Path(path).expanduser()
    if p.is_file() and p.parent.name == "qrels":
        p = p.parent.parent
    return p.is_dir() and (p / "corpus.jsonl").is_file()


def is_squad(path: str | Path) -> bool:
    p = Path(path).expanduser()
    if p.suffix != ".json" or not p.is_file():
        return False
    with open(p, encoding="utf-8") as f:
        start = f.read(200).lstrip()
    return start.startswith("{") and ('"data"' in start or '"version"' in start)


def read(source: str, part: str = "test", limit: int | None = None) -> Collection:
    """A collection from ``source`` (a BEIR folder or qrels file, SQuAD JSON, a pairs table);
    ``part`` picks a BEIR folder's qrels file; ``limit``: its first judged queries only."""
    if is_beir(source):
        return read_beir(source, part).head(limit)
    if not Path(source).expanduser().exists():
        raise UserError(f"{where(source)} does not exist")
    if is_squad(source):
        return read_squad(source).head(limit)
    return read_pairs_table(source, limit)


def read_sources(spec: str, part: str, limit: int | None = None) -> Collection:
    """Several sources joined by commas (e.g. a BEIR folder and SQuAD), read as one collection."""
    names = [spec] if Path(spec).expanduser().exists() else [s for s in spec.split(",") if s]
    return merge([read(name.strip(), part, limit) for name in names])


def _jsonl(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise UserError(f"{where(path)} does not exist: a BEIR folder needs {what}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise UserError(f"{where(path, n)} is not valid JSON: {e}") from None
            if not isinstance(row, dict) or "_id" not in row:
                raise UserError(f"{where(path, n, '_id')}: each line needs an _id")
            rows.append(row)
    if not rows:
        raise UserError(f"{where(path)} has no {what}")
    return rows


def qrels_file(folder: Path, part: str) -> Path:
    names = SPLIT_FILES.get(part, (part,))
    for name in names:
        if (folder / "qrels" / f"{name}.tsv").is_file():
            return folder / "qrels" / f"{name}.tsv"
    have = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
    raise UserError(
        f"folder '{folder}' has no qrels/{names[0]}.tsv for the {part} part (it has:"
        f" {', '.join(have) or 'none'}); name a qrels file instead, e.g. {folder}/qrels/"
        f"{have[0] if have else 'test'}.tsv"
    )


def read_beir(source: str | Path, part: str = "test") -> Collection:
    path = Path(source).expanduser()
    folder, qrels_path = (
        (path.parent.parent, path) if path.is_file() else (path, qrels_file(path, part))
    )
    corpus = {
        str(r["_id"]): f"{r.get('title') or ''} {r.get('text') or ''}".strip()
        for r in _jsonl(folder / "corpus.jsonl", "documents")
    }
    queries = {
        str(r["_id"]): str(r.get("text") or "") for r in _jsonl(folder / "queries.jsonl", "queries")
    }
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.reader(f, delimiter="\t"), 1):
            if not row or (n == 1 and not row[-1].strip().lstrip("-").isdigit()):
                continue  # a blank line, or the header
            if len(row) < 3:
                raise UserError(
                    f"{where(qrels_path, n)}: expected query-id, corpus-id and score separated by"
                    " tabs"
                )
            qid, did, grade = row[0].strip(), row[1].strip(), row[-1].strip()
            if qid not in queries:
                raise UserError(
                    f"{where(qrels_path, n, 'query-id')}: query '{qid}' is not in queries.jsonl"
                )
            if did not in corpus:
                raise UserError(
                    f"{where(qrels_path, n, 'corpus-id')}: document '{did}' is not in corpus.jsonl"
                )
            try:
                value = int(float(grade))
            except ValueError:
                raise UserError(
                    f"{where(qrels_path, n, 'score')}: '{grade}' is not a number"
                ) from None
            if value > 0:
                qrels.setdefault(qid, {})[did] = value
    if not qrels:
        raise UserError(f"{where(qrels_path)} has no relevance judgements")
    return Collection(str(qrels_path), corpus, queries, qrels)


def read_squad(source: str | Path) -> Collection:
    """Questions and their paragraphs: each paragraph is a document, its questions' one relevant
    one (v2's unanswerable questions too: the paragraph is still where the answer would be)."""
    path = Path(source).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{where(path)} is not SQuAD JSON (data[].paragraphs[]): {e}") from None
    corpus, queries, qrels = {}, {}, {}
    for a, article in enumerate(data):
        for p, para in enumerate(article.get("paragraphs", [])):
            did = f"{a}-{p}"
            corpus[did] = str(para.get("context", ""))
            for n, qa in enumerate(para.get("qas", [])):
                qid = str(qa.get("id") or f"{did}-{n}")
                queries[qid] = str(qa.get("question", ""))
                qrels[qid] = {did: 1}
    if not corpus:
        raise UserError(f"{where(path)} has no paragraphs")
    return Collection(str(path), corpus, queries, qrels)


def read_pairs_table(source: str | Path, limit: int | None = None) -> Collection:
    """A table of (anchor, positive[, negative]) rows; equal texts share one id, so an anchor
    with several positives is one query with several relevant documents."""
    df = read_table(source, limit)
    a = find_column(df, source, None, ANCHORS, "anchor (query)", "an 'anchor' column")
    p = find_column(df, source, None, POSITIVES, "positive", "a 'positive' column")
    neg = find_column(df, source, None, NEGATIVES, "negative", "", required=False)
    corpus: dict[str, str] = {}
    doc_ids: dict[str, str] = {}
    query_ids: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    negatives: dict[str, list[str]] = {}

    def doc(text: str) -> str:
        if text not in doc_ids:
            doc_ids[text] = str(len(doc_ids))
            corpus[doc_ids[text]] = text
        return doc_ids[text]

    for n, row in enumerate(df.itertuples(index=False), 1):
        values = dict(zip(df.columns, row))
        for col in (a, p):
            if not isinstance(values[col], str) or not values[col].strip():
                raise UserError(f"{where(source, n, col)} is empty")
        qid = query_ids.setdefault(values[a], str(len(query_ids)))
        qrels.setdefault(qid, {})[doc(values[p])] = 1
        if neg and isinstance(values[neg], str) and values[neg].strip():
            negatives.setdefault(qid, []).append(doc(values[neg]))
    queries = {qid: text for text, qid in query_ids.items()}
    return Collection(str(source), corpus, queries, qrels, negatives)
