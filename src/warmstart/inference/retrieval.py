"""Retrieval over a collection (data.beir): exact dense search (normalised dot product over the
whole corpus, batched), BM25 (rank_bm25's Okapi), re-ranking a first stage's top k with a
cross-encoder, and the usual metrics computed by pytrec_eval (trec_eval's own code): nDCG@10,
MRR@10, Recall@10/100 and MAP@100.

A ranking is {query id: {document id: score}}, as pytrec_eval and BEIR hold runs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from warmstart.data.beir import Collection
from warmstart.errors import UserError

Ranking = dict[str, dict[str, float]]
DEPTH = 100  # documents a first stage returns per query (Recall@100 needs them all)
MEASURES = {"ndcg_cut_10": "ndcg@10", "recall_10": "recall@10", "recall_100": "recall@100"}
HEADLINE = ("ndcg@10", "mrr@10", "recall@10", "recall@100", "map@100")


def bm25_tokens(text: str) -> list[str]:
    """Lower-cased alphanumeric runs: the tokenisation of the Cranfield baseline in the data's
    README (BM25 nDCG@10 0.321 on queries 1–150)."""
    return re.findall(r"[a-z0-9]+", text.lower())


class BM25:
    """Okapi BM25 (k1 1.5, b 0.75: rank_bm25's defaults) over a corpus."""

    def __init__(self, corpus: dict[str, str]):
        try:
            from rank_bm25 import BM25Okapi
        except ImportError:
            raise UserError("BM25 needs the rank_bm25 package: pip install rank-bm25") from None
        if not corpus:
            raise UserError("BM25: the corpus has no documents")
        self.ids = list(corpus)
        self.index = BM25Okapi([bm25_tokens(corpus[d]) or [""] for d in self.ids])

    def search(self, queries: dict[str, str], k: int = DEPTH) -> Ranking:
        out: Ranking = {}
        for qid, text in queries.items():
            scores = self.index.get_scores(bm25_tokens(text))
            top = np.argsort(-scores, kind="stable")[:k]
            out[qid] = {self.ids[i]: float(scores[i]) for i in top}
        return out


def dense_search(
    embedder: Any,
    collection: Collection,
    k: int = DEPTH,
    batch_size: int = 64,
    progress: bool = False,
) -> Ranking:
    """Exact search: every judged query against every document, by the dot product of L2-normalised
    embeddings (cosine), the corpus embedded once; ``embedder``: inference.features.Embedder."""
    ids = list(collection.corpus)
    queries = collection.judged()
    docs = _unit(embedder.embed([collection.corpus[d] for d in ids], batch_size, progress))
    qs = _unit(embedder.embed(list(queries.values()), batch_size, progress))
    return top_k(qs, docs, list(queries), ids, k)


def _unit(x: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.from_numpy(np.asarray(x, np.float32)), dim=-1)


def top_k(
    qs: torch.Tensor, docs: torch.Tensor, qids: list[str], dids: list[str], k: int
) -> Ranking:
    out: Ranking = {}
    k = min(k, len(dids))
    for start in range(0, len(qids), 256):  # a block of queries at a time: memory stays small
        scores = qs[start : start + 256] @ docs.T
        values, index = scores.topk(k, dim=1)
        for row, qid in enumerate(qids[start : start + 256]):
            out[qid] = {
                dids[i]: float(v) for v, i in zip(values[row].tolist(), index[row].tolist())
            }
    return out


@dataclass
class CrossEncoderScorer:
    """A cross-encoder (…ForSequenceClassification with one logit) scoring (query, passage)
    pairs: the sigmoid of its logit, as sentence-transformers' CrossEncoder.predict gives."""

    path: str
    model: torch.nn.Module
    tokenizer: Any
    max_length: int
    device: torch.device

    @classmethod
    def load(
        cls, name: str, max_length: int | None = None, cpu: bool = False, hub: Any = None
    ) -> CrossEncoderScorer:
        from transformers import AutoModelForSequenceClassification

        from warmstart.models.device import pick_device
        from warmstart.models.registry import (
            load_config,
            load_options,
            load_tokenizer,
            max_length_of,
            resolve,
        )

        path = resolve(name, hub=hub)
        config = load_config(path)
        if getattr(config, "num_labels", None) != 1:
            raise UserError(
                f"model '{name}' is not a cross-encoder (a classifier with one output); train one"
                " with `warmstart finetune --task rerank`"
            )
        model = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, **load_options(path)
        )
        tokenizer = load_tokenizer(path)
        device = pick_device(cpu)
        model.to(device).eval()
        return cls(path, model, tokenizer, max_length_of(tokenizer, config, max_length), device)

    @torch.inference_mode()
    def logits(self, pairs: list[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        out = np.zeros(len(pairs), dtype=np.float32)
        # Longest first, in batches of similar length: padding costs little.
        order = np.argsort([-len(q) - len(p) for q, p in pairs], kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenizer(
                [pairs[i][0] for i in idx],
                [pairs[i][1] for i in idx],
                truncation="longest_first",
                max_length=self.max_length,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            out[idx] = self.model(**batch).logits[:, 0].float().cpu().numpy()
        return out

    def scores(self, pairs: list[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(pairs, batch_size)))


def rerank(
    scorer: CrossEncoderScorer,
    collection: Collection,
    first: Ranking,
    top_k: int,
    batch_size: int = 32,
) -> Ranking:
    """The first ``top_k`` documents of each query's first-stage ranking, scored again by the
    cross-encoder; the documents below them keep their first-stage order underneath (so Recall@100
    is the first stage's when ``top_k`` is smaller)."""
    pairs, where = [], []
    for qid, docs in first.items():
        for did in sorted(docs, key=docs.get, reverse=True)[:top_k]:
            pairs.append((collection.queries[qid], collection.corpus[did]))
            where.append((qid, did))
    scores = scorer.scores(pairs, batch_size)
    out: Ranking = {qid: {} for qid in first}
    for (qid, did), s in zip(where, scores):
        out[qid][did] = 10.0 + float(s)  # above every document it did not score
    for qid, docs in first.items():
        rest = [d for d in sorted(docs, key=docs.get, reverse=True) if d not in out[qid]]
        for rank, did in enumerate(rest):
            out[qid][did] = -float(rank)
    return out


def retrieval_metrics(qrels: dict[str, dict[str, int]], ranking: Ranking) -> dict[str, float]:
    """nDCG@10, MRR@10, Recall@10/100 and MAP@100 by pytrec_eval, averaged over every judged
    query (one the ranking lacks counts 0, as in BEIR)."""
    try:
        import pytrec_eval
    except ImportError:
        raise UserError(
            "retrieval metrics need pytrec_eval: pip install pytrec-eval-terrier"
        ) from None
    if not qrels:
        raise UserError("no judged queries to score")
    top100 = {q: _cut(ranking.get(q, {}), DEPTH) for q in qrels}
    top10 = {q: _cut(docs, 10) for q, docs in top100.items()}
    graded = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items()}
    main = pytrec_eval.RelevanceEvaluator(graded, {"ndcg_cut.10", "recall.10,100", "map"})
    at10 = pytrec_eval.RelevanceEvaluator(graded, {"recip_rank"})
    per_query = main.evaluate({q: d for q, d in top100.items() if d})
    rr = at10.evaluate({q: d for q, d in top10.items() if d})
    n = len(qrels)
    out = {
        name: sum(per_query.get(q, {}).get(m, 0.0) for q in qrels) / n
        for m, name in MEASURES.items()
    }
    out["mrr@10"] = sum(rr.get(q, {}).get("recip_rank", 0.0) for q in qrels) / n
    out["map@100"] = sum(per_query.get(q, {}).get("map", 0.0) for q in qrels) / n
    return {k: round(out[k], 4) for k in HEADLINE} | {"queries": n}


def _cut(docs: dict[str, float], k: int) -> dict[str, float]:
    # Ties broken by document id, the same way every time (trec_eval's own tie rule is by id too).
    ranked = sorted(docs.items(), key=lambda x: (-x[1], x[0]))[:k]
    # Scores made strictly decreasing: trec_eval re-sorts by score, and equal ones would reorder.
    return {d: float(k - i) for i, (d, _) in enumerate(ranked)}


def format_stages(stages: dict[str, dict]) -> str:
    """A table of each stage's headline metrics, one row per stage."""
    width = max(len(s) for s in stages) + 2
    head = "stage".ljust(width) + "".join(f"{m:>12}" for m in HEADLINE)
    rows = [
        name.ljust(width) + "".join(f"{m[k]:>12.4f}" for k in HEADLINE)
        for name, m in stages.items()
    ]
    return "\n".join([head, *rows])


def hard_negatives(
    collection: Collection,
    first: Ranking,
    n: int,
) -> dict[str, list[str]]:
    """Per judged query, the top ``n`` documents of ``first`` that are not judged relevant (a judged
    grade 0 or no judgement: the usual mining of hard negatives)."""
    out = {}
    for qid in collection.qrels:
        docs = first.get(qid, {})
        ranked = sorted(docs, key=docs.get, reverse=True)
        out[qid] = [d for d in ranked if d not in collection.qrels[qid]][:n]
    return out


def random_negatives(collection: Collection, n: int, seed: int) -> dict[str, list[str]]:
    """Per judged query, ``n`` documents drawn at random among those not judged relevant."""
    rng = np.random.default_rng(seed)
    ids = list(collection.corpus)
    out = {}
    for qid in collection.qrels:
        picks = [ids[i] for i in rng.permutation(len(ids))[: n + len(collection.qrels[qid])]]
        out[qid] = [d for d in picks if d not in collection.qrels[qid]][:n]
    return out
