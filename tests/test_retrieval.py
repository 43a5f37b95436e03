"""Retrieval: BEIR folders read (and refused in one line), metrics as trec_eval defines them, a
reranker trained by warmstart reordering candidates (in `evaluate`, sentence-transformers'
CrossEncoder and `serve`'s POST /rerank alike). Data: a slice of Cranfield (30 training queries, 10
test queries, ~230 documents); models: a 2-layer BERT of width 32 with MiniLM's vocabulary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from transformers import AutoTokenizer, BertConfig, BertModel

from warmstart.cli import main
from warmstart.data import beir
from warmstart.inference import retrieval

CRANFIELD = Path(__file__).resolve().parents[2] / "shared" / "data" / "cranfield"


def _qrels(name: str, lo: int, hi: int) -> list[list[str]]:
    lines = (CRANFIELD / "qrels" / name).read_text().splitlines()[1:]
    return [row.split("\t") for row in lines if lo <= int(row.split("\t")[0]) <= hi]


@pytest.fixture(scope="session")
def cranfield_slice(tmp_path_factory) -> Path:
    """Queries 1-30 (train) and 101-110 (test) with every document they judge, and other
    documents up to 200."""
    out = tmp_path_factory.mktemp("cranfield")
    (out / "qrels").mkdir()
    train, test = _qrels("train.tsv", 1, 30), _qrels("test.tsv", 101, 110)
    docs = [json.loads(line) for line in (CRANFIELD / "corpus.jsonl").open()]
    keep = {r[1] for r in train + test}
    for d in docs:
        if len(keep) >= 200:
            break
        keep.add(d["_id"])
    (out / "corpus.jsonl").write_text(
        "".join(json.dumps(d) + "\n" for d in docs if d["_id"] in keep)
    )
    (out / "queries.jsonl").write_text((CRANFIELD / "queries.jsonl").read_text())
    for name, rows in (("train", train), ("test", test)):
        body = "".join("\t".join(c.strip() for c in r) + "\n" for r in rows)
        (out / "qrels" / f"{name}.tsv").write_text("query-id\tcorpus-id\tscore\n" + body)
    return out


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A plain transformers encoder (no sentence-transformers files), 2 layers of 32."""
    from warmstart.models.bundled import minilm

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(minilm())
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_metrics_are_trec_evals_on_a_toy_qrels():
    qrels = {"q1": {"d1": 2, "d3": 1}, "q2": {"d9": 1}}
    # q1: d2 (not relevant), d1 (grade 2), d3 (grade 1); q2 is missing from the run: it counts 0.
    ranking = {"q1": {"d2": 3.0, "d1": 2.0, "d3": 1.0}}
    m = retrieval.retrieval_metrics(qrels, ranking)
    # trec_eval's gain is the grade itself (not 2^grade - 1), as BEIR's figures use it.
    dcg = 2 / math.log2(3) + 1 / math.log2(4)
    ideal = 2 / math.log2(2) + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx(dcg / ideal / 2, abs=1e-4)
    assert m["mrr@10"] == pytest.approx(0.5 / 2, abs=1e-4)
    assert m["recall@10"] == pytest.approx(0.5, abs=1e-4)
    assert m["map@100"] == pytest.approx((0.5 + 2 / 3) / 2 / 2, abs=1e-4)
    assert m["queries"] == 2


def test_mrr_at_10_ignores_a_relevant_document_below_rank_10():
    ranking = {"q": {f"d{i}": float(100 - i) for i in range(20)}}
    m = retrieval.retrieval_metrics({"q": {"d12": 1}}, ranking)
    assert m["mrr@10"] == 0.0 and m["recall@100"] == 1.0


def test_a_beir_folder_reads_its_split_and_a_qrels_path_picks_one(cranfield_slice):
    test = beir.read(str(cranfield_slice), "test")
    assert set(test.qrels) == {str(q) for q in range(101, 111)} & set(test.qrels)
    train = beir.read(str(cranfield_slice / "qrels" / "train.tsv"))
    assert min(int(q) for q in train.qrels) == 1 and len(train.corpus) >= 200
    assert all(d in train.corpus for docs in train.qrels.values() for d in docs)


