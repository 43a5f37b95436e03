"""Multi-turn chat fine-tuning (`finetune --task causal-lm` on conversations): the three formats
read to the same messages, the loss on the assistant's turns exactly (token for token against the
chat template's own assistant mask), truncation by whole turns, packing, bad input, and
`generate --chat` continuing a conversation. A tiny random Llama with a one-character-a-token
tokenizer and a ChatML template (with TRL's ``{% generation %}`` marks) stands in for SmolLM2."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import warmstart
from warmstart.cli import main
from warmstart.config import FinetuneConfig
from warmstart.data.batching import IGNORE
from warmstart.data.conversations import ChatRenderer, check, read_conversations, to_messages
from warmstart.errors import UserError
from warmstart.kinds.causal_lm import CausalLMTuning

CHARS = "abcdefghijklmnopqrstuvwxyz ?!.,'\n:"
SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>", "<unk>"]
# ChatML, with the assistant's reply and its end marked for transformers' assistant mask.
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{ '\\n' }}{% else %}{{ m['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
DIALOGUE = [
    {"role": "system", "content": "be kind"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello there"},
    {"role": "user", "content": "how are you?"},
    {"role": "assistant", "content": "fine, thanks"},
]


def build_tiny_chat_llama(folder: Path, chat_template: str | None = CHATML, seed: int = 0) -> Path:
    """A random 2-layer LlamaForCausalLM and a character tokenizer whose EOS ends a turn."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + sorted(set(CHARS)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<unk>",
        model_max_length=256,
    )
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory) -> Path:
    return build_tiny_chat_llama(tmp_path_factory.mktemp("tiny-chat"))


