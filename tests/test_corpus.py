"""Reading pre-training corpora (plain text, tables, folders, gzip) and splitting sentences, on the
real IMDb file and on small files written here; every corpus error is one sentence naming the
file."""

from __future__ import annotations

import gzip
import json
import re

import pandas as pd
import pytest

from warmstart.data.corpus import read_corpus, sentence_spans, sentences
from warmstart.errors import UserError
from warmstart.objectives import pack


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


def test_txt_file_gives_one_stripped_document_per_line(tmp_path):
    path = tmp_path / "docs.txt"
    path.write_text("First document.\n  Second one, indented.  \r\nThird\n", encoding="utf-8")
    assert read_corpus(path) == ["First document.", "Second one, indented.", "Third"]
    assert read_corpus(path, limit=2) == ["First document.", "Second one, indented."]


def test_txt_file_with_blank_lines_gives_one_document_per_paragraph(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(
        "\n\nA paragraph wrapped\nover two lines.\n\n  \nSecond"
        " paragraph.\n\n\nThird\nparagraph.\n",
        encoding="utf-8",
    )
    assert read_corpus(path) == [
        "A paragraph wrapped\nover two lines.",
        "Second paragraph.",
        "Third\nparagraph.",
    ]


def test_csv_text_column_of_the_real_imdb_file_is_found_by_its_name(imdb, imdb_head):
    # The .csv.gz file goes through the table reader; the text column is found by its name "review".
    expected = pd.read_csv(imdb, nrows=50)["review"].str.strip().tolist()
    assert read_corpus(imdb, limit=50) == expected
    assert len(set(expected)) == 50 and min(map(len, expected)) > 20
    head = pd.read_csv(imdb_head)["review"].str.strip().tolist()
    assert read_corpus(imdb_head, text_column="review") == head and len(head) == 600


def test_jsonl_and_parquet_skip_missing_cells(tmp_path):
    jsonl = tmp_path / "c.jsonl"
    rows = [
        {"text": "one", "id": 1},
        {"text": None, "id": 2},
        {"text": "  ", "id": 3},
        {"text": "two", "id": 4},
    ]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    assert read_corpus(jsonl) == ["one", "two"]
    parquet = tmp_path / "c.parquet"
    pd.DataFrame({"body": ["alpha", None, "beta"], "n": [1, 2, 3]}).to_parquet(parquet)
    assert read_corpus(parquet) == ["alpha", "beta"]
    assert "row 1, column 'n'" in _error(read_corpus, parquet, text_column="n")


def test_folder_reads_its_txt_files_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "b" / "2.txt").write_text("from b/2", encoding="utf-8")
    (tmp_path / "a" / "deep" / "x.txt").write_text("para one\n\npara two", encoding="utf-8")
    (tmp_path / "a" / "1.txt").write_text("line one\nline two\n", encoding="utf-8")
    (tmp_path / "a" / "notes.md").write_text("not a corpus file", encoding="utf-8")
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(b"zipped doc\n"))
    assert read_corpus(tmp_path) == [
        "line one",
        "line two",
        "para one",
        "para two",
        "from b/2",
        "zipped doc",
    ]
    assert read_corpus(tmp_path, limit=3) == ["line one", "line two", "para one"]


def test_gzipped_txt_is_decompressed_and_read_as_utf8(tmp_path):
    path = tmp_path / "docs.txt.gz"
    path.write_bytes(gzip.compress("é première\nsecond\n".encode()))
    assert read_corpus(path) == ["é première", "second"]


def test_corpus_errors_are_one_sentence_naming_the_file_and_the_line_row_or_column(
    tmp_path, imdb_head
):
    missing = tmp_path / "nope.txt"
    assert "nope.txt" in _error(read_corpus, missing) and "does not exist" in _error(
        read_corpus, missing
    )

    empty = tmp_path / "empty.txt"
    empty.write_text(" \n\n \n", encoding="utf-8")
    assert "empty.txt" in _error(read_corpus, empty) and "empty" in _error(read_corpus, empty)

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("fine line\nsecond line\ncaf\xe9\n".encode("latin-1"))
    message = _error(read_corpus, bad)
    assert (
        "latin1.txt" in message and "line 3" in message and "UTF-8" in message and "0xe9" in message
    )

    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_bytes(b"text\nok\nna\xefve\n")
    assert "row 2" in _error(read_corpus, bad_csv) and "UTF-8" in _error(read_corpus, bad_csv)

    message = _error(read_corpus, imdb_head, text_column="body")
    assert "no column 'body'" in message and "'review'" in message and "imdb600.csv" in message
    no_text = tmp_path / "numbers.csv"
    no_text.write_text("a,b\n1,2\n", encoding="utf-8")
    assert "no text column" in _error(read_corpus, no_text)
    assert "--text-column" in _error(
        read_corpus, _write(tmp_path / "plain.txt", b"x"), text_column="text"
    )

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "readme.md").write_text("hi", encoding="utf-8")
    assert "no .txt files" in _error(read_corpus, folder)
    (folder / "blank.txt").write_text("\n\n", encoding="utf-8")
    assert "empty" in _error(read_corpus, folder)

    assert "gzip" in _error(read_corpus, _write(tmp_path / "broken.txt.gz", b"not gzip"))
    assert "unknown format" in _error(read_corpus, _write(tmp_path / "doc.docx", b"x"))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_corpus_shorter_than_one_block_is_refused_with_its_token_count():
    message = _error(pack, [[5, 6, 7], [8]], 10, 0, source="file 'tiny.txt'")
    # 4 tokens and 2 separators: the count tells the user how far from one block they are.
    assert "file 'tiny.txt' has 6 tokens" in message and "one block of 10" in message
    assert pack([[5, 6, 7], [8]], 6, 0).tolist() == [[5, 6, 7, 0, 8, 0]]


def test_sentences_split_at_end_marks_but_not_after_abbreviations_or_initials():
    doc = (
        'He said "Stop." Then he left! Mr. Smith met J. R. R. Tolkien in the U.S. Army. Was it'
        " 1955? No... it was 1954.<br /><br />The end (really). e.g. this stays in one piece."
    )
    assert sentences(doc) == [
        'He said "Stop."',
        "Then he left!",
        "Mr. Smith met J. R. R. Tolkien in the U.S. Army.",
        "Was it 1955?",
        "No... it was 1954.",
        "The end (really). e.g. this stays in one piece.",
    ]
    assert sentences("  no end mark at all ") == ["no end mark at all"]
    assert sentences("   ") == []
    spans = sentence_spans(doc)
    assert [doc[s:e] for s, e in spans] == sentences(doc)
    assert all(e1 < s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))


def test_sentences_of_real_reviews_lose_nothing_but_the_gaps_between_them(imdb):
    docs = read_corpus(imdb, limit=200)
    counts = [len(sentences(d)) for d in docs]
    # IMDb reviews average about ten sentences; a splitter that never (or always) split would be far
    # off.
    assert 5 < sum(counts) / len(counts) < 20
    gaps = re.compile(r"(?:\s|<br\s*/?>)+")
    for d in docs:
        # Nothing is lost, repeated or reordered: only the whitespace/<br /> gaps between sentences
        # go.
        assert "".join(gaps.sub("", p) for p in sentences(d)) == gaps.sub("", d)