def _bad_beir(tmp_path: Path, corpus: str, qrels: str) -> Path:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(corpus)
    (tmp_path / "queries.jsonl").write_text('{"_id": "1", "text": "wing lift"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return tmp_path


@pytest.mark.parametrize(
    "corpus, qrels, expected",
    [
        (
            '{"_id": "7", "title": "", "text": "lift of wings"}\n',
            "1\t7\t2\n1\t999\t1\n",
            "qrels/test.tsv', row 3, column 'corpus-id': document '999' is not in corpus.jsonl",
        ),
        ("\n", "1\t7\t2\n", "corpus.jsonl' has no documents"),
    ],
    ids=["unknown-document", "empty-corpus"],
)
def test_bad_retrieval_data_is_one_line_and_exit_2(tmp_path, capsys, corpus, qrels, expected):
    folder = _bad_beir(tmp_path, corpus, qrels)
    code = main(["evaluate", "minilm", "--data", str(folder)])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err, err
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.fixture(scope="session")
def reranker(tmp_path_factory, cranfield_slice, tiny_bert) -> Path:
    out = tmp_path_factory.mktemp("rerank") / "run"
    code = main(
        [
            "finetune",
            "--task",
            "rerank",
            "--model",
            str(tiny_bert),
            "--data",
            str(cranfield_slice),
            "--max-train-samples",
            "3",
            "--negatives",
            "2",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--max-length",
            "48",
            "--precision",
            "fp32",
            "--attn-implementation",
            "sdpa",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return out / "model"


def test_a_reranker_reorders_candidates_by_its_own_scores(reranker, cranfield_slice):
    collection = beir.read(str(cranfield_slice), "test")
    first = retrieval.BM25(collection.corpus).search(collection.judged(), 10)
    scorer = retrieval.CrossEncoderScorer.load(str(reranker))
    again = retrieval.rerank(scorer, collection, first, top_k=10)
    qid = next(iter(first))
    order = sorted(again[qid], key=again[qid].get, reverse=True)
    docs = list(first[qid])
    scores = scorer.scores([(collection.queries[qid], collection.corpus[d]) for d in docs])
    assert order == [docs[i] for i in sorted(range(len(docs)), key=lambda i: -scores[i])]
    assert set(order) == set(first[qid])


def test_a_saved_reranker_loads_in_sentence_transformers_with_the_same_scores(reranker):
    from sentence_transformers import CrossEncoder

    pairs = [("lift of a wing", "the lift increase of a wing in a slipstream"), ("heat", "slabs")]
    ours = retrieval.CrossEncoderScorer.load(str(reranker)).scores(pairs)
    theirs = CrossEncoder(str(reranker), device="cpu").predict(pairs)
    assert ours == pytest.approx(list(theirs), abs=1e-5)


def test_evaluate_reports_bm25_and_its_reranking_side_by_side(reranker, cranfield_slice, capsys):
    code = main(
        [
            "evaluate",
            str(reranker),
            "--data",
            str(cranfield_slice),
            "--first-stage",
            "bm25",
            "--top-k",
            "5",
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "bm25" in out and "rerank@5" in out and "ndcg@10" in out


def test_serve_rerank_returns_every_passage_most_relevant_first(reranker):
    from fastapi.testclient import TestClient

    from warmstart.config import ServeConfig
    from warmstart.serving.app import create_app
    from warmstart.serving.model import ServedModel

    served = ServedModel.load(str(reranker))
    texts = ["wing lift in a slipstream", "heat conduction in slabs", "boundary layers"]
    with TestClient(create_app(served, ServeConfig(model=served.name))) as client:
        r = client.post("/rerank", json={"query": "lift of a wing", "texts": texts})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert sorted(x["index"] for x in results) == [0, 1, 2]
        scores = [x["score"] for x in results]
        assert scores == sorted(scores, reverse=True)
        expected = served.rerank("lift of a wing", texts)
        assert scores[0] == pytest.approx(float(max(expected)), abs=1e-5)
        assert client.post("/embed", json={"texts": ["x"]}).status_code == 404
