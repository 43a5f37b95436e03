"""The few-shot learners: SetFit-style contrastive fine-tuning, prompt scores calibrated on the examples,
and in-context examples in a prompt.

Each sees exactly k labelled texts per class (``sample_k``), drawn with a seed.
"""

from __future__ import annotations

import numpy as np
import torch

from warmstart.errors import UserError


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
            raise UserError(f"class '{name}' has {len(rows)} examples in the training data, fewer than --k {k}")
        picked.append(rng.choice(rows, size=k, replace=False))
    out = np.concatenate(picked)
    return out[rng.permutation(len(out))]


# --- SetFit-style: contrastive pairs, then a logistic head -------------------------------------------

def contrastive_pairs(y: np.ndarray, per_example: int, seed: int) -> list[tuple[int, int, float]]:
    """For every example, ``per_example`` pairs: half with a same-class partner (target 1), half with another
    class (target 0), as in SetFit. Indices are into ``y``."""
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


def setfit_train(embedder, texts: list[str], y: np.ndarray, per_example: int, epochs: float, lr: float,
                 batch_size: int, seed: int, progress: bool = False) -> float:
    """Fine-tune ``embedder.model`` so that cos(u, v) matches 1 for same-class pairs and 0 otherwise
    (SetFit's CosineSimilarityLoss). Returns the last epoch's mean loss."""
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

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
    with tqdm(total=total, desc="setfit", unit="step", disable=not progress, leave=False) as bar:
        while step < total:
            order = rng.permutation(len(pairs))
            losses = []
            for start in range(0, len(order), batch_size):
                if step >= total:
                    break
                chunk = [pairs[i] for i in order[start:start + batch_size]]
                # Both sides of every pair in one padded batch: half the passes of encoding them separately.
                rows = [a for a, _, _ in chunk] + [b for _, b, _ in chunk]
                batch = embedder.collate([{k: v[r] for k, v in enc.features.items()} for r in rows])
                batch = {k: v.to(embedder.device) for k, v in batch.items()}
                z = embedder.forward(batch)
                u, v = z[: len(chunk)], z[len(chunk):]
                target = torch.tensor([t for _, _, t in chunk], device=z.device)
                loss = torch.nn.functional.mse_loss(torch.nn.functional.cosine_similarity(u, v), target)
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


# --- Prompt scores calibrated on the examples -------------------------------------------------------------

def score_features(probs: np.ndarray | list[np.ndarray]) -> np.ndarray:
    """Label probabilities -> log-odds against the first label (K-1 features; one for two labels). A list of
    (n, K) arrays, one per scorer (the prompt, the similarity method), gives their features side by side."""
    parts = [probs] if isinstance(probs, np.ndarray) else probs
    logp = [np.log(np.clip(p, 1e-12, None)) for p in parts]
    return np.concatenate([lp[:, 1:] - lp[:, :1] for lp in logp], axis=1)


def score_head(probs: np.ndarray | list[np.ndarray], y: np.ndarray, seed: int):
    """A logistic regression on the label log-odds, fitted on the k examples per class: it learns the prompt's
    bias (the intercept) and how far to trust its scores (the slope) from labelled texts, where content-free
    calibration can only guess the bias from inputs like "N/A"; with several scorers, how to weigh them."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, random_state=seed).fit(score_features(probs), y)


# --- In-context examples -------------------------------------------------------------------------------

def incontext_prefix(scorer, template: str, texts: list[str], labels: list[str], example_tokens: int,
                     verbalise) -> list[int]:
    """The examples as one token prefix: each shown with ``template`` and followed by its label."""
    ids: list[int] = []
    for text, label in zip(texts, labels):
        ids += scorer.prompt_ids(template, text, example_tokens) + scorer.ids(verbalise([label])[0] + "\n\n")
    return ids


def chat_incontext(lm, scorer, template: str, texts: list[str], labels: list[str], example_tokens: int,
                   answer_prefix: str) -> tuple[list[int], str]:
    """The examples as earlier turns of a chat (user: the template with the text; assistant: the answer),
    and the template of the final turn that every query goes into. Returns (prefix ids, query template)."""
    if not getattr(lm.tokenizer, "chat_template", None):
        raise UserError(f"model '{lm.name}' has no chat template, so --chat cannot be used with it")
    before, after = template.split("{text}")
    history = []
    for text, label in zip(texts, labels):
        cut = lm.tokenizer.decode(scorer.cut(scorer.ids(text), example_tokens))
        history += [{"role": "user", "content": before + cut + after},
                    {"role": "assistant", "content": f"{answer_prefix} {label}."}]
    prefix = lm.tokenizer.apply_chat_template(history, tokenize=False) if history else ""
    full = lm.tokenizer.apply_chat_template(history + [{"role": "user", "content": template}], tokenize=False,
                                            add_generation_prompt=True)
    if not full.startswith(prefix):  # only templates that append turns can share a cached prefix
        raise UserError(f"the chat template of '{lm.name}' rewrites earlier turns, so in-context examples "
                        "cannot be cached as a prefix; use --no-chat")
    return scorer.ids(prefix), full[len(prefix):] + answer_prefix
