"""Sentence-embedding fine-tuning (`finetune --task embedding`): a bi-encoder trained contrastively
on (anchor, positive[, negative]) pairs with in-batch negatives, the loss of sentence-transformers'
MultipleNegativesRankingLoss (each anchor's scaled cosine similarities to every positive and negative
in the batch, its own positive the target), with a fixed or learnt scale.

Two things beyond that loss: documents known to be relevant to an anchor (another of its positives,
or a positive shared by two queries) are masked out of its negatives rather than pushed away (a
query with seven judged documents would otherwise be trained against six of them); and
``--mini-batch-size`` caches the negatives' gradients (GradCache, Gao et al. 2021, as
sentence-transformers' CachedMultipleNegativesRankingLoss does it, whose RNG replay it borrows), so
the batch of negatives can be larger than memory allows.

Pooling and normalisation follow the base model's sentence-transformers settings (mean and
L2-normalised for minilm; mean and normalised for a plain transformers encoder). The model is saved
as a sentence-transformers folder (modules.json, 1_Pooling, sentence_bert_config.json), so
``SentenceTransformer(path)``, `warmstart embed` and `serve /embed` read it alike; `evaluate` scores
it as a retriever (kinds.encoder)."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers.utils import ModelOutput

from warmstart.config import Choice, FinetuneConfig
from warmstart.data import beir
from warmstart.errors import UserError
from warmstart.inference import retrieval
from warmstart.inference.features import pool
from warmstart.kinds.base import FOR_CAUSAL_LM, FOR_TEXT_TO_TEXT
from warmstart.kinds.encoder import Encoder, embed_stage, first_stage
from warmstart.models.registry import dropout_of, load_config, load_options, resolve, set_dropout
from warmstart.models.sentence import sentence_settings
from warmstart.runs import Run
from warmstart.training.common import Job

SCALE = 20.0  # sentence-transformers' MultipleNegativesRankingLoss default (temperature 0.05)
MAX_SCALE = 100.0  # CLIP's cap on a learnt logit scale
# Options of classification and tagging, refused by name.
CLASSIFICATION_ONLY = (
    "text_column",
    "text_pair_column",
    "label_column",
    "label_names",
    "label_separator",
    "class_weights",
    "sampler",
    "long_text",
    "stride",
    "chunk_aggregation",
    "tag_column",
    "base_tags",
    "label_all_subtokens",
    "label_smoothing",
)
FOR_CLASSIFICATION = (CLASSIFICATION_ONLY, "they are for classification and tagging")
POOLING_FILE = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "last": "pooling_mode_lasttoken",
}


@dataclass
class EmbeddingOutput(ModelOutput):
    loss: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None


def in_batch_loss(
    anchors: torch.Tensor,
    candidates: torch.Tensor,
    scale: torch.Tensor | float,
    false_negatives: torch.Tensor | None = None,
) -> torch.Tensor:
    """MultipleNegativesRankingLoss: cross-entropy over ``scale`` x the cosine similarities of each
    anchor (row i) to every candidate (the positives, then any negatives), row i's positive the
    target; ``false_negatives`` (anchors x candidates, True: known relevant) are left out."""
    scores = torch.nn.functional.normalize(anchors.float(), dim=-1) @ (
        torch.nn.functional.normalize(candidates.float(), dim=-1).T
    )
    scores = scores * scale
    if false_negatives is not None:
        scores = scores.masked_fill(false_negatives, float("-inf"))
    target = torch.arange(len(anchors), device=anchors.device)
    return torch.nn.functional.cross_entropy(scores, target)


class ContrastiveEncoder(torch.nn.Module):
    """A transformers encoder body with pooling, trained by ``in_batch_loss``. Its forward takes the
    batch's columns (a_*, p_*, n0_*...: anchors, positives, negatives) and returns the loss; given
    plain input_ids it returns the pooled embeddings."""

    def __init__(
        self,
        body: torch.nn.Module,
        pooling: str,
        normalize: bool,
        scale: float = SCALE,
        learn_scale: bool = False,
        mini_batch_size: int | None = None,
    ):
        super().__init__()
        self.body = body
        self.pooling, self.normalize, self.mini_batch_size = pooling, normalize, mini_batch_size
        log_scale = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = torch.nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def config(self):
        return self.body.config

    def set_attn_implementation(self, kernel: str) -> None:
        self.body.set_attn_implementation(kernel)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=MAX_SCALE)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.pooling)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        false_negatives: torch.Tensor | None = None,
        **columns: torch.Tensor,
    ) -> EmbeddingOutput:
        if input_ids is not None:
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            return EmbeddingOutput(embeddings=self.embed(input_ids, attention_mask))
        names = ["a", "p"] + sorted(
            {k.split("_", 1)[0] for k in columns if k.startswith("n")}, key=lambda n: int(n[1:])
        )
        feats = [
            {
                "input_ids": columns[f"{c}_input_ids"],
                "attention_mask": columns[f"{c}_attention_mask"],
            }
            for c in names
        ]
        if self.mini_batch_size and torch.is_grad_enabled():
            return EmbeddingOutput(loss=self.cached_loss(feats, false_negatives))
        reps = [self.embed(**f) for f in feats]
        return EmbeddingOutput(
            loss=in_batch_loss(reps[0], torch.cat(reps[1:]), self.scale, false_negatives)
        )

    def cached_loss(self, feats: list[dict], false_negatives: torch.Tensor | None) -> torch.Tensor:
        """GradCache: (1) embed every piece of ``mini_batch_size`` texts without a graph, keeping
        its RNG state; (2) the loss and its gradient with respect to the embeddings (and the scale);
        (3) when the engine calls backward, each piece embedded again with its dropout replayed and
        its cached gradient pushed through. One piece's activations are alive at a time."""
        from sentence_transformers.base.losses.gradcache import RandContext

        m = self.mini_batch_size
        pieces: list[list[tuple[int, RandContext]]] = []
        reps = []
        with torch.no_grad():
            for f in feats:
                col, states = [], []
                for start in range(0, len(f["input_ids"]), m):
                    part = {k: v[start : start + m] for k, v in f.items()}
                    states.append((start, RandContext(*part.values())))
                    col.append(self.embed(**part))
                reps.append(torch.cat(col))
                pieces.append(states)
        leaves = [r.detach().requires_grad_() for r in reps]
        with torch.enable_grad():
            loss = in_batch_loss(leaves[0], torch.cat(leaves[1:]), self.scale, false_negatives)
            wrt = leaves + ([self.log_scale] if self.log_scale.requires_grad else [])
            grads = torch.autograd.grad(loss, wrt)
        device = feats[0]["input_ids"].device.type
        amp = (
            torch.autocast(device, dtype=torch.get_autocast_dtype(device))
            if torch.is_autocast_enabled(device)
            else contextlib.nullcontext()
        )

        def replay(grad: torch.Tensor) -> None:  # ``grad``: 1, or 1/N under gradient accumulation
            for f, states, g in zip(feats, pieces, grads):
                for start, state in states:
                    part = {k: v[start : start + m] for k, v in f.items()}
                    with torch.enable_grad():  # a hook runs with grad mode off
                        with state, amp:
                            rep = self.embed(**part)
                        (rep.float() * (g[start : start + m] * grad)).sum().backward()
            if len(grads) > len(feats):
                extra = grads[-1] * grad
                self.log_scale.grad = (
                    extra if self.log_scale.grad is None else self.log_scale.grad + extra
                )

        out = loss.detach().requires_grad_()
        out.register_hook(replay)
        return out


