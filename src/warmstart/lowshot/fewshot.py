"""The few-shot learners: SetFit-style contrastive fine-tuning, prompt scores calibrated on the
examples, and in-context examples in a prompt.

Each sees exactly k labelled texts per class (``sample_k``), drawn with a seed.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from warmstart.config import FewshotConfig
from warmstart.errors import UserError
from warmstart.inference.features import Embedder
from warmstart.lowshot.prompting import CONTENT_FREE, calibrate
from warmstart.lowshot.zeroshot import load_method
from warmstart.metrics import softmax


def sample_k(y: np.ndarray, k: int, seed: int, names: list[str] | None = None) -> np.ndarray:
    """k row indices of every class, a seeded draw without replacement, in a seeded random order."""
    if k < 1:
        raise UserError("--k must be at least 1")
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(int(y.max()) + 1 if len(y) else 0):
        rows = np.flatnonzero(y == c)
        if len(rows) < k:
            name = names[c] if names else str(c)
            raise UserError(
                f"class '{name}' has {len(rows)} examples in the training data, fewer than --k {k}"
            )
        picked.append(rng.choice(rows, size=k, replace=False))
    out = np.concatenate(picked)
    return out[rng.permutation(len(out))]


# --- SetFit-style: contrastive pairs, then a logistic head
# -------------------------------------------


def contrastive_pairs(y: np.ndarray, per_example: int, seed: int) -> list[tuple[int, int, float]]:
    """For every example, ``per_example`` pairs: half with a same-class partner (target 1), half
    with another class (target 0), as in SetFit. Indices are into ``y``."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i, c in enumerate(y):
        same = np.flatnonzero((y == c) & (np.arange(len(y)) != i))
        other = np.flatnonzero(y != c)
        for j in range(per_example):
            pool, target = (same, 1.0) if j % 2 == 0 else (other, 0.0)
            if len(pool):
                pairs.append((i, int(rng.choice(pool)), target))
    return [pairs[i] for i in rng.permutation(len(pairs))]


