"""`warmstart fewshot`: learn a classifier from k labelled texts per class, and evaluate it.

    setfit      contrastive fine-tuning of the sentence encoder on pairs of the k-shot examples, then a
                logistic-regression head on its embeddings (SetFit, Tunstall et al. 2022; our own code)
    prompt      `zeroshot --method prompt` (a causal LM scores each label after the prompt), with a logistic
                regression on the label log-odds fitted on the k examples: the examples calibrate the prompt
    incontext   the examples placed in a causal LM's prompt before each test text (GPT-3 style), the
                labels scored and calibrated as in `zeroshot --method prompt`

--repeats R draws the k examples R times (seeds seed, seed+1, ...) and reports mean ± std; the run
folder holds config.yaml and metrics.json (every repeat's metrics, then the summary).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from warmstart.config import FewshotConfig, absolute_paths, make, to_dict
from warmstart.data import LabelMap, read_examples
from warmstart.errors import UserError
from warmstart.fewshot_methods import (
    chat_incontext,
    incontext_prefix,
    logistic_head,
    sample_k,
    score_features,
    score_head,
    setfit_train,
)
from warmstart.metrics import classification_metrics
from warmstart.runs import Run, prepare_run_folder

DEFAULT_MODELS = {"setfit": "minilm", "incontext": "smollm2", "prompt": "smollm2"}
DEFAULT_EXAMPLE_TEMPLATE = "Review: {text}\nSentiment:"
DEFAULT_CHAT_TEMPLATE = "{text}\n\nWhich label fits the text above?"


@dataclass
class FewshotResult:
    run_dir: Path
    metrics: dict

    @property
    def accuracy(self) -> float:
        return self.metrics["accuracy_mean"]


def _setfit_repeat(cfg: FewshotConfig, model: str, texts: list[str], y: np.ndarray, test_texts: list[str],
                   names: list[str]) -> tuple[np.ndarray, dict]:
    from warmstart.features import Embedder

    # A fresh copy of the encoder every repeat: each draw of examples starts from the pre-trained weights.
    # Unit vectors, as SetFit's sentence-transformers body gives them (all-MiniLM-L6-v2 ends in a Normalize
    # module): the head then sees only directions, which is what the cosine loss trained.
    emb = Embedder.load(model, max_length=cfg.max_length or 256, cpu=cfg.cpu, attention_dropout=0.0,
                        normalize=True)
    t = time.perf_counter()
    loss = setfit_train(emb, texts, y, cfg.pairs_per_example, cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed,
                        cfg.progress)
    train_seconds = time.perf_counter() - t
    head = logistic_head(emb.embed(texts, cfg.batch_size), y, cfg.seed)
    t = time.perf_counter()
    pred = head.predict(emb.embed(test_texts, cfg.batch_size, cfg.progress))
    return pred, {"train_seconds": round(train_seconds, 2), "final_pair_loss": round(loss, 5),
                  "predict_seconds": round(time.perf_counter() - t, 2)}


class _PromptScores:
    """`fewshot --method prompt`: label probabilities of every test text (computed once, whatever the number
    of draws) and of the drawn examples (each pool row once), then one logistic head per draw. With
    --descriptions, the MiniLM similarity to the label descriptions is a second score beside the prompt's."""

    def __init__(self, cfg: FewshotConfig, method, names: list[str], test_texts: list[str],
                 descriptions: dict[str, list[str]]):
        from warmstart.zeroshot_methods import load_method

        self.cfg, self.method, self.names = cfg, method, names
        self.similarity = (load_method("similarity", None, cpu=cfg.cpu, max_length=cfg.max_length or 256,
                                       descriptions=descriptions) if descriptions else None)
        t = time.perf_counter()
        self.test = self.scores(test_texts, cfg.progress)
        self.test_seconds = time.perf_counter() - t
        self.pool: dict[int, list[np.ndarray]] = {}

    def scores(self, texts: list[str], progress: bool = False) -> list[np.ndarray]:
        """Label probabilities of ``texts``: the prompt's, then (with descriptions) the similarity method's."""
        out = [self.method.label_probabilities(texts, self.names, None, self.cfg.batch_size, progress)]
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
        return head.predict(score_features(self.test)), {"predict_seconds": round(self.test_seconds, 2)}