class PairRows(torch.utils.data.Dataset):
    """Training rows: token ids of an anchor, its positive and any negatives, with the anchor's
    relevant documents (for the false-negative mask)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.lengths = np.array([len(r["a"]) + len(r["p"]) for r in rows], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def load_body(path: str, cfg: FinetuneConfig) -> torch.nn.Module:
    from transformers import AutoModel

    config = load_config(path)
    set_dropout(config, dropout_of(cfg))
    try:
        return AutoModel.from_pretrained(path, config=config, **load_options(path))
    except (OSError, ValueError) as e:
        raise UserError(
            f"cannot load a model from '{path}': {str(e).strip().splitlines()[0]}"
        ) from None


def save_sentence_folder(
    model: ContrastiveEncoder, folder: Path, tokenizer, max_length: int, weights: dict | None = None
) -> None:
    """The body's weights and tokenizer, and the sentence-transformers modules around them:
    Transformer, Pooling, and Normalize where the model normalises."""
    body_weights = (
        None
        if weights is None
        else {k[len("body.") :]: v for k, v in weights.items() if k.startswith("body.")}
    )
    # Recorded for model cards (hub.card tells a sentence-embedding model from a plain encoder).
    model.body.config.sentence_embedding = {"pooling": model.pooling, "normalize": model.normalize}
    model.body.save_pretrained(folder, state_dict=body_weights)
    tokenizer.save_pretrained(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if model.normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    pooling = {
        "word_embedding_dimension": model.body.config.hidden_size,
        **{key: how == model.pooling for how, key in POOLING_FILE.items()},
        "pooling_mode_mean_sqrt_len_tokens": False,
        "include_prompt": True,
    }
    (folder / "1_Pooling").mkdir(exist_ok=True)
    files = {
        "modules.json": modules,
        "1_Pooling/config.json": pooling,
        "sentence_bert_config.json": {"max_seq_length": max_length, "do_lower_case": False},
        "config_sentence_transformers.json": {
            "similarity_fn_name": "cosine",
            "trained_scale": round(float(model.scale), 4),
        },
    }
    for name, obj in files.items():
        (folder / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def check_common(cfg: FinetuneConfig, task: str) -> None:
    """What both retrieval kinds refuse before reading a file."""
    if cfg.engine == "trainer":
        raise UserError(f"--task {task} trains with the native engine only; drop --engine trainer")
    if cfg.lora_r and cfg.lora_save == "adapter":
        raise UserError(
            f"--task {task} saves a model sentence-transformers loads: use --lora-save merged"
        )
    if not cfg.data:
        raise UserError(
            "no training data: pass --data (a BEIR folder, SQuAD JSON or a pairs table)"
        )
    if cfg.split:
        raise UserError(
            f"--split does not apply to --task {task}: give --valid and --test (a BEIR folder reads"
            " its qrels/dev.tsv and qrels/test.tsv)"
        )
    if cfg.mine and not cfg.negatives:
        raise UserError("--mine says where --negatives come from: give --negatives N")


def read_parts(cfg: FinetuneConfig) -> dict[str, beir.Collection]:
    parts = {"train": beir.read_sources(cfg.data, "train", cfg.max_train_samples)}
    if cfg.valid:
        parts["valid"] = beir.read_sources(cfg.valid, "valid", cfg.max_valid_samples)
    if cfg.test:
        parts["test"] = beir.read_sources(cfg.test, "test", cfg.max_test_samples)
    return parts


def mined(cfg: FinetuneConfig, collection: beir.Collection, n: int) -> dict[str, list[str]]:
    """``n`` negatives per judged query from --mine: bm25 (the default), random, or an embedding
    model's top documents; the judged relevant ones never."""
    how = (cfg.mine or "bm25").strip()
    if how.lower() == "random":
        return retrieval.random_negatives(collection, n, cfg.seed)
    ranking = first_stage(how, collection, 64, cfg.cpu, None, hub=cfg)
    return retrieval.hard_negatives(collection, ranking, n)


