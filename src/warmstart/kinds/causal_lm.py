"""Causal-LM instruction tuning: a decoder-only model learns to write each pair's target after a
prompt made of its source (a --template, optionally inside the chat template), or the assistant's
turns of multi-turn conversations (data.conversations: a messages or ShareGPT conversations column,
or HH transcripts), rendered with the chat template, the loss on every assistant turn (or the last,
--train-on last); a conversation too long for --max-length loses whole exchanges from its start.

A row is the prompt's tokens, then the target's and EOS; the labels are -100 on the prompt (and on
padding), so the loss is on the completion alone. The prompt is tokenised exactly as `generate` and
`serve` tokenise a user's prompt for the saved model (models.causal.instruction_ids, with the
template and chat saved in its config), so what was trained is what is asked. Each epoch the valid
sources are completed greedily with an explicit token budget and scored as text
(metrics.text_metrics)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from warmstart import distributed
from warmstart.config import (
    Choice,
    EvaluateConfig,
    FinetuneConfig,
    PredictConfig,
    refuse_inapplicable,
)
from warmstart.data.batching import IGNORE, Encoded, pad_multiple
from warmstart.data.conversations import (
    ChatRenderer,
    Conversations,
    chat_template_of,
    has_conversations,
    read_conversations,
)
from warmstart.data.pairs import Pairs, read_pairs
from warmstart.data.tables import load_splits
from warmstart.errors import UserError
from warmstart.files import atomic_write_text
from warmstart.inference.decoding import complete_texts
from warmstart.inference.preferences import (
    evaluate_preferences,
    format_preferences,
    preference_data,
)
from warmstart.inference.seq2seq import InstructionWriter, instruction_tuned
from warmstart.kinds.base import ModelKind
from warmstart.kinds.texts import TextToTextKind, score_texts
from warmstart.metrics import TEXT_METRICS, text_metrics
from warmstart.models import (
    dropout_of,
    ensure_pad_token,
    is_causal,
    load_config,
    load_options,
    load_tokenizer,
    resolve,
    set_dropout,
)
from warmstart.models.causal import CausalLM, instruction_ids
from warmstart.models.token_logprobs import Labelled, labelled_forward
from warmstart.runs import Run
from warmstart.training.common import Job, smoothed_loss

# Options of other kinds, refused here with one line rather than ignored.
OTHER_KINDS = (
    "text_column",
    "text_pair_column",
    "label_column",
    "label_names",
    "problem",
    "label_separator",
    "class_weights",
    "sampler",
    "long_text",
    "stride",
    "chunk_aggregation",
    "tag_column",
    "base_tags",
    "label_all_subtokens",
    "head_lr",
    "from_scratch",
    "tokenizer",
    "size",
    "vocab_size",
)


def pad_rows(
    rows: list[dict], pad_id: int, packed: bool, multiple: int | None = 8
) -> dict[str, torch.Tensor]:
    """Right-padded tensors (to a ``multiple``): input ids with ``pad_id``, labels with -100. A
    packed batch has position ids restarting per example and no attention mask: transformers then
    reads the examples' bounds from the positions and keeps attention inside each example
    (masking_utils.find_packed_sequence_indices)."""
    width = -(-max(len(r["input_ids"]) for r in rows) // (multiple or 1)) * (multiple or 1)
    out = {
        "input_ids": torch.full((len(rows), width), pad_id),
        "labels": torch.full((len(rows), width), IGNORE),
    }
    if packed:
        # Padding continues as one more "example" of its own (positions from 0): no real token
        # attends to it.
        out["position_ids"] = torch.zeros((len(rows), width), dtype=torch.long)
    else:
        out["attention_mask"] = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        out["input_ids"][i, :n] = torch.tensor(r["input_ids"])
        out["labels"][i, :n] = torch.tensor(r["labels"])
        if packed:
            out["position_ids"][i, :n] = torch.tensor(r["position_ids"])
            out["position_ids"][i, n:] = torch.arange(width - n)
        else:
            out["attention_mask"][i, :n] = 1
    return out


def pack(
    input_ids: list[list[int]], labels: list[list[int]], length: int
) -> dict[str, list[list[int]]]:
    """Examples in order, as many as fit, into rows of at most ``length`` tokens, with their own
    positions."""
    rows: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
    for ids, lab in zip(input_ids, labels):
        if not rows["input_ids"] or len(rows["input_ids"][-1]) + len(ids) > length:
            for v in rows.values():
                v.append([])
        rows["input_ids"][-1].extend(ids)
        rows["labels"][-1].extend(lab)
        rows["position_ids"][-1].extend(range(len(ids)))
    return rows


class CausalLMTuning(TextToTextKind):
    task = "causal-lm"
    reads = {
        "causal-lm": ModelKind(
            "a causal language model", ("generate", "embed", "zeroshot"), zeroshot="prompt"
        )
    }

    def __init__(self, cfg: FinetuneConfig):
        refuse_inapplicable(
            cfg, OTHER_KINDS, "--task causal-lm (it reads --source-column and --target-column)"
        )
        refuse_inapplicable(
            cfg, ("loss", "beta", "precompute_reference"), "--task causal-lm (they are for dpo)"
        )
        # An encoder cannot continue a prompt: said before the data is read or a run folder written.
        config = load_config(resolve(cfg.model, hub=cfg))
        if not is_causal(config):
            arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
            raise UserError(
                f"model '{cfg.model}' is a {arch}, not a causal language model; --task causal-lm"
                " needs a decoder-only model (smollm2, GPT-2, Llama, Qwen...); for an"
                " encoder-decoder use --task seq2seq"
            )
        self.conversational = conversational(cfg)
        if self.conversational:
            # --template names the chat template here: a model without one is refused before any
            # work.
            ChatRenderer(load_tokenizer(resolve(cfg.model, hub=cfg)), cfg.model, cfg.template)
        elif cfg.train_on != "all":
            raise UserError("--train-on is for conversations (a messages or conversations column)")
        if cfg.system is not None and not (cfg.chat or self.conversational):
            raise UserError("--system is the system message of the chat template: it needs --chat")
        self.template = (
            "{source}"
            if self.conversational
            else cfg.template
            if cfg.template is not None
            else ("{source}" if cfg.chat else "{source}\n")
        )
        if "{source}" not in self.template:
            raise UserError(
                f"--template '{cfg.template}' has no {{source}}: it must say where the source text"
                " goes"
            )
        self.names = [n.strip() for n in cfg.metrics.split(",") if n.strip()]
        unknown = [n for n in self.names if n not in TEXT_METRICS]
        if unknown or not self.names:
            raise UserError(
                f"--metrics: unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from "
                f"{', '.join(TEXT_METRICS)}"
            )
        best = cfg.metric_for_best or ("chrf" if "chrf" in self.names else self.names[0])
        if best not in ("loss", *self.names):
            raise UserError(
                f"--metric-for-best {best} is not among --metrics ({', '.join(self.names)}) or loss"
            )
        self.best = best
        self.parts: dict[str, Pairs | Conversations] = load_splits(
            cfg,
            read=(lambda path, limit: read_conversations(path, cfg.conversation_column, limit))
            if self.conversational
            else (
                lambda path, limit: read_pairs(path, cfg.source_column, cfg.target_column, limit)
            ),
        )
        self.chat = bool(cfg.chat or self.conversational)
        self.dropped: dict[str, int] = {}  # conversations that lost exchanges from their start
        # LoRA trains far fewer weights and takes a larger step (the peft recipes' 1e-4..1e-3).
        self.cfg = cfg
        self.prompts: dict[str, list[list[int]]] = {}
        self.cut: dict[str, int] = {}  # pairs whose completion is cut at --max-length
        self.too_long: dict[str, int] = {}  # pairs whose prompt alone fills --max-length
        self.packed_rows: int | None = None
        self.max_new_tokens = cfg.max_new_tokens
        self.model: torch.nn.Module | None = None
        self.gen_tokenizer = None

    def choices(self, cfg: FinetuneConfig) -> dict[str, Choice]:
        made = {
            "metric_for_best": Choice(
                self.best, "chrF where it is measured, else the first metric"
            ),
            # LoRA trains far fewer weights and takes a larger step (the peft recipes' 1e-4..1e-3).
            "lr": Choice(2e-4, "LoRA's rate (the peft recipes' 1e-4..1e-3)")
            if cfg.lora_r
            else Choice(5e-5, "full fine-tuning's rate"),
            "epochs": Choice(3.0, "instruction tuning's default"),
        }
        return {k: c for k, c in made.items() if getattr(cfg, k) is None}

    def describe(self) -> str:
        how = f"template {self.template!r}" + (" in the chat template" if self.cfg.chat else "")
        if self.conversational:
            how = (
                "conversations in the chat template; loss on "
                + ("the last assistant turn" if self.cfg.train_on == "last" else "assistant turns")
                + "".join(
                    f"; {r} {n} cut at turn boundaries to fit --max-length"
                    for r, n in self.dropped.items()
                    if n
                )
            )
        cut = (
            f"; cut at --max-length: {', '.join(f'{r} {n}' for r, n in self.cut.items() if n)}"
            if any(self.cut.values())
            else ""
        )
        if any(self.too_long.values()):
            cut += "; prompts of --max-length or more, left out of the loss: " + ", ".join(
                f"{r} {n}" for r, n in self.too_long.items() if n
            )
        packed = f"; packed into {self.packed_rows} rows" if self.packed_rows is not None else ""
        return (
            f"causal-LM instruction tuning ({how})"
            + ("" if self.conversational else "; loss on the completion only")
            + "; generating up to "
            f"{self.max_new_tokens} new tokens to score {', '.join(self.names)}{packed}{cut}"
        )

    def load_model(self, path: str, cfg: FinetuneConfig) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        config = load_config(path)
        set_dropout(config, dropout_of(cfg))
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=torch.float32, **load_options(path)
        )
        # Generation in evaluation reads prompts left-padded; training pads on the right (pad_rows).
        self.gen_tokenizer = load_tokenizer(path)
        if self.conversational and cfg.template is not None:
            self.gen_tokenizer.chat_template = chat_template_of(cfg.template)
        self.gen_tokenizer.padding_side = "left"
        ensure_pad_token(self.gen_tokenizer)
        # Training keeps no key/value cache (generate asks for one itself); without one,
        # transformers also reads a packed row's examples from its positions.
        model.config.use_cache = False
        self.model = (
            model  # LoRA injects its layers into this same module, so it generates with them
        )
        return model

    def encode(
        self, tokenizer, role: str, max_length: int, cfg: FinetuneConfig | None = None
    ) -> Encoded:
        ensure_pad_token(tokenizer)
        if tokenizer.eos_token_id is None:
            raise UserError(
                "the model's tokenizer has no end-of-sequence token, so a completion cannot be"
                " ended"
            )
        part = self.parts[role]
        if isinstance(part, Conversations):
            return self.encode_conversations(tokenizer, role, max_length, cfg)
        chat = bool(cfg and cfg.chat)
        system = cfg.system if cfg else None
        prompts = [instruction_ids(tokenizer, s, self.template, chat, system) for s in part.sources]
        completions = [
            tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            for t in part.targets
        ]
        # Generation keeps the prompt's end (where the completion starts), within the window.
        self.prompts[role] = [p[-(max_length - 1) :] for p in prompts]
        ids, labels, cut, first_long = [], [], 0, None
        for i, (p, c) in enumerate(zip(prompts, completions)):
            if (
                len(p) >= max_length
            ):  # no completion token would fit: left out of the loss (and said)
                first_long = i if first_long is None else first_long
                continue
            cut += len(p) + len(c) > max_length
            ids.append((p + c)[:max_length])
            labels.append(([IGNORE] * len(p) + c)[:max_length])
        self.cut[role], self.too_long[role] = cut, len(prompts) - len(ids)
        if not ids and first_long is not None:
            raise UserError(
                f"{part.where(first_long)}: the prompt is {len(prompts[first_long])} tokens, not"
                f" shorter than --max-length {max_length}, and so is every {role} prompt; raise"
                " --max-length"
            )
        if role == "train" and self.max_new_tokens is None:
            # Room for the longest training completion and half as much again: a longer valid target
            # is cut, never at generate's default of 20 tokens.
            self.max_new_tokens = math.ceil(1.5 * max(len(c) for c in completions))
        if role == "train" and cfg is not None and cfg.packing:
            rows = pack(ids, labels, max_length)
            self.packed_rows = len(rows["input_ids"])
            return Encoded(rows)
        return Encoded({"input_ids": ids, "labels": labels})

    def encode_conversations(
        self, tokenizer, role: str, max_length: int, cfg: FinetuneConfig
    ) -> Encoded:
        """Each conversation rendered with the chat template, the loss on its assistant turns; too
        long ones lose exchanges from the start (counted); one whose last exchange alone fills
        --max-length before its reply starts is left out (counted)."""
        renderer = ChatRenderer(tokenizer, cfg.model, cfg.template)
        part = self.parts[role]
        ids, labels, cut, dropped = [], [], 0, 0
        prompts, replies = [], []
        for messages in part.messages:
            messages = with_system(messages, cfg.system)
            r = renderer.fit(messages, max_length, cfg.train_on)
            prompts.append(renderer.prompt_ids(messages[:-1])[-(max_length - 1) :])
            replies.append(
                len(tokenizer(messages[-1]["content"], add_special_tokens=False)["input_ids"]) + 1
            )
            if all(x == IGNORE for x in r.labels):
                continue
            cut += r.cut
            dropped += r.dropped_turns > 0
            ids.append(r.ids)
            labels.append(r.labels)
        self.prompts[role] = prompts
        self.cut[role], self.too_long[role], self.dropped[role] = (
            cut,
            len(prompts) - len(ids),
            dropped,
        )
        if not ids:
            raise UserError(
                f"{part.where(0)}: every {role} conversation is longer than --max-length"
                f" {max_length} before its last reply starts; raise --max-length"
            )
        if role == "train" and self.max_new_tokens is None:
            self.max_new_tokens = math.ceil(1.5 * max(replies))
        if role == "train" and cfg.packing:
            rows = pack(ids, labels, max_length)
            self.packed_rows = len(rows["input_ids"])
            return Encoded(rows)
        return Encoded({"input_ids": ids, "labels": labels})

    def sources(self, role: str) -> list:
        part = self.parts[role]
        return [m[:-1] for m in part.messages] if isinstance(part, Conversations) else part.sources

    def targets(self, role: str) -> list[str]:
        part = self.parts[role]
        if isinstance(part, Conversations):
            return [m[-1]["content"] for m in part.messages]
        return part.targets

    def generate(
        self, model: torch.nn.Module, role: str, n: int | None, batch_size: int, progress: bool
    ) -> list[str]:
        lm = CausalLM("valid", "", model, self.gen_tokenizer, None)
        ids = self.prompts[role][:n] if n else self.prompts[role]
        was_training = model.training
        model.eval()
        texts = complete_texts(
            lm, ids, self.max_new_tokens, batch_size, self.cfg.num_beams, progress
        )
        model.train(was_training)
        return texts

    def score(self, role: str, predictions: list[str], folder: Path | None, name: str) -> dict:
        refs = self.targets(role)[: len(predictions)]
        metrics = text_metrics(predictions, refs, self.names)
        self.write_predictions(role, predictions, folder, name)
        return metrics

    def write_predictions(
        self, role: str, predictions: list[str], folder: Path | None, name: str
    ) -> None:
        refs = self.targets(role)[: len(predictions)]
        if folder is not None and distributed.is_main():
            atomic_write_text(
                folder / name,
                "".join(
                    json.dumps({"source": s, "reference": r, "prediction": p}, ensure_ascii=False)
                    + "\n"
                    for s, r, p in zip(self.sources(role), refs, predictions)
                ),
            )

    def job(self, cfg: FinetuneConfig, tokenizer, data: dict[str, Encoded]) -> Job:
        packed = cfg.packing
        pad_id = tokenizer.pad_token_id
        native = cfg.engine == "native"

        multiple = pad_multiple(cfg.cpu)

        def collate_train(rows: list[dict]) -> dict:
            return pad_rows(rows, pad_id, packed, multiple)

        def collate(rows: list[dict]) -> dict:
            return pad_rows(rows, pad_id, False, multiple)

        valid = data.get("valid")
        run_dir = Path(cfg.out)

        def evaluate(model, device, autocast) -> dict:
            model.eval()
            with torch.inference_mode(), autocast():
                loss = completion_loss(model, valid, collate, cfg.eval_batch_size, device)
                texts = self.generate(
                    model,
                    "valid",
                    cfg.eval_samples,
                    cfg.eval_batch_size,
                    cfg.progress and distributed.is_main(),
                )
            return {"loss": loss, **self.score("valid", texts, run_dir, "valid_predictions.jsonl")}

        def forward(model, batch: dict) -> Labelled:
            # The head runs at the labelled tokens alone (the loss is the same; the native engine).
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            return labelled_forward(model, inputs, batch["labels"], cfg.label_smoothing or 0.0)

        def accuracy(out, batch) -> tuple[int, int]:
            if isinstance(out, Labelled):
                return int((out.logits.argmax(-1) == out.targets).sum()), len(out.targets)
            mask = batch["labels"][:, 1:] != IGNORE
            hit = out.logits[:, :-1].argmax(-1) == batch["labels"][:, 1:]
            return int((hit & mask).sum()), int(mask.sum())

        def save(model, folder: Path, weights: dict | None = None) -> None:
            # The instruction format goes with the model: generate and serve prompt it as it was
            # trained.
            model.config.instruction_template = self.template
            model.config.instruction_chat = self.chat
            model.config.instruction_system = cfg.system
            model.config.train_max_length = cfg.max_length
            gc = model.generation_config
            gc.max_new_tokens, gc.pad_token_id = self.max_new_tokens, tokenizer.pad_token_id
            training_cache, model.config.use_cache = (
                model.config.use_cache,
                True,
            )  # saved as the model came
            model.save_pretrained(folder, state_dict=weights)
            model.config.use_cache = training_cache
            tokenizer.save_pretrained(folder)

        return Job(
            train=data["train"],
            lengths=data["train"].lengths,
            collate=collate_train,
            save=save,
            evaluate=evaluate if valid is not None else None,
            accuracy=accuracy,
            valid=valid,
            trainer_metrics=lambda: GeneratedMetrics(self, cfg, run_dir),
            metric_names=tuple(self.names),
            batch_loss=lambda out, batch: out.loss.item(),
            tokenizer=tokenizer,
            # The native engine's forward computes the (smoothed) loss itself; the Trainer's the
            # model's own, or smoothed_loss on its full logits.
            loss=None if native else smoothed_loss(cfg.label_smoothing, shift=True),
            forward=forward if native else None,
            unit="packed rows" if packed else "pairs",
        )

    def test(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        # Reloaded the way `generate` loads it, prompts included (its saved template and chat): the
        # saved model is what is scored.
        if self.conversational:
            return self.test_conversations(cfg, model_dir, run)
        writer = InstructionWriter.load(str(model_dir), cfg.cpu, "fp32", cfg.max_length)
        part = self.parts["test"]
        t = time.time()
        metrics, written = score_texts(
            writer,
            part.sources,
            part.targets,
            self.names,
            self.max_new_tokens,
            cfg.num_beams,
            cfg.eval_batch_size,
            cfg.progress and run.main,
        )
        texts = [w.text for w in written]
        self.write_predictions("test", texts, run.dir, "predictions.jsonl")
        metrics["max_new_tokens"] = self.max_new_tokens
        run.say(
            "test set: "
            + "  ".join(f"{k} {metrics[k]:.4f}" for k in self.names)
            + f" on {len(texts)} pairs"
        )
        return {"test": metrics, "test_seconds": round(time.time() - t, 2)}

    def test_conversations(self, cfg: FinetuneConfig, model_dir: Path, run: Run) -> dict:
        """The saved model (tokenizer and chat template included) replies to each test
        conversation; its replies scored against the last assistant turns."""
        lm = CausalLM.load(str(model_dir), cfg.cpu, "fp32")
        t = time.time()
        texts = complete_texts(
            lm,
            self.prompts["test"],
            self.max_new_tokens,
            cfg.eval_batch_size,
            cfg.num_beams,
            cfg.progress and run.main,
        )
        self.write_predictions("test", texts, run.dir, "predictions.jsonl")
        metrics = {
            **text_metrics(texts, self.targets("test"), self.names),
            "n": len(texts),
            "max_new_tokens": self.max_new_tokens,
        }
        run.say(
            "test set: "
            + "  ".join(f"{k} {metrics[k]:.4f}" for k in self.names)
            + f" on {len(texts)} conversations"
        )
        return {"test": metrics, "test_seconds": round(time.time() - t, 2)}

    def summary(self, metrics: dict) -> str:
        m = metrics["test"]
        return (
            "test "
            + ", ".join(f"{k.replace('_', ' ')} {m[k]:.4f}" for k in self.names)
            + f" on {m['n']} pairs"
        )

    # -- a saved model read back: one tuned by `finetune --task causal-lm` writes text -------------
    @classmethod
    def evaluate(cls, cfg: EvaluateConfig, path: str, model_kind: str) -> dict:
        if preference_data(cfg):  # any causal LM scored on preference pairs
            return evaluate_preferences(cfg, path)
        if not instruction_tuned(load_config(path)):
            cls.refuse_headless(cfg.model, model_kind, "to evaluate")
        return super().evaluate(cfg, path, model_kind)

    @classmethod
    def evaluate_report(cls, metrics: dict) -> str:
        if "preference" in metrics:
            return format_preferences(metrics)
        return super().evaluate_report(metrics)

    @classmethod
    def predict(cls, cfg: PredictConfig, path: str, model_kind: str) -> list:
        if not instruction_tuned(load_config(path)):
            cls.refuse_headless(cfg.model, model_kind, "to predict with")
        return super().predict(cfg, path, model_kind)

    @classmethod
    def serve(cls, path: str, source: str, model_kind: str, options: dict) -> dict:
        from warmstart.inference import served_lm  # GenAI's Engine where it applies

        return {"causal_lm": served_lm.load(source, options)}


def conversational(cfg: FinetuneConfig) -> bool:
    """Whether a run reads conversations: --conversation-column, or (no pair column named) a table
    with a messages or conversations column."""
    if cfg.conversation_column is not None:
        return True
    if cfg.source_column or cfg.target_column or not cfg.data or not Path(cfg.data).is_file():
        return False
    return has_conversations(cfg.data, None)


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """--system as the first message of a conversation that has none."""
    if system is None or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system}, *messages]


def completion_loss(
    model: torch.nn.Module, data: Encoded, collate, batch_size: int, device
) -> float:
    """Mean cross-entropy per completion token over ``data`` (every completion token weighs the
    same)."""
    total, tokens = 0.0, 0
    order = np.argsort(data.lengths, kind="stable")
    for k in range(0, len(order), batch_size):
        batch = collate([data[int(i)] for i in order[k : k + batch_size]])
        batch = {key: v.to(device) for key, v in batch.items()}
        labels = batch.pop("labels")
        out = labelled_forward(model, batch, labels)  # the head at the completion tokens alone
        total += torch.nn.functional.cross_entropy(
            out.logits.float(), out.targets, reduction="sum"
        ).item()
        tokens += len(out.targets)
    return total / max(tokens, 1)


class GeneratedMetrics:
    """The Trainer engine's `compute_metrics` (batch_eval_metrics): the Trainer computes the valid
    loss; at the end of its pass the valid sources are completed and scored, by the model being
    trained (the kind's own, which LoRA adapts in place)."""

    def __init__(self, kind: CausalLMTuning, cfg: FinetuneConfig, run_dir: Path):
        self.kind, self.cfg, self.run_dir = kind, cfg, run_dir

    def __call__(self, pred, compute_result: bool) -> dict | None:
        if not compute_result:
            return None
        with torch.inference_mode():
            texts = self.kind.generate(
                self.kind.model, "valid", self.cfg.eval_samples, self.cfg.eval_batch_size, False
            )
        return self.kind.score("valid", texts, self.run_dir, "valid_predictions.jsonl")
