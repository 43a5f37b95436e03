"""Reranker fine-tuning (`finetune --task rerank`): a cross-encoder (…ForSequenceClassification with
one logit) reading a (query, passage) pair at once and scoring how well the passage answers.

Training rows are groups: a query, one of its relevant documents and ``--negatives`` documents that
are not (the source's own negatives, else mined: the top of BM25 by default, of an embedding model,
or random, --mine). ``--rank-loss pointwise`` is binary cross-entropy on every pair of the group;
``listwise`` (the default) softmax cross-entropy over the group, the positive the target (as
sentence-transformers' CrossEntropyLoss for cross-encoders). The saved folder is a plain
transformers classifier with sentence-transformers' activation in its config, so ``CrossEncoder(path)``
loads it; `evaluate` re-ranks a first stage with it, `serve` answers POST /rerank."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from warmstart.config import Choice, EvaluateConfig, FinetuneConfig, PredictConfig
from warmstart.data import beir
from warmstart.errors import UserError
from warmstart.inference import retrieval
from warmstart.kinds.base import FOR_CAUSAL_LM, FOR_TEXT_TO_TEXT, ModelKind
from warmstart.kinds.embedding import FOR_CLASSIFICATION, check_common, mined, read_parts
from warmstart.kinds.encoder import (
    NOT_RETRIEVAL,
    TOP_K,
    Encoder,
    examples,
    first_stage,
    is_retrieval_data,
    score_stages,
)
from warmstart.models.registry import dropout_of, load_config, load_options, set_dropout
from warmstart.runs import Run
from warmstart.training.common import Job

NEGATIVES = 7  # per group: one positive and seven negatives, eight pairs
VALID_DEPTH = 30  # first-stage documents re-ranked in the valid pass (kept small: every epoch)
# sentence-transformers' CrossEncoder reads its activation here; Sigmoid: scores in (0, 1).
ST_CONFIG = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}


def pair_logits(
    model, tokenizer, pairs: list[tuple[str, str]], max_length: int, batch: int, device, autocast
):
    """A cross-encoder's logits for ``pairs`` (the valid pass of a model in training)."""
    out = np.zeros(len(pairs), dtype=np.float32)
    order = np.argsort([-len(q) - len(p) for q, p in pairs], kind="stable")
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        enc = tokenizer(
            [pairs[i][0] for i in idx],
            [pairs[i][1] for i in idx],
            truncation="longest_first",
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        ).to(device)
        with autocast():
            out[idx] = model(**enc).logits[:, 0].float().cpu().numpy()
    return out