def tokenizer_of(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def test_assistant_mask_matches_the_chat_templates_own_token_for_token(tiny_chat):
    tok = tokenizer_of(tiny_chat)
    r = ChatRenderer(tok).render(DIALOGUE)
    want = tok.apply_chat_template(
        DIALOGUE, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert r.ids == list(want["input_ids"])  # the template's rendering, token for token
    mask = [x != IGNORE for x in r.labels]
    assert mask == [bool(m) for m in want["assistant_masks"]]
    assert [t for t, m in zip(r.ids, mask) if m] == [
        t for t, x in zip(r.ids, r.labels) if x != IGNORE
    ]
    # Both replies with their end-of-turn token, nothing of the user's or the system's.
    learned = tok.decode([t for t, m in zip(r.ids, mask) if m])
    assert learned == "hello there<|im_end|>fine, thanks<|im_end|>"
    last = ChatRenderer(tok).render(DIALOGUE, "last")
    assert tok.decode([t for t in last.labels if t != IGNORE]) == "fine, thanks<|im_end|>"


def test_three_formats_read_to_the_same_messages(tmp_path):
    body = DIALOGUE[1:]
    sharegpt = [
        {"from": {"user": "human", "assistant": "gpt"}[m["role"]], "value": m["content"]}
        for m in body
    ]
    hh = "".join(
        f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in body
    )
    pd.DataFrame({"messages": [body]}).to_json(tmp_path / "m.jsonl", orient="records", lines=True)
    pd.DataFrame({"conversations": [sharegpt]}).to_parquet(tmp_path / "s.parquet")
    pd.DataFrame({"chosen": [hh]}).to_json(tmp_path / "h.jsonl", orient="records", lines=True)
    read = [
        read_conversations(tmp_path / "m.jsonl").messages[0],
        read_conversations(tmp_path / "s.parquet").messages[0],
        read_conversations(tmp_path / "h.jsonl", "chosen").messages[0],
    ]
    assert read[0] == read[1] == read[2] == body


def test_too_long_conversations_lose_whole_turns_from_the_start(tiny_chat):
    tok = tokenizer_of(tiny_chat)
    renderer = ChatRenderer(tok)
    turns = [
        {"role": "user" if k % 2 == 0 else "assistant", "content": f"turn {'abcdefgh'[k]} " * 3}
        for k in range(8)
    ]
    messages = [{"role": "system", "content": "sys"}, *turns]
    full = renderer.render(messages)
    kept = renderer.render([messages[0], *turns[4:]])  # the system and the last two exchanges
    out = renderer.fit(messages, len(kept.ids))
    assert (out.ids, out.labels) == (kept.ids, kept.labels) and out.dropped_turns == 2
    assert len(full.ids) > len(kept.ids) and not out.cut
    # The last exchange alone too long: kept, its end cut.
    tiny = renderer.fit(messages, 30)
    assert tiny.cut and len(tiny.ids) == 30 and tiny.dropped_turns == 3


@pytest.mark.parametrize(
    "messages, says",
    [
        ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "alternate"),
        ([{"role": "assistant", "content": "a"}], "alternate"),
        ([{"role": "system", "content": "s"}, {"role": "user", "content": "a"}], "no assistant"),
    ],
)
def test_bad_conversations_are_refused_in_one_line(messages, says):
    with pytest.raises(UserError, match=says) as e:
        check(messages, "file 'x.jsonl', row 3, column 'messages'")
    assert "row 3" in str(e.value) and "\n" not in str(e.value)


def test_a_transcript_that_is_no_conversation_is_refused():
    with pytest.raises(UserError, match="not a conversation"):
        to_messages("just some text", "file 'x', row 1")


def test_model_without_chat_template_is_refused_with_a_hint(tmp_path, capsys):
    plain = build_tiny_chat_llama(tmp_path / "plain", chat_template=None)
    data = tmp_path / "c.jsonl"
    pd.DataFrame({"messages": [DIALOGUE[1:]] * 4}).to_json(data, orient="records", lines=True)
    code = main(["finetune", "--task", "causal-lm", "--data", str(data), "--model", str(plain),
                 "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no chat template" in err and "--template" in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_finetune_on_conversations_packs_them_apart_and_generate_continues_a_chat(
    tiny_chat, tmp_path
):
    rows = [
        [
            {"role": "user", "content": f"say {w}"},
            {"role": "assistant", "content": w},
            {"role": "user", "content": "again"},
            {"role": "assistant", "content": w},
        ]
        for w in ["yes", "no", "maybe", "ok"] * 6
    ]
    data = tmp_path / "chats.jsonl"
    pd.DataFrame({"messages": rows}).to_json(data, orient="records", lines=True)
    cfg = FinetuneConfig(
        task="causal-lm", data=str(data), model=str(tiny_chat), split="20,4", packing=True,
        max_length=128, out=str(tmp_path / "run"), epochs=1, batch_size=4, progress=False,
        cpu=True, precision="fp32", attn_implementation="sdpa", eval_samples=2,
        max_new_tokens=4,
    )  # fmt: skip
    kind = CausalLMTuning(cfg)
    assert kind.conversational
    tok = tokenizer_of(tiny_chat)
    enc = kind.encode(tok, "train", 128, cfg)
    renderer = ChatRenderer(tok)
    row = enc[0]
    # Packed: each conversation whole, its positions from 0, its labels its own assistant mask.
    starts = [i for i, p in enumerate(row["position_ids"]) if p == 0]
    first = renderer.render(rows[0])
    assert starts[:2] == [0, len(first.ids)]
    assert row["labels"][: len(first.ids)] == first.labels
    result = warmstart.finetune(cfg)
    assert (result.model_dir / "config.json").exists()
    assert (result.model_dir / "tokenizer_config.json").exists()
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps(rows[0][:3]))
    gens = warmstart.generate(
        model=str(result.model_dir), messages=str(chat), chat=True, max_new_tokens=3, cpu=True,
        backend="torch", strategy="greedy", progress=False,
    )  # fmt: skip
    assert len(gens) == 1 and gens[0].prompt.endswith("<|im_start|>assistant\n")
    assert gens[0].prompt == renderer.text(rows[0][:3], True)


@pytest.mark.parametrize("lora", [False, True])
@pytest.mark.parametrize("packed", [False, True])
def test_loss_from_the_labelled_positions_alone_equals_the_models_own(tiny_chat, lora, packed):
    """The head run at the assistant tokens only (models.token_logprobs): the same loss, the same
    gradients and the same token accuracy as the model's own loss over every position's logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from warmstart.kinds.causal_lm import pack, pad_rows
    from warmstart.models.token_logprobs import labelled_forward

    tok, renderer = tokenizer_of(tiny_chat), ChatRenderer(tokenizer_of(tiny_chat))
    chats = [DIALOGUE, DIALOGUE[1:3], [*DIALOGUE[1:4], {"role": "assistant", "content": "ok!"}]]
    done = [renderer.render(c) for c in chats]
    rows = [{"input_ids": r.ids, "labels": r.labels} for r in done]
    if packed:
        p = pack([r.ids for r in done[:2]], [r.labels for r in done[:2]], 128)
        rows = [{k: v[i] for k, v in p.items()} for i in range(len(p["input_ids"]))]
        rows.append({"input_ids": done[2].ids, "labels": done[2].labels,
                     "position_ids": list(range(len(done[2].ids)))})  # fmt: skip
    batch = pad_rows(rows, tok.pad_token_id, packed, 8)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat, dtype=torch.float32)
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        torch.manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a trained adapter, so that the gradients reach lora_A too
                torch.nn.init.normal_(p, std=0.5)
    trained = [p for p in model.parameters() if p.requires_grad]

    full = model(**batch)
    grads_full = torch.autograd.grad(full.loss, trained)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = labelled_forward(model, inputs, batch["labels"], 0.0)
    grads = torch.autograd.grad(out.loss, trained)

    assert out.logits.shape == (int((batch["labels"][:, 1:] != IGNORE).sum()), len(tok))
    assert out.loss.item() == pytest.approx(full.loss.item(), abs=1e-6)
    for a, b in zip(grads, grads_full):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    mask = batch["labels"][:, 1:] != IGNORE
    hits = (full.logits[:, :-1].argmax(-1) == batch["labels"][:, 1:]) & mask
    assert int((out.logits.argmax(-1) == out.targets).sum()) == int(hits.sum())
    # With label smoothing: what the Trainer engine computes from the full logits.
    smoothed = torch.nn.functional.cross_entropy(
        full.logits[:, :-1].flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE,
        label_smoothing=0.1,
    )  # fmt: skip
    again = labelled_forward(model, inputs, batch["labels"], 0.1).loss
    assert again.item() == pytest.approx(smoothed.item(), abs=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients_dropout_included(tiny_chat):
    """--gradient-checkpointing (training.common.checkpoint_layers): the recomputed layers draw the
    forward's dropout masks (warmstart's CPU masks), so loss and gradients are those without it."""
    from types import SimpleNamespace

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from warmstart.kinds.causal_lm import pad_rows
    from warmstart.models.token_logprobs import labelled_forward
    from warmstart.training.common import checkpoint_layers
    from warmstart.training.dropout import faster_dropout

    renderer = ChatRenderer(tokenizer_of(tiny_chat))
    done = [renderer.render(DIALOGUE), renderer.render(DIALOGUE[1:3])]
    batch = pad_rows([{"input_ids": r.ids, "labels": r.labels} for r in done], 0, False, 8)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    found = []
    for on in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_chat, dtype=torch.float32)
        torch.manual_seed(1)  # the same adapters both times
        model = get_peft_model(
            model, LoraConfig(r=4, lora_dropout=0.3, target_modules=["q_proj", "v_proj"])
        )
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
        checkpoint_layers(model, SimpleNamespace(gradient_checkpointing=on, cpu=True))
        model.train()
        torch.manual_seed(5)
        with faster_dropout("cpu"):
            out = labelled_forward(model, inputs, batch["labels"], 0.0)
        out.loss.backward()
        found.append((out.loss.item(), [p.grad for p in model.parameters() if p.requires_grad]))
    assert model.get_base_model().model.gradient_checkpointing  # it was on the second time
    assert found[0][0] == found[1][0]
    assert all(torch.equal(a, b) for a, b in zip(found[0][1], found[1][1]))
