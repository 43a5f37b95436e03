"""`generate --backend onnx` (ONNX Runtime GenAI): the same greedy text as transformers in fp32,
exported once, and a clear refusal of what it cannot do. A tiny random Llama with SmolLM2's real
tokenizer keeps exports quick."""

from __future__ import annotations

from pathlib import Path

import pytest

import tiny_llama as shared
import warmstart
from warmstart import progress
from warmstart.errors import UserError
from warmstart.inference import onnx_lm

pytestmark = pytest.mark.skipif(
    not onnx_lm.installed(), reason="onnxruntime-genai is not installed"
)
PROMPTS = ["The capital of France is", "Once upon a time, in a small village,"]


# The quantisation tests' tiny Llama and cache (tests/tiny_llama.py): one folder, exported once.
tiny_llama_session = shared.tiny_llama_session
cache_fixture = shared.session_cache


@pytest.fixture
def tiny_llama(tiny_llama_session) -> Path:
    return tiny_llama_session


def test_greedy_text_is_transformers_fp32_token_for_token(tiny_llama):
    kw = dict(prompts=PROMPTS, model=str(tiny_llama), max_new_tokens=24, strategy="greedy")
    onnx = warmstart.generate(backend="onnx", **kw)
    torch_fp32 = warmstart.generate(backend="torch", precision="fp32", **kw)
    assert [g.completions for g in onnx] == [g.completions for g in torch_fp32]
    assert [g.completion_tokens for g in onnx] == [g.completion_tokens for g in torch_fp32]
    assert [g.finish_reasons for g in onnx] == [g.finish_reasons for g in torch_fp32]
    chat = dict(kw, chat=True, system="Answer briefly.", prompts=PROMPTS[:1])
    a, b = (
        warmstart.generate(backend="onnx", **chat),
        warmstart.generate(backend="torch", precision="fp32", **chat),
    )
    assert (a[0].prompt_tokens, a[0].completions) == (b[0].prompt_tokens, b[0].completions)


def test_the_export_is_made_once_and_reused(tiny_llama, monkeypatch):
    first = onnx_lm.export(tiny_llama, quiet=True)
    monkeypatch.setattr(
        onnx_lm.subprocess, "run", lambda *a, **k: pytest.fail("exported a second time")
    )
    assert onnx_lm.export(tiny_llama, quiet=True) == first
    assert warmstart.generate(
        prompts=PROMPTS[:1], model=str(tiny_llama), backend="onnx", max_new_tokens=4
    )


def test_sampling_is_seeded_limits_hold_and_stop_strings_cut(tiny_llama):
    kw = dict(
        prompts=PROMPTS[:1],
        model=str(tiny_llama),
        backend="onnx",
        num_return_sequences=3,
        seed=5,
        max_new_tokens=12,
    )
    a, b = warmstart.generate(**kw), warmstart.generate(**kw)
    assert a[0].completions == b[0].completions and len(a[0].completions) == 3
    assert all(n <= 12 for n in a[0].completion_tokens)
    text = a[0].completions[0]
    stop = text.split()[1] if len(text.split()) > 1 else text[1:3]
    cut = warmstart.generate(**dict(kw, stop=[stop]))[0]
    assert cut.finish_reasons[0] == "stop" and stop not in cut.completions[0]
    assert text.startswith(cut.completions[0])


def test_what_onnx_cannot_do_is_refused_and_auto_uses_transformers(tiny_llama, tiny_gpt2):
    with pytest.raises(
        UserError, match="--backend onnx cannot do this: beam search; use --backend torch"
    ):
        warmstart.generate(
            prompts=PROMPTS[:1],
            model=str(tiny_llama),
            backend="onnx",
            num_beams=2,
            max_new_tokens=4,
        )
    with pytest.raises(UserError, match="does not export a gpt2"):
        warmstart.generate(
            prompts=PROMPTS[:1], model=str(tiny_gpt2), backend="onnx", max_new_tokens=4
        )
    beams = warmstart.generate(
        prompts=PROMPTS[:1], model=str(tiny_llama), num_beams=2, max_new_tokens=4
    )
    assert len(beams[0].completions) == 1  # auto: transformers' beam search answered


def test_a_tokenizer_genai_reads_differently_is_not_used(tiny_llama):
    exported = onnx_lm.export(tiny_llama, quiet=True)
    assert (
        onnx_lm.read_json(exported / onnx_lm.SAME_TEXT) is True
    )  # SmolLM2's tokenizer: checked the same
    (exported / onnx_lm.SAME_TEXT).write_text(
        "false"
    )  # as the export's check finds for a char tokenizer
    try:
        with pytest.raises(
            UserError, match="tokenizer reads the texts of .* differently from transformers"
        ):
            warmstart.generate(
                prompts=PROMPTS[:1], model=str(tiny_llama), backend="onnx", max_new_tokens=4
            )
        auto = warmstart.generate(
            prompts=PROMPTS[:1],
            model=str(tiny_llama),
            max_new_tokens=4,
            strategy="greedy",
            precision="fp32",
        )
        torch_fp32 = warmstart.generate(
            prompts=PROMPTS[:1],
            model=str(tiny_llama),
            backend="torch",
            precision="fp32",
            max_new_tokens=4,
            strategy="greedy",
        )
        assert auto[0].completions == torch_fp32[0].completions
    finally:
        (exported / onnx_lm.SAME_TEXT).write_text("true")


def test_a_file_of_prompts_shows_a_bar_counting_prompts_on_a_terminal(
    tiny_llama, monkeypatch, capsys
):
    # GenAI completes one prompt at a time; a file of 1,400 ran 25 minutes with no sign of life.
    monkeypatch.setattr(progress, "on_terminal", lambda: True)
    kw = dict(prompts=PROMPTS, model=str(tiny_llama), backend="onnx", max_new_tokens=4)
    warmstart.generate(progress=True, **kw)
    err = capsys.readouterr().err
    assert "generate:" in err and "0/2" in err
    warmstart.generate(**kw)  # generate's bar is asked for (--progress)
    assert "generate:" not in capsys.readouterr().err