class Groups(torch.utils.data.Dataset):
    def __init__(self, groups: list[list[list[int]]], types: list[list[list[int]]] | None):
        self.groups, self.types = groups, types
        # A group's longest pair: batches of similar width (and the shape precision is timed on).
        self.lengths = np.array([max(len(x) for x in g) for g in groups], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> dict:
        return {"pairs": self.groups[i], "types": None if self.types is None else self.types[i]}


class RerankTuning(Encoder):
    """`finetune --task rerank`, and a saved cross-encoder read back (evaluate, serve /rerank)."""

    task = "rerank"
    reads = {"reranker": ModelKind("a reranker (a cross-encoder)", ("rerank",))}
    not_mine = (FOR_CAUSAL_LM, FOR_TEXT_TO_TEXT, FOR_CLASSIFICATION)

    def __init__(self, cfg: FinetuneConfig):
        check_common(cfg, self.task)
        if cfg.rank_loss not in (None, "pointwise", "listwise"):
            raise UserError(
                f"--rank-loss {cfg.rank_loss} is an embedding model's; rerank: pointwise or listwise"
            )
        for flag, value in (("--scale", cfg.scale), ("--mini-batch-size", cfg.mini_batch_size)):
            if value is not None:
                raise UserError(
                    f"{flag} does not apply to --task rerank (it is --task embedding's)"
                )
        if cfg.learn_scale:
            raise UserError(
                "--learn-scale does not apply to --task rerank (it is --task embedding's)"
            )
        if cfg.metric_for_best not in (None, "ndcg@10", "mrr@10"):
            raise UserError(
                f"--metric-for-best {cfg.metric_for_best}: --task rerank picks its best epoch by"
                " ndcg@10 or mrr@10 on --valid"
            )
        self.parts = read_parts(cfg)
        train = self.parts["train"]
        n = NEGATIVES if cfg.negatives is None else cfg.negatives
        if n < 1:
            raise UserError("--task rerank needs negatives to learn from: --negatives 1 or more")
        found = mined(cfg, train, n)
        for qid, negs in found.items():  # a source's own negatives first, mined ones after
            own = train.negatives.get(qid, [])
            found[qid] = (own + [d for d in negs if d not in own])[:n]
        self.negatives = found
        self.n = n

    def choices(self, cfg: FinetuneConfig) -> dict[str, Choice]:
        made = {
            "epochs": Choice(2.0, "reranker fine-tuning's default"),
            "lr": Choice(3e-5, "cross-encoder fine-tuning's usual rate"),
            "rank_loss": Choice("listwise", "softmax over each query's candidates"),
            "negatives": Choice(NEGATIVES, "one positive and seven negatives per group"),
            "mine": Choice("bm25", "the first stage a reranker re-ranks at test time"),
            "metric_for_best": Choice("ndcg@10", "retrieval's headline metric on --valid"),
            "max_length": Choice(256, "query and passage together; longer passages are cut"),
        }
        made = {k: c for k, c in made.items() if getattr(cfg, k) is None}
        if "valid" not in self.parts:
            made.pop("metric_for_best", None)
        return made

    def describe(self) -> str:
        c = self.parts["train"]
        pos = sum(len(c.relevant(q)) for q in c.qrels)
        return f"rerank: {pos} positives of {len(c)} queries, {self.n} negatives each"

    def load_model(self, path: str, cfg: FinetuneConfig) -> torch.nn.Module:
        from transformers import AutoModelForSequenceClassification

        config = load_config(path)
        set_dropout(config, dropout_of(cfg))
        config.num_labels = 1
        config.id2label, config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
        config.problem_type = None
        return AutoModelForSequenceClassification.from_pretrained(
            path, config=config, ignore_mismatched_sizes=True, **load_options(path)
        )

    def encode(self, tokenizer, role: str, max_length: int, cfg: FinetuneConfig | None = None):
        if role != "train":
            return None
        c = self.parts["train"]
        groups, types = [], []
        for qid in c.qrels:
            negs = self.negatives.get(qid, [])
            if not negs:
                continue
            for did in sorted(c.relevant(qid)):
                docs = [did] + negs
                docs += [negs[i % len(negs)] for i in range(self.n + 1 - len(docs))]
                enc = tokenizer(
                    [c.queries[qid]] * len(docs),
                    [c.corpus[d] for d in docs],
                    truncation="longest_first",
                    max_length=max_length,
                )
                groups.append(enc["input_ids"])
                types.append(enc.get("token_type_ids"))
        if not groups:
            raise UserError(f"{c.source}: no query has both a relevant and another document")
        return Groups(groups, None if types[0] is None else types)

    def job(self, cfg: FinetuneConfig, tokenizer, data: dict) -> Job:
        train = data["train"]
        pad = tokenizer.pad_token_id or 0

        def collate(rows: list[dict]) -> dict:
            seqs = [s for r in rows for s in r["pairs"]]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            tt = torch.zeros_like(ids)
            kinds = [t for r in rows for t in (r["types"] or [[0] * len(s) for s in r["pairs"]])]
            for i, (s, t) in enumerate(zip(seqs, kinds)):
                ids[i, : len(s)], mask[i, : len(s)], tt[i, : len(s)] = (
                    torch.tensor(s),
                    1,
                    torch.tensor(t),
                )
            labels = torch.zeros((len(rows), len(rows[0]["pairs"])))
            labels[:, 0] = 1.0  # each group's first pair is its positive
            batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
            if rows[0]["types"] is not None:
                batch["token_type_ids"] = tt
            return batch

        listwise = cfg.rank_loss == "listwise"

        def loss(out, batch) -> torch.Tensor:
            labels = batch["labels"]
            logits = out.logits.float().view(labels.shape)
            if listwise:
                return torch.nn.functional.cross_entropy(logits, labels.argmax(1))
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)

        valid = self.parts.get("valid")
        candidates = (
            retrieval.BM25(valid.corpus).search(valid.judged(), VALID_DEPTH) if valid else None
        )

        def evaluate(model, device, autocast) -> dict:
            model.eval()
            where = [(q, d) for q, docs in candidates.items() for d in docs]
            with torch.no_grad():
                logits = pair_logits(
                    model,
                    tokenizer,
                    [(valid.queries[q], valid.corpus[d]) for q, d in where],
                    cfg.max_length,
                    cfg.eval_batch_size,
                    device,
                    autocast,
                )
            ranking: retrieval.Ranking = {q: {} for q in candidates}
            for (q, d), s in zip(where, logits):
                ranking[q][d] = float(s)
            m = retrieval.retrieval_metrics(valid.qrels, ranking)
            return {k: m[k] for k in ("ndcg@10", "mrr@10")}

        def save(model, folder: Path, weights: dict | None = None) -> None:
            model.config.sentence_transformers = ST_CONFIG
            model.save_pretrained(folder, state_dict=weights)
            tokenizer.save_pretrained(folder)

        return Job(
            train=train,
            lengths=train.lengths,
            collate=collate,
            save=save,
            loss=loss,
            evaluate=evaluate if valid is not None else None,
            unit="groups",
            tokenizer=tokenizer,
        )

    def test(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        """The saved model re-ranking the test collection's first stage (--mine's: bm25 by default),
        as `evaluate --first-stage` does."""
        t = time.time()
        c = self.parts["test"]
        name = cfg.mine or "bm25"
        stages = {name: first_stage(name, c, cfg.eval_batch_size, cfg.cpu, None, hub=cfg)}
        metrics = score_stages(c, stages, str(model_dir), TOP_K, cfg.eval_batch_size, cfg.cpu)
        run.say("test set:\n" + retrieval.format_stages(metrics["stages"]))
        return {"test": metrics, "test_seconds": round(time.time() - t, 2)}

    def summary(self, metrics: dict) -> str:
        m = metrics["test"]
        first = list(m["stages"].values())[0]
        return (
            f"test nDCG@10 {m['ndcg@10']:.4f} re-ranked ({first['ndcg@10']:.4f} first stage),"
            f" MRR@10 {m['mrr@10']:.4f} on {m['queries']} queries"
        )

    # -- a saved model read back --------------------------------------------------------------------
    @classmethod
    def reranks(cls) -> bool:
        return True

    @classmethod
    def evaluate(cls, cfg: EvaluateConfig, path: str, model_kind: str) -> dict:
        if not is_retrieval_data(cfg.data):
            raise UserError(
                f"model '{cfg.model}' is {cls.describe_model(model_kind)}: evaluate it on retrieval"
                " data (a BEIR folder or SQuAD JSON), re-ranking --first-stage (bm25 or an"
                " embedding model)"
            )
        if cfg.rerank:
            raise UserError(f"--rerank: model '{cfg.model}' is the reranker; drop --rerank")
        from warmstart.config import refuse_inapplicable

        refuse_inapplicable(cfg, NOT_RETRIEVAL, "a retrieval evaluation")
        t0 = time.time()
        collection = beir.read(cfg.data, "test", cfg.limit)
        name = cfg.first_stage or "bm25"
        batch = cfg.batch_size or 32
        stages = {name: first_stage(name, collection, batch, cfg.cpu, None, cfg, cfg.progress)}
        metrics = score_stages(
            collection, stages, cfg.model, cfg.top_k or TOP_K, batch, cfg.cpu, hub=cfg
        )
        metrics["examples"] = examples(stages, collection)
        metrics.update(model=cfg.model, seconds=round(time.time() - t0, 2))
        return metrics

    @classmethod
    def predict(cls, cfg: PredictConfig, path: str, model_kind: str) -> list:
        raise UserError(
            f"model '{cfg.model}' is {cls.describe_model(model_kind)}: it scores (query, passage)"
            " pairs; use `warmstart evaluate` on a BEIR folder or `warmstart serve` (POST /rerank)"
        )

    @classmethod
    def serve(cls, path: str, source: str, model_kind: str, options: dict) -> dict:
        return {
            "reranker": retrieval.CrossEncoderScorer.load(
                path, max_length=options.get("max_length"), cpu=options.get("cpu", False)
            )
        }