def embed_texts(model, tokenizer, texts: list[str], max_length: int, batch: int, device, autocast):
    """Pooled embeddings of ``texts`` by a model in training (the valid pass), longest first."""
    out = torch.zeros(len(texts), model.config.hidden_size)
    order = np.argsort([-len(t) for t in texts], kind="stable")
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        enc = tokenizer(
            [texts[i] for i in idx],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        ).to(device)
        with autocast():
            out[torch.as_tensor(idx)] = (
                model.embed(enc["input_ids"], enc["attention_mask"]).float().cpu()
            )
    return out


class EmbeddingTuning(Encoder):
    """`finetune --task embedding`; the saved model is a plain encoder (kinds.encoder reads it)."""

    task = "embedding"
    reads = {}  # its saved model is read back as an encoder
    not_mine = (FOR_CAUSAL_LM, FOR_TEXT_TO_TEXT, FOR_CLASSIFICATION)

    def __init__(self, cfg: FinetuneConfig):
        check_common(cfg, self.task)
        if cfg.rank_loss not in (None, "mnrl"):
            raise UserError(
                f"--rank-loss {cfg.rank_loss} is a reranker's (--task rerank); embedding: mnrl"
            )
        if cfg.mini_batch_size and cfg.mini_batch_size >= cfg.batch_size:
            raise UserError(
                f"--mini-batch-size {cfg.mini_batch_size} caches nothing with --batch-size"
                f" {cfg.batch_size}: make the batch larger (the in-batch negatives) and the pieces"
                " smaller"
            )
        if cfg.metric_for_best not in (None, "ndcg@10", "mrr@10"):
            raise UserError(
                f"--metric-for-best {cfg.metric_for_best}: --task {self.task} picks its best epoch"
                " by ndcg@10 or mrr@10 on --valid"
            )
        self.parts = read_parts(cfg)
        train = self.parts["train"]
        if cfg.negatives:
            train.negatives = mined(cfg, train, cfg.negatives)
        self.pairs = train.pairs()

    def choices(self, cfg: FinetuneConfig) -> dict[str, Choice]:
        own = sentence_settings(resolve(cfg.model, hub=cfg))
        made = {
            "epochs": Choice(3.0, "embedding fine-tuning's default: a few passes over the pairs"),
            "lr": Choice(3e-5, "contrastive fine-tuning of a small encoder"),
            "rank_loss": Choice("mnrl", "in-batch negatives (MultipleNegativesRankingLoss)"),
            "scale": Choice(SCALE, "MultipleNegativesRankingLoss's default (temperature 0.05)"),
            "metric_for_best": Choice("ndcg@10", "retrieval's headline metric on --valid"),
            "max_length": Choice(
                own.max_seq_length, "the model's sentence-transformers max_seq_length"
            ),
        }
        made = {k: c for k, c in made.items() if getattr(cfg, k) is None and c.value is not None}
        if "valid" not in self.parts:
            made.pop("metric_for_best", None)
        return made

    def describe(self) -> str:
        negs = sum(1 for _, _, n in self.pairs if n is not None)
        return (
            f"embedding: {len(self.pairs)} (anchor, positive) pairs of {len(self.parts['train'])}"
            f" queries{f', {negs} with a hard negative' if negs else ''}"
        )

    def load_model(self, path: str, cfg: FinetuneConfig) -> torch.nn.Module:
        own = sentence_settings(path)
        # A plain transformers encoder: mean pooling, normalised (cosine is what the loss trains).
        pooling, normalize = (own.pooling, own.normalize) if own.pooling else ("mean", True)
        return ContrastiveEncoder(
            load_body(path, cfg),
            pooling,
            normalize,
            cfg.scale or SCALE,
            cfg.learn_scale,
            cfg.mini_batch_size,
        )

    def encode(self, tokenizer, role: str, max_length: int, cfg: FinetuneConfig | None = None):
        if role != "train":
            return None  # valid and test are scored by retrieval over their collections
        c = self.parts["train"]
        qids = sorted({q for q, _, _ in self.pairs})
        dids = sorted({d for _, p, n in self.pairs for d in (p, n) if d is not None})
        ids = dict(
            zip(
                qids,
                tokenizer([c.queries[q] for q in qids], truncation=True, max_length=max_length)[
                    "input_ids"
                ],
            )
        )
        docs = dict(
            zip(
                dids,
                tokenizer([c.corpus[d] for d in dids], truncation=True, max_length=max_length)[
                    "input_ids"
                ],
            )
        )
        rows = []
        for qid, did, neg in self.pairs:
            row = {"a": ids[qid], "p": docs[did], "qid": qid, "did": did}
            if neg is not None:
                row.update(n0=docs[neg], nid=neg)
            rows.append(row)
        if any("n0" in r for r in rows) and not all("n0" in r for r in rows):
            # A batch needs the same columns in every row: pairs without a negative get a random one.
            rng = np.random.default_rng(cfg.seed if cfg else 0)
            pool_ids = list(dids)
            for r in rows:
                if "n0" not in r:
                    pick = pool_ids[int(rng.integers(len(pool_ids)))]
                    r.update(n0=docs[pick], nid=pick)
        return PairRows(rows)

    def job(self, cfg: FinetuneConfig, tokenizer, data: dict) -> Job:
        train = data["train"]
        relevant = {q: self.parts["train"].relevant(q) for q in self.parts["train"].qrels}
        pad = tokenizer.pad_token_id or 0

        def padded(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
            return ids, mask

        def collate(rows: list[dict]) -> dict:
            cols = ["a", "p"] + (["n0"] if "n0" in rows[0] else [])
            batch = {}
            for c in cols:
                batch[f"{c}_input_ids"], batch[f"{c}_attention_mask"] = padded([r[c] for r in rows])
            # Candidate j of anchor i is a false negative when the judgements call it relevant to
            # i's query and it is not i's own positive.
            cands = [r["did"] for r in rows] + ([r["nid"] for r in rows] if "n0" in rows[0] else [])
            mask = torch.zeros((len(rows), len(cands)), dtype=torch.bool)
            for i, r in enumerate(rows):
                for j, d in enumerate(cands):
                    mask[i, j] = j != i and d in relevant[r["qid"]]
            batch["false_negatives"] = mask
            return batch

        valid = self.parts.get("valid")
        length = cfg.max_length

        def evaluate(model, device, autocast) -> dict:
            model.eval()
            with torch.no_grad():
                dids = list(valid.corpus)
                queries = valid.judged()
                docs = embed_texts(
                    model,
                    tokenizer,
                    [valid.corpus[d] for d in dids],
                    length,
                    cfg.eval_batch_size,
                    device,
                    autocast,
                )
                qs = embed_texts(
                    model,
                    tokenizer,
                    list(queries.values()),
                    length,
                    cfg.eval_batch_size,
                    device,
                    autocast,
                )
            ranking = retrieval.top_k(
                torch.nn.functional.normalize(qs, dim=-1),
                torch.nn.functional.normalize(docs, dim=-1),
                list(queries),
                dids,
                retrieval.DEPTH,
            )
            m = retrieval.retrieval_metrics(valid.qrels, ranking)
            return {k: m[k] for k in ("ndcg@10", "mrr@10", "recall@100")} | {
                "scale": round(float(model.scale), 3)
            }

        def save(model, folder: Path, weights: dict | None = None) -> None:
            save_sentence_folder(model, folder, tokenizer, cfg.max_length, weights)

        return Job(
            train=train,
            lengths=train.lengths,
            collate=collate,
            save=save,
            evaluate=evaluate if valid is not None else None,
            unit="pairs",
            tokenizer=tokenizer,
        )

    def test(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        """The saved folder read back as `evaluate` reads it (its sentence-transformers settings),
        searching the test collection's corpus."""
        t = time.time()
        collection = self.parts["test"]
        ranking = embed_stage(
            str(model_dir), collection, cfg.eval_batch_size, cfg.cpu, cfg.max_length
        )
        metrics = retrieval.retrieval_metrics(collection.qrels, ranking)
        run.say("test set:\n" + retrieval.format_stages({"fine-tuned": metrics}))
        return {"test": metrics, "test_seconds": round(time.time() - t, 2)}

    def summary(self, metrics: dict) -> str:
        m = metrics["test"]
        return (
            f"test nDCG@10 {m['ndcg@10']:.4f}, MRR@10 {m['mrr@10']:.4f}, Recall@100"
            f" {m['recall@100']:.4f} on {m['queries']} queries"
        )

    @classmethod
    def report(cls, result_dir: Path, metrics: dict) -> str:
        test = metrics.get("test") or {}
        return f"run folder: {result_dir}\n" + "".join(
            f"test {k}: {test[k]:.4f}\n" for k in ("ndcg@10", "mrr@10", "recall@100") if k in test
        )
