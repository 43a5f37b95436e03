"""Text-to-text: pairs read with clear errors, metrics of generated text, and encoder-decoder fine-tuning
(--task seq2seq) through the real code paths on tiny models built from their config classes."""

from __future__ import annotations

import pytest

from warmstart.data.pairs import read_pairs
from warmstart.errors import UserError
from warmstart.metrics import text_metrics


def test_text_metrics_score_exact_copies_perfectly_and_count_edits():
    refs = ["the cat sat on the mat", "a b c d"]
    perfect = text_metrics(refs, refs, ["bleu", "chrf", "exact_match", "cer", "wer"])
    assert perfect == {"bleu": pytest.approx(100), "chrf": pytest.approx(100), "exact_match": 1.0, "cer": 0.0,
                       "wer": 0.0}
    m = text_metrics(["the cat sat on the mat", "a b x d"], refs, ["exact_match", "wer", "cer"])
    assert m["exact_match"] == 0.5
    assert m["wer"] == pytest.approx(1 / 10)  # one word wrong of 6 + 4
    assert m["cer"] == pytest.approx(1 / 29)  # one character of 22 + 7
    assert set(text_metrics(["x"], ["y"], ["chrf"])) == {"chrf"}


def test_text_metrics_refuse_an_unknown_name():
    with pytest.raises(ValueError, match="unknown text metric"):
        text_metrics(["a"], ["a"], ["rouge"])


def test_pairs_name_file_row_and_column_of_an_empty_target(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("en\tes\nhello\thola\nbye\t  \n")
    with pytest.raises(UserError, match=r"p.tsv', row 2, column 'es': target text is empty"):
        read_pairs(str(path), "en", "es")
    with pytest.raises(UserError, match="no source column found; name it with --source-column"):
        read_pairs(str(path))
    pairs = read_pairs(str(path), "en", targets=False)
    assert pairs.sources == ["hello", "bye"] and pairs.targets is None