def _incontext_repeat(cfg: FewshotConfig, method, texts: list[str], y: np.ndarray, test_texts: list[str],
                      names: list[str]) -> tuple[np.ndarray, dict]:
    from warmstart.prompting import CONTENT_FREE, calibrate, normalise

    scorer, template = method.scorer, method.template
    lab_ids = scorer.label_ids(method.verbalise(names))
    example_labels = [names[i] for i in y]

    def prefix_and_template(ex_texts: list[str], ex_labels: list[str]) -> tuple[list[int], str]:
        if cfg.chat:
            return chat_incontext(method.lm, scorer, template, ex_texts, ex_labels, cfg.example_max_length,
                                  cfg.answer_prefix)
        return incontext_prefix(scorer, template, ex_texts, ex_labels, cfg.example_max_length,
                                method.verbalise), template

    t = time.perf_counter()
    prefix, query_template = prefix_and_template(texts, example_labels)
    prompt_tokens = len(prefix)
    queries = [scorer.prompt_ids(query_template, q) for q in test_texts]
    cf_queries = [scorer.prompt_ids(query_template, q) for q in CONTENT_FREE]
    if cfg.select == "random":
        # One prefix for every query: its key/value cache is computed once (prompting.PromptScorer).
        probs = normalise(scorer.score(queries, lab_ids, prefix, cfg.batch_size, cfg.progress))
        p_cf = normalise(scorer.score(cf_queries, lab_ids, prefix, cfg.batch_size)).mean(0, keepdims=True)
        probs = calibrate(probs, p_cf) if cfg.calibrate else probs
    else:
        # The same k-shot examples for every query, ordered so that the most similar come last, nearest to it.
        from warmstart.features import Embedder

        enc = Embedder.load("minilm", normalize=True, max_length=cfg.max_length or 256, cpu=cfg.cpu)
        sims = enc.embed(test_texts, cfg.batch_size) @ enc.embed(texts, cfg.batch_size).T
        probs = np.empty((len(test_texts), len(names)))
        for i, q in enumerate(queries):
            order = np.argsort(sims[i], kind="stable")
            prefix, _ = prefix_and_template([texts[j] for j in order], [example_labels[j] for j in order])
            p = normalise(scorer.score([q], lab_ids, prefix, 1))
            if cfg.calibrate:
                p = calibrate(p, normalise(scorer.score(cf_queries, lab_ids, prefix, len(cf_queries))).mean(
                    0, keepdims=True))
            probs[i] = p[0]
    return probs.argmax(1), {"predict_seconds": round(time.perf_counter() - t, 2),
                             "prompt_tokens": prompt_tokens}


