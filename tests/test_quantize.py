"""Quantised generation (--quantize int4|int8|none|auto): GenAI's MatMulNBits exports made once per
block size, PyTorch's dynamic int8 on the torch route and one-line refusals where a route has no
kernel, and auto's measured choice cached per CPU and model."""

from __future__ import annotations

import onnx
import pytest

import tiny_llama
import warmstart
from warmstart.errors import UserError
from warmstart.inference import onnx_lm, quantize
from warmstart.inference.quantize import Measured

# The session's tiny Llama and cache (fixtures, registered under their own names).
tiny_llama_session = tiny_llama.tiny_llama_session
cache_fixture = tiny_llama.session_cache
pytestmark = pytest.mark.skipif(
    not onnx_lm.installed(), reason="onnxruntime-genai is not installed"
)
PROMPT = ["The capital of France is"]


def op_types(export_dir) -> set[str]:
    model = onnx.load(str(export_dir / "model.onnx"), load_external_data=False)
    return {n.op_type for n in model.graph.node}


def test_int4_weights_are_matmulnbits_in_the_asked_blocks_exported_once(
    tiny_llama_session, monkeypatch
):
    folder = tiny_llama_session
    int4 = onnx_lm.export(folder, quiet=True, quantize="int4", block_size=32)
    fp32 = onnx_lm.export(folder, quiet=True)
    assert int4 != fp32 and "MatMulNBits" in op_types(int4)
    assert not (int4 / onnx_lm.GRID).exists()  # its weights are on no GGUF grid: the builder's
    assert "MatMulNBits" not in op_types(fp32)
    model = onnx.load(str(int4 / "model.onnx"), load_external_data=False)
    blocks = {
        a.i
        for n in model.graph.node
        if n.op_type == "MatMulNBits"
        for a in n.attribute
        if a.name == "block_size"
    }
    assert blocks == {32}
    kw = dict(prompts=PROMPT, model=str(folder), backend="onnx", max_new_tokens=8)
    first = warmstart.generate(quantize="int4", strategy="greedy", **kw)
    monkeypatch.setattr(
        onnx_lm.subprocess, "run", lambda *a, **k: pytest.fail("exported a second time")
    )
    again = warmstart.generate(quantize="int4", strategy="greedy", **kw)
    assert first[0].completions == again[0].completions and first[0].completion_tokens[0] == 8


def test_torch_route_quantises_int8_and_refuses_int4_in_one_line(tiny_llama_session):
    kw = dict(prompts=PROMPT, model=str(tiny_llama_session), backend="torch", max_new_tokens=6)
    out = warmstart.generate(quantize="int8", strategy="greedy", **kw)
    assert out[0].completion_tokens == [6]
    with pytest.raises(UserError, match="--quantize int4 needs the onnx backend") as e:
        warmstart.generate(quantize="int4", **kw)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="--quant-block-size must be 16, 32, 64, 128 or 256"):
        warmstart.generate(
            quantize="int4",
            backend="onnx",
            quant_block_size=48,
            prompts=PROMPT,
            model=str(tiny_llama_session),
        )


def test_auto_keeps_the_fastest_within_two_percent_of_fp32s_perplexity():
    fp32 = Measured("none", 40.0, 10.0)
    assert quantize.pick([fp32, Measured("int8", 80.0, 10.1), Measured("int4", 150.0, 12.0)]) == (
        "int8"  # int4 is faster but 20% worse
    )
    assert quantize.pick([fp32, Measured("int8", 80.0, 10.1), Measured("int4", 150.0, 10.15)]) == (
        "int4"
    )
    assert quantize.pick([fp32, Measured("int8", 41.0, 10.0)]) == "none"  # not clearly faster


@pytest.mark.slow  # three exports and a timing: seconds each on a quiet machine
def test_auto_is_measured_once_then_read_from_the_cache_and_settled_with_its_reason(
    tiny_llama_session,
):
    folder = tiny_llama_session
    measured = quantize.decide(folder, 32, quiet=True)
    assert not measured.cached
    assert {m.quantize for m in measured.measured} == {"none", "int8", "int4"}
    assert all(m.tokens_per_s > 0 and m.perplexity > 1 for m in measured.measured)
    assert measured.quantize == quantize.pick(list(measured.measured))
    again = quantize.decide(folder, 32, quiet=True)
    assert again.cached and again.quantize == measured.quantize
    assert "cached on this CPU" in again.reason(32)
    # A model this small is not measured: auto keeps fp32 and says why.
    chosen = quantize.choice(folder, "auto", 32, onnx=True)
    assert chosen.value == "none" and "MB of weights" in chosen.reason