def setfit_train(
    embedder,
    texts: list[str],
    y: np.ndarray,
    per_example: int,
    epochs: float,
    lr: float,
    batch_size: int,
    seed: int,
    progress: bool = False,
) -> float:
    """Fine-tune ``embedder.model`` so that cos(u, v) matches 1 for same-class pairs and 0 otherwise
    (SetFit's CosineSimilarityLoss). Returns the last epoch's mean loss."""
    from transformers import get_linear_schedule_with_warmup

    from warmstart.progress import progress_bar

    torch.manual_seed(seed)
    pairs = contrastive_pairs(y, per_example, seed)
    if not pairs:
        raise UserError("no contrastive pairs: few-shot training needs at least two classes")
    enc = embedder.encode(texts)
    steps_per_epoch = -(-len(pairs) // batch_size)
    total = max(1, int(round(steps_per_epoch * epochs)))
    model = embedder.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = get_linear_schedule_with_warmup(opt, int(0.1 * total), total)
    rng = np.random.default_rng(seed)
    losses: list[float] = []
    step = 0
    with progress_bar(
        total=total, desc="setfit", unit="step", enabled=progress, leave=False
    ) as bar:
        while step < total:
            order = rng.permutation(len(pairs))
            losses = []
            for start in range(0, len(order), batch_size):
                if step >= total:
                    break
                chunk = [pairs[i] for i in order[start : start + batch_size]]
                # Both sides of every pair in one padded batch: half the passes of encoding them
                # separately.
                rows = [a for a, _, _ in chunk] + [b for _, b, _ in chunk]
                batch = embedder.collate([{k: v[r] for k, v in enc.features.items()} for r in rows])
                batch = {k: v.to(embedder.device) for k, v in batch.items()}
                z = embedder.forward(batch)
                u, v = z[: len(chunk)], z[len(chunk) :]
                target = torch.tensor([t for _, _, t in chunk], device=z.device)
                loss = torch.nn.functional.mse_loss(
                    torch.nn.functional.cosine_similarity(u, v), target
                )
                loss.backward()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                step += 1
                bar.update(1)
    model.eval()
    return float(np.mean(losses)) if losses else float("nan")


def logistic_head(x: np.ndarray, y: np.ndarray, seed: int):
    from sklearn.linear_model import LogisticRegression

    # SetFit's head: plain logistic regression on the (tuned) embeddings.
    return LogisticRegression(max_iter=2000, random_state=seed).fit(x, y)


# --- Prompt scores calibrated on the examples
# -------------------------------------------------------------


def score_features(probs: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """Label probabilities -> log-odds against the first label (K-1 features; one for two labels). A
    list of (n, K) arrays, one per scorer (the prompt, the similarity method), gives their features
    side by side."""
    parts = [probs] if isinstance(probs, np.ndarray) else probs
    logp = [np.log(np.clip(p, 1e-12, None)) for p in parts]
    return np.concatenate([lp[:, 1:] - lp[:, :1] for lp in logp], axis=1)


def score_head(probs: np.ndarray | list[np.ndarray], y: np.ndarray, seed: int):
    """A logistic regression on the label log-odds, fitted on the k examples per class: it learns
    the prompt's bias (the intercept) and how far to trust its scores (the slope) from labelled
    texts, where content-free calibration can only guess the bias from inputs like "N/A"; with
    several scorers, how to weigh them."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, random_state=seed).fit(score_features(probs), y)


# --- In-context examples
# -------------------------------------------------------------------------------


def incontext_prefix(
    scorer, template: str, texts: list[str], labels: list[str], example_tokens: int, verbalise
) -> list[int]:
    """The examples as one token prefix: each shown with ``template`` and followed by its label."""
    ids: list[int] = []
    for text, label in zip(texts, labels):
        ids += scorer.prompt_ids(template, text, example_tokens) + scorer.ids(
            verbalise([label])[0] + "\n\n"
        )
    return ids


def chat_incontext(
    lm,
    scorer,
    template: str,
    texts: list[str],
    labels: list[str],
    example_tokens: int,
    answer_prefix: str,
) -> tuple[list[int], str]:
    """The examples as earlier turns of a chat (user: the template with the text; assistant: the
    answer), and the template of the final turn that every query goes into. Returns (prefix ids,
    query template)."""
    if not getattr(lm.tokenizer, "chat_template", None):
        raise UserError(f"model '{lm.name}' has no chat template, so --chat cannot be used with it")
    before, after = template.split("{text}")
    history = []
    for text, label in zip(texts, labels):
        cut = lm.tokenizer.decode(scorer.cut(scorer.ids(text), example_tokens))
        history += [
            {"role": "user", "content": before + cut + after},
            {"role": "assistant", "content": f"{answer_prefix} {label}."},
        ]
    prefix = lm.tokenizer.apply_chat_template(history, tokenize=False) if history else ""
    full = lm.tokenizer.apply_chat_template(
        history + [{"role": "user", "content": template}],
        tokenize=False,
        add_generation_prompt=True,
    )
    if not full.startswith(prefix):  # only templates that append turns can share a cached prefix
        raise UserError(
            f"the chat template of '{lm.name}' rewrites earlier turns, so in-context examples "
            "cannot be cached as a prefix; use --no-chat"
        )
    return scorer.ids(prefix), full[len(prefix) :] + answer_prefix


# --- One draw of k examples per class, per method (what `warmstart fewshot` repeats)
# ------------------------


def setfit_repeat(
    cfg: FewshotConfig,
    model: str,
    texts: list[str],
    y: np.ndarray,
    test_texts: list[str],
    names: list[str],
) -> tuple[np.ndarray, dict]:
    # A fresh copy of the encoder every repeat: each draw of examples starts from the pre-trained
    # weights. Unit vectors, as SetFit's sentence-transformers body gives them (all-MiniLM-L6-v2
    # ends in a Normalize module): the head then sees only directions, which is what the cosine loss
    # trained.
    emb = Embedder.load(
        model,
        max_length=cfg.max_length or 256,
        cpu=cfg.cpu,
        attention_dropout=0.0,
        normalize=True,
        hub=cfg,
    )
    t = time.perf_counter()
    loss = setfit_train(
        emb,
        texts,
        y,
        cfg.pairs_per_example,
        cfg.epochs,
        cfg.lr,
        cfg.batch_size,
        cfg.seed,
        cfg.progress,
    )
    train_seconds = time.perf_counter() - t
    head = logistic_head(emb.embed(texts, cfg.batch_size), y, cfg.seed)
    t = time.perf_counter()
    pred = head.predict(emb.embed(test_texts, cfg.batch_size, cfg.progress))
    return pred, {
        "train_seconds": round(train_seconds, 2),
        "final_pair_loss": round(loss, 5),
        "predict_seconds": round(time.perf_counter() - t, 2),
    }


class PromptScores:
    """`fewshot --method prompt`: label probabilities of every test text (computed once, whatever
    the number of draws) and of the drawn examples (each pool row once), then one logistic head per
    draw. With --descriptions, the MiniLM similarity to the label descriptions is a second score
    beside the prompt's."""

    def __init__(
        self,
        cfg: FewshotConfig,
        method,
        names: list[str],
        test_texts: list[str],
        descriptions: dict[str, list[str]],
    ):
        self.cfg, self.method, self.names = cfg, method, names
        self.similarity = (
            load_method(
                "similarity",
                None,
                cpu=cfg.cpu,
                max_length=cfg.max_length or 256,
                descriptions=descriptions,
            )
            if descriptions
            else None
        )
        t = time.perf_counter()
        self.test = self.scores(test_texts, cfg.progress)
        self.test_seconds = time.perf_counter() - t
        self.pool: dict[int, list[np.ndarray]] = {}

    def scores(self, texts: list[str], progress: bool = False) -> list[np.ndarray]:
        """Label probabilities of ``texts``: the prompt's, then (with descriptions) the similarity
        method's."""
        out = [
            self.method.label_probabilities(texts, self.names, None, self.cfg.batch_size, progress)
        ]
        if self.similarity is not None:
            out.append(self.similarity.scores(texts, self.names, batch_size=self.cfg.batch_size))
        return out

    def repeat(self, rows: list[int], texts: list[str], y: np.ndarray) -> tuple[np.ndarray, dict]:
        new = [i for i, r in enumerate(rows) if r not in self.pool]
        if new:
            got = self.scores([texts[i] for i in new])
            self.pool.update({rows[i]: [g[j] for g in got] for j, i in enumerate(new)})
        examples = [np.stack([self.pool[r][s] for r in rows]) for s in range(len(self.test))]
        head = score_head(examples, y, self.cfg.seed)
        return head.predict(score_features(self.test)), {
            "predict_seconds": round(self.test_seconds, 2)
        }


def incontext_repeat(
    cfg: FewshotConfig,
    method,
    texts: list[str],
    y: np.ndarray,
    test_texts: list[str],
    names: list[str],
) -> tuple[np.ndarray, dict]:
    scorer, template = method.scorer, method.template
    lab_ids = scorer.label_ids(method.verbalise(names))
    example_labels = [names[i] for i in y]

    def prefix_and_template(ex_texts: list[str], ex_labels: list[str]) -> tuple[list[int], str]:
        if cfg.chat:
            return chat_incontext(
                method.lm,
                scorer,
                template,
                ex_texts,
                ex_labels,
                cfg.example_max_length,
                cfg.answer_prefix,
            )
        return (
            incontext_prefix(
                scorer, template, ex_texts, ex_labels, cfg.example_max_length, method.verbalise
            ),
            template,
        )

    t = time.perf_counter()
    prefix, query_template = prefix_and_template(texts, example_labels)
    prompt_tokens = len(prefix)
    queries = [scorer.prompt_ids(query_template, q) for q in test_texts]
    cf_queries = [scorer.prompt_ids(query_template, q) for q in CONTENT_FREE]
    if cfg.select == "random":
        # One prefix for every query: its key/value cache is computed once
        # (lowshot.prompting.PromptScorer).
        probs = softmax(scorer.score(queries, lab_ids, prefix, cfg.batch_size, cfg.progress))
        p_cf = softmax(scorer.score(cf_queries, lab_ids, prefix, cfg.batch_size)).mean(
            0, keepdims=True
        )
        probs = calibrate(probs, p_cf) if cfg.calibrate else probs
    else:
        # The same k-shot examples for every query, ordered so that the most similar come last,
        # nearest to it.
        enc = Embedder.load("minilm", normalize=True, max_length=cfg.max_length or 256, cpu=cfg.cpu)
        sims = enc.embed(test_texts, cfg.batch_size) @ enc.embed(texts, cfg.batch_size).T
        probs = np.empty((len(test_texts), len(names)))
        for i, q in enumerate(queries):
            order = np.argsort(sims[i], kind="stable")
            prefix, _ = prefix_and_template(
                [texts[j] for j in order], [example_labels[j] for j in order]
            )
            p = softmax(scorer.score([q], lab_ids, prefix, 1))
            if cfg.calibrate:
                p = calibrate(
                    p,
                    softmax(scorer.score(cf_queries, lab_ids, prefix, len(cf_queries))).mean(
                        0, keepdims=True
                    ),
                )
            probs[i] = p[0]
    return probs.argmax(1), {
        "predict_seconds": round(time.perf_counter() - t, 2),
        "prompt_tokens": prompt_tokens,
    }