def fewshot(config: FewshotConfig | None = None, **kwargs) -> FewshotResult:
    t0 = time.time()
    cfg = absolute_paths(make(FewshotConfig, config, kwargs), "data", "test", "model")
    if not cfg.data or not cfg.test:
        raise UserError("few-shot needs --data (where the k examples per class come from) and --test")
    if cfg.repeats < 1:
        raise UserError("--repeats must be at least 1")
    pool = read_examples(cfg.data, cfg.text_column, label_column=cfg.label_column, limit=cfg.limit)
    test = read_examples(cfg.test, cfg.text_column, label_column=cfg.label_column, limit=cfg.limit)
    names = [n.strip() for n in cfg.labels.split(",")] if cfg.labels else None
    labels = LabelMap.from_examples(pool, names)
    y_pool, y_test = labels.encode(pool), labels.encode(test)
    draws = [sample_k(y_pool, cfg.k, cfg.seed + r, labels.names) for r in range(cfg.repeats)]  # fail early
    if cfg.descriptions and cfg.method != "prompt":
        raise UserError("--descriptions is for --method prompt (the similarity score beside the prompt's)")
    from warmstart.tasks.zeroshot import parse_descriptions

    descriptions = parse_descriptions(cfg.descriptions, labels.names)  # a bad one fails before any output
    run = Run(cfg.out)
    prepare_run_folder(run, to_dict(cfg), resume=False, overwrite=cfg.overwrite)
    run.write_config({k: v for k, v in to_dict(cfg).items() if k != "overwrite"})
    model = cfg.model or DEFAULT_MODELS[cfg.method]
    method = prompt_scores = None
    if cfg.method == "prompt":
        from warmstart.zeroshot_methods import load_method

        # Calibrated on content-free inputs first (--calibrate), so a head shrunk by regularisation still
        # starts from unbiased scores.
        method = load_method("prompt", model, template=cfg.template, cpu=cfg.cpu, max_length=cfg.max_length or 256,
                             calibrate=cfg.calibrate, chat=cfg.chat, answer_prefix=cfg.answer_prefix,
                             truncate=cfg.truncate)
        prompt_scores = _PromptScores(cfg, method, labels.names, test.texts, descriptions)
    if cfg.method == "incontext":
        from warmstart.zeroshot_methods import load_method

        template = cfg.template or (DEFAULT_CHAT_TEMPLATE if cfg.chat else DEFAULT_EXAMPLE_TEMPLATE)
        method = load_method("prompt", model, template=template, cpu=cfg.cpu,
                             max_length=cfg.max_length or 256, calibrate=cfg.calibrate, truncate=cfg.truncate)
    repeats = []
    for r, idx in enumerate(draws):
        texts, y = [pool.texts[i] for i in idx], y_pool[idx]
        t = time.perf_counter()
        if cfg.method == "setfit":
            pred, extra = _setfit_repeat(cfg, model, texts, y, test.texts, labels.names)
        elif prompt_scores is not None:
            pred, extra = prompt_scores.repeat([int(i) for i in idx], texts, y)
        else:
            pred, extra = _incontext_repeat(cfg, method, texts, y, test.texts, labels.names)
        seconds = time.perf_counter() - t
        m = classification_metrics(y_test, pred, labels.names)
        m.update(seed=cfg.seed + r, example_rows=[pool.rows[i] for i in idx], seconds=round(seconds, 2),
                 test_texts_per_s=round(len(test) / max(extra["predict_seconds"], 1e-9), 2), **extra)
        repeats.append(m)
        run.say(f"repeat {r + 1}/{cfg.repeats} (seed {cfg.seed + r}): accuracy {m['accuracy']:.4f}, "
                f"macro F1 {m['f1_macro']:.4f} ({seconds:.0f}s)")
    acc = np.array([m["accuracy"] for m in repeats])
    f1 = np.array([m["f1_macro"] for m in repeats])
    metrics = {"method": cfg.method, "model": model, "k": cfg.k, "shots": cfg.k * len(labels.names),
               "labels": labels.names, "test_rows": len(test), "repeats": repeats,
               "accuracy_mean": round(float(acc.mean()), 6), "accuracy_std": round(float(acc.std()), 6),
               "f1_macro_mean": round(float(f1.mean()), 6), "f1_macro_std": round(float(f1.std()), 6),
               "total_seconds": round(time.time() - t0, 2)}
    if prompt_scores is not None:
        # The same prompt with no examples (content-free calibration only): what the k examples add.
        alone = [round(float((p.argmax(1) == y_test).mean()), 6) for p in prompt_scores.test]
        metrics["zero_shot_accuracy"] = alone[0]
        if len(alone) > 1:
            metrics["similarity_zero_shot_accuracy"] = alone[1]
    run.write_metrics(metrics)
    run.say(f"{cfg.method}, {cfg.k} per class: accuracy {acc.mean():.4f} ± {acc.std():.4f} over {cfg.repeats} "
            f"draw(s) of examples; macro F1 {f1.mean():.4f}; run folder {run.dir}")
    return FewshotResult(run.dir, metrics)
