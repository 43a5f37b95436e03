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

from warmstart.config import (
    FewshotConfig,
    absolute_paths,
    make,
    refuse_inapplicable,
    settle,
    to_dict,
)
from warmstart.data.tables import LabelMap, read_examples
from warmstart.errors import UserError
from warmstart.lowshot.fewshot import PromptScores, incontext_repeat, sample_k, setfit_repeat
from warmstart.lowshot.zeroshot import load_method, parse_descriptions
from warmstart.metrics import classification_metrics
from warmstart.models.download import pin
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


# The options that only some methods read: any other method refuses them rather than silently
# ignoring them.
METHOD_OPTIONS = {
    "select": ("incontext",),
    "example_max_length": ("incontext",),
    "template": ("incontext", "prompt"),
    "calibrate": ("incontext", "prompt"),
    "chat": ("incontext", "prompt"),
    "answer_prefix": ("incontext", "prompt"),
    "truncate": ("incontext", "prompt"),
    "descriptions": ("prompt",),
    "pairs_per_example": ("setfit",),
    "epochs": ("setfit",),
    "lr": ("setfit",),
}


def fewshot(config: FewshotConfig | None = None, **kwargs) -> FewshotResult:
    """Classify with a handful of labelled examples per class (SetFit-style contrastive tuning, a
    probe on embeddings, or prompting) and report the test score."""
    t0 = time.time()
    cfg = absolute_paths(make(FewshotConfig, config, kwargs), "data", "test", "model")
    if not cfg.data or not cfg.test:
        raise UserError(
            "few-shot needs --data (where the k examples per class come from) and --test"
        )
    refuse_inapplicable(
        cfg,
        tuple(n for n, methods in METHOD_OPTIONS.items() if cfg.method not in methods),
        f"--method {cfg.method}",
    )
    pool = read_examples(cfg.data, cfg.text_column, label_column=cfg.label_column, limit=cfg.limit)
    test = read_examples(cfg.test, cfg.text_column, label_column=cfg.label_column, limit=cfg.limit)
    names = [n.strip() for n in cfg.labels.split(",")] if cfg.labels else None
    labels = LabelMap.from_examples(pool, names)
    y_pool, y_test = labels.encode(pool), labels.encode(test)
    draws = [
        sample_k(y_pool, cfg.k, cfg.seed + r, labels.names) for r in range(cfg.repeats)
    ]  # fail early
    descriptions = parse_descriptions(
        cfg.descriptions, labels.names
    )  # a bad one fails before any output
    # A Hugging Face --model is fetched now if it must be and pinned to one commit for the run.
    cfg = settle(cfg, pin(cfg))
    run = Run(cfg.out)
    prepare_run_folder(run, to_dict(cfg), resume=False, overwrite=cfg.overwrite)
    run.write_config({k: v for k, v in to_dict(cfg).items() if k != "overwrite"})
    model = cfg.model or DEFAULT_MODELS[cfg.method]
    method = prompt_scores = None
    if cfg.method == "prompt":
        # Calibrated on content-free inputs first (--calibrate), so a head shrunk by regularisation
        # still starts from unbiased scores.
        method = load_method(
            "prompt",
            model,
            template=cfg.template,
            cpu=cfg.cpu,
            max_length=cfg.max_length or 256,
            calibrate=cfg.calibrate,
            chat=cfg.chat,
            answer_prefix=cfg.answer_prefix,
            truncate=cfg.truncate,
            hub=cfg,
        )
        prompt_scores = PromptScores(cfg, method, labels.names, test.texts, descriptions)
    if cfg.method == "incontext":
        template = cfg.template or (DEFAULT_CHAT_TEMPLATE if cfg.chat else DEFAULT_EXAMPLE_TEMPLATE)
        method = load_method(
            "prompt",
            model,
            template=template,
            cpu=cfg.cpu,
            max_length=cfg.max_length or 256,
            calibrate=cfg.calibrate,
            truncate=cfg.truncate,
            hub=cfg,
        )
    repeats = []
    for r, idx in enumerate(draws):
        texts, y = [pool.texts[i] for i in idx], y_pool[idx]
        t = time.perf_counter()
        if cfg.method == "setfit":
            pred, extra = setfit_repeat(cfg, model, texts, y, test.texts, labels.names)
        elif prompt_scores is not None:
            pred, extra = prompt_scores.repeat([int(i) for i in idx], texts, y)
        else:
            pred, extra = incontext_repeat(cfg, method, texts, y, test.texts, labels.names)
        seconds = time.perf_counter() - t
        m = classification_metrics(y_test, pred, labels.names)
        m.update(
            seed=cfg.seed + r,
            example_rows=[pool.rows[i] for i in idx],
            seconds=round(seconds, 2),
            test_texts_per_s=round(len(test) / max(extra["predict_seconds"], 1e-9), 2),
            **extra,
        )
        repeats.append(m)
        run.say(
            f"repeat {r + 1}/{cfg.repeats} (seed {cfg.seed + r}): accuracy {m['accuracy']:.4f}, "
            f"macro F1 {m['f1_macro']:.4f} ({seconds:.0f}s)"
        )
    acc = np.array([m["accuracy"] for m in repeats])
    f1 = np.array([m["f1_macro"] for m in repeats])
    metrics = {
        "method": cfg.method,
        "model": model,
        "k": cfg.k,
        "shots": cfg.k * len(labels.names),
        "labels": labels.names,
        "test_rows": len(test),
        "repeats": repeats,
        "accuracy_mean": round(float(acc.mean()), 6),
        "accuracy_std": round(float(acc.std()), 6),
        "f1_macro_mean": round(float(f1.mean()), 6),
        "f1_macro_std": round(float(f1.std()), 6),
        "total_seconds": round(time.time() - t0, 2),
    }
    if prompt_scores is not None:
        # The same prompt with no examples (content-free calibration only): what the k examples add.
        alone = [round(float((p.argmax(1) == y_test).mean()), 6) for p in prompt_scores.test]
        metrics["zero_shot_accuracy"] = alone[0]
        if len(alone) > 1:
            metrics["similarity_zero_shot_accuracy"] = alone[1]
    run.write_metrics(metrics)
    run.say(
        f"{cfg.method}, {cfg.k} per class: accuracy {acc.mean():.4f} ± {acc.std():.4f} over"
        f" {cfg.repeats} draw(s) of examples; macro F1 {f1.mean():.4f}; run folder {run.dir}"
    )
    return FewshotResult(run.dir, metrics)


def report(cfg: FewshotConfig, r: FewshotResult) -> str:
    m = r.metrics
    return (
        f"{m['method']}, {m['k']} per class: accuracy {m['accuracy_mean']:.4f} ±"
        f" {m['accuracy_std']:.4f} over {len(m['repeats'])} draw(s); run folder {r.run_dir}\n"
    )
