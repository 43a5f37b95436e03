"""Score verbalised labels with a causal LM: log p(label tokens | [examples] + prompt(text)).

Used by `zeroshot --method prompt` and `fewshot --method incontext`. Two things make it fast:
- a prefix shared by every query (the in-context examples) is run once and its key/value cache reused
  for every batch, so each query costs only its own tokens;
- when every label is a single token, one forward pass per batch scores all labels at once.
Texts are truncated inside the template, so the instruction and the answer slot always survive.

Calibration (Zhao et al., 2021, "Calibrate before use"): the label probabilities that the same
prompt gives content-free inputs ("N/A", "", "[MASK]") measure the prompt's bias; dividing by them
(then renormalising) removes it, so a prompt that always says "positive" no longer does."""

from __future__ import annotations

import copy

import numpy as np
import torch

from warmstart.config import TRUNCATIONS
from warmstart.data.batching import Encoded
from warmstart.data.windows import head_tail
from warmstart.errors import UserError
from warmstart.inference.batched import batched_outputs

CONTENT_FREE = ("N/A", "", "[MASK]")
LABEL_ROOM = 8  # positions kept free after a prompt for the label's tokens


def split_template(template: str) -> tuple[str, str]:
    if template.count("{text}") != 1:
        raise UserError(f"the prompt template must contain {{text}} exactly once: '{template}'")
    before, after = template.split("{text}")
    return before, after


class PromptScorer:
    """A causal LM (warmstart.models.causal.CausalLM) that scores label continuations of prompts."""

    def __init__(self, lm, max_length: int = 256, truncate: str = "head"):
        self.lm = lm
        self.model = lm.model
        self.tok = lm.tokenizer
        self.device = next(self.model.parameters()).device
        # The transformer body and the LM head separately (see logp_at in score).
        self.body = self.model.base_model
        self.head = self.model.get_output_embeddings()
        cfg = self.model.config.get_text_config()
        if getattr(cfg, "final_logit_softcapping", None) or getattr(cfg, "logit_scale", None):
            raise UserError(
                f"model '{lm.name}' rescales its logits after the head, which prompt scoring does "
                "not support yet"
            )
        self.max_length = max_length
        if truncate not in TRUNCATIONS:
            raise UserError(f"--truncate must be {' or '.join(TRUNCATIONS)}, got {truncate!r}")
        self.truncate = truncate

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(
        self, template: str, text: str, max_text_tokens: int | None = None, **fields: str
    ) -> list[int]:
        """The template with ``text`` in it, the text cut to ``max_text_tokens`` (default:
        --max-length) and, whatever that is, short enough to leave room for a label in the model's
        position table."""
        before, after = split_template(template)
        head, tail = self.ids(before.format(**fields)), self.ids(after.format(**fields))
        room = self.max_length
        if self.lm.max_positions:
            room = min(room, self.lm.max_positions - len(head) - len(tail) - LABEL_ROOM)
        return head + self.cut(self.ids(text), max(0, min(max_text_tokens or room, room))) + tail

    def cut(self, ids: list[int], n: int) -> list[int]:
        """At most ``n`` of a text's tokens: the first n, or with head+tail the first n/4 and the
        last 3n/4."""
        return head_tail(ids, n) if self.truncate == "head+tail" else ids[:n]

    def label_ids(self, verbalised: list[str]) -> list[list[int]]:
        out = [self.ids(v) for v in verbalised]
        for v, ids in zip(verbalised, out):
            if not ids:
                raise UserError(f"label '{v}' is empty after tokenisation")
        if len({tuple(i) for i in out}) < len(out):
            raise UserError(f"two labels tokenise the same way: {verbalised}")
        return out

    def prefix_cache(self, prefix: list[int]):
        if not prefix:
            return None
        with torch.inference_mode():
            out = self.model(torch.tensor([prefix], device=self.device), use_cache=True)
        return out.past_key_values

    def score(
        self,
        queries: list[list[int]],
        labels: list[list[int]],
        prefix: list[int] | None = None,
        batch_size: int = 16,
        progress: bool = False,
    ) -> np.ndarray:
        """(len(queries), len(labels)) summed log-probabilities of each label's tokens after prefix
        + query."""
        prefix = prefix or []
        limit = self.lm.max_positions
        longest = (
            len(prefix)
            + max((len(q) for q in queries), default=0)
            + max(len(lab) for lab in labels)
        )
        if limit and longest > limit:
            raise UserError(
                f"the prompt with its examples and label needs {longest} tokens but the model"
                f" '{self.lm.name}' reads at most {limit}: use shorter labels, fewer or shorter"
                " examples (--example-max-length), or a shorter template"
            )
        cache = self.prefix_cache(prefix)
        single = all(len(lab) == 1 for lab in labels)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0

        def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
            # Right padding: each row's real tokens sit right after the shared prefix, at the right
            # positions.
            width = max(len(r["input_ids"]) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
                mask[i, : len(r["input_ids"])] = 1
            return {"input_ids": ids, "attention_mask": mask}

        def hidden(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            """Final hidden states (batch, tokens, dim) of the query tokens, after the cached
            prefix."""
            n = batch["input_ids"].shape[0]
            mask = batch["attention_mask"]
            kw = {}
            if cache is not None:
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(n)
                kw["past_key_values"] = past
                mask = torch.cat(
                    [torch.ones((n, len(prefix)), dtype=mask.dtype, device=mask.device), mask], 1
                )
            return self.body(
                input_ids=batch["input_ids"], attention_mask=mask, use_cache=cache is not None, **kw
            ).last_hidden_state

        def logp_at(h: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
            # The LM head only where a label token is predicted: the full (batch, tokens, vocab)
            # logits of a 49k-token vocabulary would cost more than the rest of the model on a CPU.
            return torch.log_softmax(self.head(h[rows, pos]).float(), dim=-1)

        if single:
            first = torch.tensor([lab[0] for lab in labels], device=self.device)

            def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
                h = hidden(batch)
                last = batch["attention_mask"].sum(1) - 1
                return logp_at(h, torch.arange(len(last), device=h.device), last)[:, first]

            data = Encoded({"input_ids": queries})
            return batched_outputs(
                forward, data, batch_size, collate, self.device, progress, desc="score"
            )

        # Several tokens in some label: one pass per label over query + label, summing the label's
        # tokens.
        columns = []
        for lab in labels:

            def forward(batch: dict[str, torch.Tensor], lab: list[int] = lab) -> torch.Tensor:
                h = hidden(batch)
                end = batch["attention_mask"].sum(1)  # query + label length
                rows = torch.arange(len(end), device=h.device)
                total = torch.zeros(len(end), device=h.device)
                for j, token in enumerate(lab):
                    pos = (
                        end - len(lab) - 1 + j
                    )  # the position that predicts the label's j-th token
                    total += logp_at(h, rows, pos)[:, token]
                return total[:, None]

            data = Encoded({"input_ids": [q + lab for q in queries]})
            columns.append(
                batched_outputs(
                    forward, data, batch_size, collate, self.device, progress, desc="score"
                )
            )
        return np.concatenate(columns, axis=1)


def calibrate(probs: np.ndarray, content_free: np.ndarray) -> np.ndarray:
    """Divide each label's probability by its content-free probability and renormalise (W =
    diag(p_cf)^-1)."""
    p = probs / np.clip(content_free, 1e-12, None)
    return p / p.sum(axis=1, keepdims=True)
