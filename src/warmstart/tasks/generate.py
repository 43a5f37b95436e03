"""`warmstart generate`: continue prompts with a causal LM (greedy, sampling or beam search); with a
text-to-text model (`finetune --task seq2seq`: BART, T5, Marian...), write its output for each text
(greedy or beam search).

How --max-length and --max-new-tokens limit each prompt's completion, and what counts as the
prompt's tokens, is written once in inference/decoding.py (the server's /generate follows the same
rules)."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from warmstart.config import GenerateConfig, make, settle
from warmstart.data.prompts import read_prompts
from warmstart.errors import UserError
from warmstart.files import atomic_write_text
from warmstart.inference import onnx_lm, quantize
from warmstart.inference.generation_options import Generation, check_options, strategy, token_budget
from warmstart.models.download import pin

# transformers and torch are imported where a route needs them: the ONNX route does without (seconds
# a process).

__all__ = ["Generation", "format_generations", "generate", "report", "streamable"]


def generate(
    config: GenerateConfig | None = None, *, stream_to: TextIO | None = None, **kwargs
) -> list[Generation]:
    """Complete every prompt; with ``stream_to`` (and a streamable config) text is written there as
    it comes."""
    cfg = make(GenerateConfig, config, kwargs)
    stops = check_options(cfg)
    # A Hugging Face --model is fetched now if it must be and pinned to one commit for the run.
    cfg = settle(cfg, pin(cfg))
    # --messages: conversations, continued through the chat template by transformers.
    chats = conversations(cfg)
    prompts = read_prompts(cfg.prompts, cfg.input) if chats is None else []
    streaming = stream_to is not None and streamable(cfg)
    cfg, lm_onnx = onnx_route(cfg, streaming) if chats is None else (on_torch(cfg), None)
    if lm_onnx is None and chats is None and text_to_text(cfg):
        return rewrite(cfg, prompts, stream_to if streamable(cfg) else None)
    done = (
        onnx_lm.generate(lm_onnx, cfg, prompts, stops, stream_to if streaming else None, _header)
        if lm_onnx is not None
        else with_transformers(cfg, prompts, stops, stream_to if streaming else None, chats)
    )
    if cfg.out:
        atomic_write_text(Path(cfg.out), format_generations(done, cfg.format, cfg.chat))
    return done


def conversations(cfg: GenerateConfig) -> list[list[dict]] | None:
    if cfg.messages is None:
        return None
    if not cfg.chat or cfg.prompts or cfg.input:
        raise UserError("--messages goes with --chat, instead of prompts or --input")
    # Imported here: it brings pandas and torch, which the ONNX route never needs.
    from warmstart.data.conversations import read_messages

    return read_messages(cfg.messages)


def with_transformers(
    cfg: GenerateConfig,
    prompts: list[str],
    stops: list[str],
    stream_to: TextIO | None,
    chats: list[list[dict]] | None = None,
) -> list[Generation]:
    """Every prompt completed by transformers' generate, in batches of similar length (one at a
    time, in order, when streaming to ``stream_to``)."""
    from warmstart.inference.decoding import Streamer, complete, generation_config, seed_all
    from warmstart.models.causal import CausalLM
    from warmstart.progress import progress_bar

    streaming = stream_to is not None
    int8 = cfg.quantize == "int8"
    lm = CausalLM.load(cfg.model, cfg.cpu, "fp32" if int8 else cfg.precision, hub=cfg)
    if int8:  # PyTorch's dynamic int8 Linear layers (its CPU kernel)
        lm = quantize.torch_int8(lm)
    if chats is not None:
        from warmstart.data.conversations import ChatRenderer

        renderer = ChatRenderer(lm.tokenizer, cfg.model)
        system = [{"role": "system", "content": cfg.system}] if cfg.system else []
        chats = [c if c[0]["role"] == "system" else system + c for c in chats]
        prompts = [renderer.text(c, True) for c in chats]
    ids = (
        [lm.prompt_ids(p, cfg.chat, cfg.system) for p in prompts]
        if chats is None
        else [renderer.prompt_ids(c) for c in chats]
    )
    budgets = [
        token_budget(cfg, len(x), lm.max_positions, f"prompt {i + 1}") for i, x in enumerate(ids)
    ]
    if cfg.seed is not None:
        seed_all(cfg.seed)
    if streaming:  # one prompt at a time, in order, so that the text appears as it is produced
        batches = [[i] for i in range(len(ids))]
    else:  # similar lengths together: less padding
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        batches = [order[k : k + cfg.batch_size] for k in range(0, len(order), cfg.batch_size)]
    gen_config = generation_config(cfg, lm.model.generation_config, stops)
    results: list[Generation | None] = [None] * len(ids)
    for batch in progress_bar(
        batches, desc="generate", unit="batch", enabled=cfg.progress and not streaming, leave=False
    ):
        streamer = None
        if stream_to is not None:
            i = batch[0]
            stream_to.write(_header(i, 0, len(ids), 1))
            if not cfg.chat:
                stream_to.write(prompts[i])
            streamer = Streamer(lm.tokenizer, stream_to, stops)
        gens = complete(
            lm,
            [prompts[i] for i in batch],
            [ids[i] for i in batch],
            [budgets[i] for i in batch],
            gen_config,
            stops,
            streamer,
        )
        for i, g in zip(batch, gens):
            results[i] = g
        if streamer is not None:
            streamer.close()
    return [r for r in results if r is not None]


def onnx_route(
    cfg: GenerateConfig, streaming: bool
) -> tuple[GenerateConfig, onnx_lm.OnnxLM | None]:
    """The settings with --quantize settled, and the model through ONNX Runtime GenAI when this
    request goes that way (--backend; auto: where it can, on a machine without a GPU), else None:
    transformers answers."""
    if cfg.backend == "torch" or (cfg.backend == "auto" and onnx_lm.gpu_present() and not cfg.cpu):
        return on_torch(cfg), None
    reason = onnx_lm.why_not(cfg, streaming)
    if reason is None:
        folder = onnx_lm.model_folder(cfg.model)
        # auto: the weights measured fastest on this CPU at fp32's quality (cached after once)
        settled = settle(
            cfg, quantize=quantize.choice(folder, cfg.quantize, cfg.quant_block_size, onnx=True)
        )
        try:
            return settled, onnx_lm.load(settled)
        except onnx_lm.Unreadable as e:
            reason = str(e)
            if cfg.backend == "auto":
                print(f"{reason}; generating with transformers", file=sys.stderr)
    if cfg.backend == "onnx":
        raise UserError(f"--backend onnx cannot do this: {reason}; use --backend torch")
    return on_torch(cfg), None


def on_torch(cfg: GenerateConfig) -> GenerateConfig:
    """--quantize settled for transformers: int8 (dynamic) when asked, int4 refused, auto none."""
    return settle(cfg, quantize=quantize.choice(None, cfg.quantize, cfg.quant_block_size, False))


def text_to_text(cfg: GenerateConfig) -> bool:
    """Whether --model is an encoder-decoder (its output is a new text, not a continuation of the
    prompt)."""
    from warmstart.models.bundled import ALIASES

    if cfg.model.strip().lower() in ALIASES:
        return False  # the aliases are an encoder and a causal LM
    folder = onnx_lm.model_folder(cfg.model)
    if (
        folder is not None
        and onnx_lm.read_json(folder / "config.json").get("model_type") in onnx_lm.ARCHITECTURES
    ):
        return False  # decoder-only families, told from config.json without loading transformers
    from warmstart.models.registry import load_config, resolve
    from warmstart.models.seq2seq import is_encoder_decoder

    return is_encoder_decoder(load_config(resolve(cfg.model, hub=cfg)))


def rewrite(cfg: GenerateConfig, texts: list[str], stream_to: TextIO | None) -> list[Generation]:
    """An encoder-decoder's output for each text: greedy (or beam search with --num-beams), at most
    --max-new-tokens tokens (default: the model's saved limit)."""
    from warmstart.inference.seq2seq import CAUSAL_ONLY, TextToText, beams_of, causal_only_options

    # --stream is left out: it only says how the outputs reach a terminal.
    options = {
        **{k: getattr(cfg, k) for k in CAUSAL_ONLY},
        "chat": cfg.chat,
        "stop": cfg.stop,
        "num_return_sequences": cfg.num_return_sequences,
        "strategy": strategy(cfg),
        "num_beams": cfg.num_beams,
    }
    refused = [f"--{k.replace('_', '-')}" for k in causal_only_options(options)]
    if refused:
        raise UserError(
            "a text-to-text model writes one output per text, greedy or with --num-beams; "
            f"{', '.join(refused)} {'is' if len(refused) == 1 else 'are'} for causal LMs"
        )
    t2t = TextToText.load(cfg.model, cfg.cpu, cfg.precision, hub=cfg)
    written = t2t.write(texts, cfg.max_new_tokens, beams_of(options), cfg.batch_size, cfg.progress)
    gens = [
        Generation(t, [w.text], len(t2t.tokenizer(t)["input_ids"]), [w.tokens], [w.finish_reason])
        for t, w in zip(texts, written)
    ]
    if stream_to is not None:  # the CLI prints nothing more for a streamable config on a terminal
        stream_to.write(format_generations(gens, cfg.format, chat=True))
    if cfg.out:
        atomic_write_text(Path(cfg.out), format_generations(gens, cfg.format, chat=True))
    return gens


def streamable(cfg: GenerateConfig) -> bool:
    """Whether text can be shown as it is produced: one sequence per prompt, plain text to the
    terminal."""
    return (
        cfg.stream
        and cfg.format == "text"
        and not cfg.out
        and cfg.num_return_sequences == 1
        and strategy(cfg) != "beam"
    )


def _header(i: int, j: int, n_prompts: int, n_seqs: int) -> str:
    parts = ([f"prompt {i + 1}"] if n_prompts > 1 else []) + (
        [f"completion {j + 1}"] if n_seqs > 1 else []
    )
    return f"{'' if i == 0 and j == 0 else chr(10)}--- {', '.join(parts)} ---\n" if parts else ""


def format_generations(gens: list[Generation], fmt: str, chat: bool = False) -> str:
    """JSON Lines (one object per prompt), or the texts: prompt + completion (the reply alone with
    chat)."""
    if fmt == "jsonl":
        return "".join(json.dumps(asdict(g), ensure_ascii=False) + "\n" for g in gens)
    parts = []
    for i, g in enumerate(gens):
        for j, c in enumerate(g.completions):
            parts.append(
                _header(i, j, len(gens), len(g.completions)) + (c if chat else g.prompt + c) + "\n"
            )
    return "".join(parts)


def report(cfg: GenerateConfig, gens: list[Generation]) -> str:
    # Streamed text is on the terminal already (the CLI streams only there).
    if cfg.out or (streamable(cfg) and sys.stdout.isatty()):
        return ""
    # A text-to-text model's output is a text of its own, shown alone (as a chat reply is).
    return format_generations(gens, cfg.format, cfg.chat or text_to_text(cfg))
