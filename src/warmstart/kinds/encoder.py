"""A plain pre-trained encoder (minilm, a BERT folder without a task head, a sentence-embedding model
from `finetune --task embedding`): read back only. It embeds texts, classifies them zero-shot by
similarity, and `evaluate` scores it as a retriever on a BEIR folder (or SQuAD JSON, or a pairs
table): exact search over the corpus, optionally a BM25 first stage beside it and a cross-encoder
re-ranking the first stage (--first-stage, --rerank, --top-k). Any other labelled file needs a
fine-tuned head first."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from warmstart.config import EvaluateConfig, refuse_inapplicable
from warmstart.data import beir
from warmstart.errors import UserError
from warmstart.inference import retrieval
from warmstart.inference.features import Embedder
from warmstart.kinds.base import ModelKind, TaskKind

TOP_K = 100  # documents a cross-encoder re-ranks by default
# evaluate's options that mean nothing for a retrieval evaluation.
NOT_RETRIEVAL = (
    "text_column",
    "text_pair_column",
    "label_column",
    "label_separator",
    "long_text",
    "chunk_aggregation",
    "stride",
    "tag_column",
    "base_tags",
    "source_column",
    "target_column",
    "max_new_tokens",
    "num_beams",
    "predictions",
)


def is_retrieval_data(path: str | None) -> bool:
    """Data a retrieval evaluation reads: a BEIR folder (or one of its qrels files) or SQuAD JSON."""
    return bool(path) and (beir.is_beir(path) or beir.is_squad(path))


def embed_stage(
    model: str,
    collection: beir.Collection,
    batch_size: int,
    cpu: bool,
    max_length: int | None,
    hub: Any = None,
    progress: bool = False,
) -> retrieval.Ranking:
    """Exact dense search with ``model`` as `embed` reads it (its sentence-transformers pooling and
    normalisation), documents and queries alike."""
    embedder = Embedder.load(model, normalize=None, max_length=max_length, cpu=cpu, hub=hub)
    return retrieval.dense_search(embedder, collection, retrieval.DEPTH, batch_size, progress)


def first_stage(
    name: str,
    collection: beir.Collection,
    batch_size: int,
    cpu: bool,
    max_length: int | None,
    hub: Any = None,
    progress: bool = False,
) -> retrieval.Ranking:
    """The candidates of a named first stage: bm25, or an embedding model."""
    if name.strip().lower() == "bm25":
        return retrieval.BM25(collection.corpus).search(collection.judged())
    return embed_stage(name, collection, batch_size, cpu, max_length, hub, progress)


def score_stages(
    collection: beir.Collection,
    stages: dict[str, retrieval.Ranking],
    reranker: str | None,
    top_k: int,
    batch_size: int,
    cpu: bool,
    hub: Any = None,
) -> dict:
    """Each stage's metrics, the last ranking re-ranked by ``reranker`` as one more stage; the
    headline figures are the last stage's."""
    if reranker:
        last = list(stages.values())[-1]
        scorer = retrieval.CrossEncoderScorer.load(reranker, cpu=cpu, hub=hub)
        stages[f"rerank@{top_k}"] = retrieval.rerank(scorer, collection, last, top_k, batch_size)
    metrics = {name: retrieval.retrieval_metrics(collection.qrels, r) for name, r in stages.items()}
    final = list(metrics.values())[-1]
    return {**final, "stages": metrics, "corpus": len(collection.corpus)}


def examples(stages: dict[str, retrieval.Ranking], collection: beir.Collection, n: int = 5) -> list:
    """The top three documents of the first ``n`` queries in the last stage, for reports."""
    last = list(stages.values())[-1]
    out = []
    for qid in list(collection.qrels)[:n]:
        docs = sorted(last.get(qid, {}).items(), key=lambda x: -x[1])[:3]
        out.append(
            {
                "query": collection.queries[qid],
                "top": [
                    {
                        "id": d,
                        "relevant": collection.qrels[qid].get(d, 0),
                        "text": collection.corpus[d][:80],
                    }
                    for d, _ in docs
                ],
            }
        )
    return out


class Encoder(TaskKind):
    task = None  # not a --task: `finetune` adds a head and trains another kind
    reads = {"encoder": ModelKind("a plain encoder", ("embed", "zeroshot"), zeroshot="similarity")}

    @classmethod
    def evaluate(cls, cfg: EvaluateConfig, path: str, model_kind: str) -> dict:
        if not is_retrieval_data(cfg.data):
            if cfg.rerank or cfg.first_stage or cfg.top_k:
                raise UserError(
                    f"--data '{cfg.data}' is not retrieval data: --rerank, --first-stage and"
                    " --top-k need a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) or SQuAD JSON"
                )
            cls.refuse_headless(cfg.model, model_kind, "to evaluate")
        refuse_inapplicable(cfg, NOT_RETRIEVAL, "a retrieval evaluation")
        if cfg.top_k and not cfg.rerank and not cls.reranks():
            raise UserError("--top-k is how many documents --rerank MODEL re-ranks: give --rerank")
        t0 = time.time()
        collection = beir.read(cfg.data, "test", cfg.limit)
        stages = cls.stages(cfg, collection)
        metrics = score_stages(
            collection,
            stages,
            cfg.rerank,
            cfg.top_k or TOP_K,
            cfg.batch_size or 32,
            cfg.cpu,
            hub=cfg,
        )
        metrics["examples"] = examples(stages, collection)
        metrics.update(
            model=cfg.model,
            data=str(Path(collection.source).resolve()),
            seconds=round(time.time() - t0, 2),
        )
        return metrics

    @classmethod
    def reranks(cls) -> bool:
        """Whether the evaluated model itself is a re-ranker (then --top-k is its own)."""
        return False

    @classmethod
    def stages(
        cls, cfg: EvaluateConfig, collection: beir.Collection
    ) -> dict[str, retrieval.Ranking]:
        """BM25 first (with --first-stage bm25, as the baseline and the candidates --rerank
        re-ranks), then the model's own exact search (the candidates when no other first stage)."""
        stages = {}
        if cfg.first_stage:
            if cfg.first_stage.strip().lower() != "bm25":
                raise UserError(
                    f"--first-stage {cfg.first_stage}: an embedding model is its own first stage;"
                    " use --first-stage bm25 to put BM25 beside it (and under --rerank)"
                )
            stages["bm25"] = retrieval.BM25(collection.corpus).search(collection.judged())
        dense = embed_stage(
            cfg.model, collection, cfg.batch_size or 32, cfg.cpu, cfg.max_length, cfg, cfg.progress
        )
        if stages:  # BM25 is the first stage: the dense ranking is reported before it
            return {cfg.model: dense, **stages}
        return {cfg.model: dense}

    @classmethod
    def evaluate_report(cls, metrics: dict) -> str:
        lines = [retrieval.format_stages(metrics["stages"])]
        lines.append(f"({metrics['queries']} queries, {metrics['corpus']} documents)")
        return "\n".join(lines)
