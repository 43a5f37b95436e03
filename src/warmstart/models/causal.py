"""Causal language models for `generate`, prompt scoring and the server: a model with its tokenizer,
set up for batched generation. The bundled SmolLM2 (`smollm2`), any other causal-LM folder (GPT-2,
GPT-Neo, Llama, Qwen...) or a Hugging Face id (models.download) loads the same way."""

from __future__ import annotations

from dataclasses import dataclass

from warmstart.config.options import ModelSourceOptions
from warmstart.errors import UserError
from warmstart.models.device import auto_precision, pick_device
from warmstart.models.registry import (
    ensure_pad_token,
    is_causal,
    load_config,
    load_options,
    load_tokenizer,
    resolve,
)


@dataclass
class CausalLM:
    """A causal LM with its tokenizer, set up for batched generation (left padding, a pad token)."""

    name: str
    path: str
    model: object
    tokenizer: object
    max_positions: int | None
    precision: str = "fp32"  # of the weights: fp32, bf16 or fp16 (a GPU checkpoint's own)

    @classmethod
    def load(
        cls,
        name: str,
        cpu: bool = False,
        precision: str = "auto",
        *,
        hub: ModelSourceOptions | None = None,
    ) -> CausalLM:
        """``precision`` auto: the checkpoint's dtype on a GPU; on a CPU fp32 or bf16 weights,
        whichever decodes faster here (measured once per CPU and model: models.precision). Scores
        that must stay comparable (prompt scoring) pass fp32."""
        import torch
        from transformers import AutoModelForCausalLM

        path = resolve(name, want="causal-lm", hub=hub)
        config = load_config(path)
        archs = getattr(config, "architectures", None) or []
        if archs and not is_causal(config):
            raise UserError(
                f"model '{name}' is a {archs[0]}, not a causal language model; generate needs one "
                "such as GPT-2, GPT-Neo, Llama or Qwen (a ...ForCausalLM checkpoint)"
            )
        tokenizer = load_tokenizer(path)
        device = pick_device(cpu)
        # A GPU loads the checkpoint's own dtype for auto; a CPU loads fp32 and casts below if bf16
        # is chosen.
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}.get(precision, "auto")
        if device.type == "cpu":
            dtype = torch.float32
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **load_options(path))
        except (OSError, ValueError) as e:
            reason = str(e).strip().splitlines()[0]
            raise UserError(f"model '{name}' cannot be loaded as a causal LM: {reason}") from None
        if device.type == "cpu" and precision != "fp32":
            # Decoding reads every weight once per token: bf16 halves that traffic, 1.9x the new
            # tokens/s of fp32 for SmolLM2-135M on a Zen 4 CPU. Greedy text then follows bf16
            # arithmetic (may differ from fp32's).
            if precision == "auto":
                precision = auto_precision(device, model, rows=1, tokens=16, mode="generate")
            if precision == "bf16":
                model = model.to(torch.bfloat16)
        model.to(device).eval()
        tokenizer.padding_side = "left"  # a decoder continues from the last real token
        ensure_pad_token(tokenizer)
        # Set on the model too, or generate() logs "Setting pad_token_id to eos_token_id" on every
        # call.
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        limits = [
            n
            for n in (
                getattr(config, "max_position_embeddings", None),
                getattr(config, "n_positions", None),
            )
            if isinstance(n, int) and n > 0
        ]
        chosen = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(model.dtype, "fp32")
        return cls(name, path, model, tokenizer, min(limits) if limits else None, chosen)

    def chat_text(self, prompt: str, system: str | None = None) -> str:
        """``prompt`` as a user message in the model's chat template, ready for the assistant's
        reply."""
        return chat_text(self.tokenizer, prompt, system, self.name)

    def prompt_ids(self, prompt: str, chat: bool = False, system: str | None = None) -> list[int]:
        """The token ids the model continues for ``prompt``: in the instruction format a model tuned
        by `finetune --task causal-lm` was trained with (its template and chat, saved in its
        config), and through the chat template when ``chat`` asks (with the system message it was
        trained with, unless ``system`` is another); `generate` and the server's /generate both read
        prompts here."""
        config = self.model.config
        template = getattr(config, "instruction_template", None)
        system = system if system is not None else getattr(config, "instruction_system", None)
        return instruction_ids(
            self.tokenizer,
            prompt,
            template,
            chat or bool(getattr(config, "instruction_chat", False)),
            system,
            self.name,
        )


def chat_text(tokenizer, prompt: str, system: str | None = None, name: str = "this model") -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"model '{name}' has no chat template, so --chat cannot be used with it")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def instruction_ids(
    tokenizer,
    source: str,
    template: str | None,
    chat: bool,
    system: str | None = None,
    name: str = "this model",
) -> list[int]:
    """The prompt of an instruction pair as token ids, the same at training (kinds.causal_lm) and
    generation: the template with ``{source}`` filled in, as a user message of the chat template
    with ``chat``. A chat template writes its own special tokens (e.g. BOS); a plain prompt gets the
    tokenizer's usual ones."""
    text = template.replace("{source}", source) if template else source
    if chat:
        text = chat_text(tokenizer, text, system, name)
    return tokenizer(text, add_special_tokens=not chat)["input_ids"]
