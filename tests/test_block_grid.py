"""--quantize int4 of a model de-quantised from GGUF keeps the file's own blocks (inference/block_grid):
found from the fp32 values alone, exactly, and run as MatMulNBits / GatherBlockQuantized; a model
whose weights are not on such a grid is rounded by GenAI's builder as before."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from gguf import GGMLQuantizationType as GGML
from gguf import quants

import tiny_llama
from warmstart.inference import block_grid, onnx_lm, quantize
from warmstart.inference.onnx_lm import OnnxLM

tiny_llama_session = tiny_llama.tiny_llama_session
cache_fixture = tiny_llama.session_cache
pytestmark = pytest.mark.skipif(
    not onnx_lm.installed(), reason="onnxruntime-genai is not installed"
)
TEXTS = quantize.PASSAGES[:4]


def through(kind: GGML, x: np.ndarray) -> np.ndarray:
    """``x`` [rows, features] stored as GGUF ``kind`` and read back, as transformers loads it."""
    return quants.dequantize(quants.quantize(x, kind), kind)


@pytest.mark.parametrize("kind", [GGML.Q4_0, GGML.Q4_1, GGML.Q8_0])
def test_each_gguf_grid_is_found_from_the_values_alone_and_rebuilt_bit_for_bit(kind):
    rows = np.random.default_rng(0).standard_normal((48, 96)).astype(np.float32) * 0.05
    stored = through(kind, rows)  # [out, in]: GGUF's blocks run along the input features
    found = block_grid.find(np.ascontiguousarray(stored.T))  # an ONNX MatMul weight is [in, out]
    assert found is not None and found.kind == kind.name
    codes = found.codes.astype(np.float32)
    if found.kind == "Q8_0":
        rebuilt = (codes - 128) * found.scales[..., None]
    else:
        rebuilt = (codes - 8) * found.scales[..., None]
        if found.offsets is not None:
            rebuilt += found.offsets[..., None]
    assert np.allclose(rebuilt.reshape(48, 96), stored, rtol=0, atol=1e-6)


def test_weights_not_on_a_grid_are_not_taken_for_one():
    rng = np.random.default_rng(1)
    plain = rng.standard_normal((64, 32)).astype(np.float32)
    assert block_grid.find(plain) is None
    nearly = np.ascontiguousarray(through(GGML.Q4_1, plain.T).T)
    nearly[5, 3] += 1e-3  # one value off the grid: the weight stays fp32
    assert block_grid.find(nearly) is None
    assert block_grid.find(np.zeros((48, 8), np.float32)[:40]) is None  # 40 is no whole block


@pytest.fixture(scope="session")
def gguf_llama(tiny_llama_session, tmp_path_factory):
    """The session's tiny Llama as if read from a Q4_1 GGUF file (the bundled SmolLM2's format):
    every linear weight de-quantised from Q4_1, the tied embedding from Q8_0."""
    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("gguf-llama") / "tiny-q4_1"
    shutil.copytree(tiny_llama_session, folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                kind = GGML.Q8_0 if "embed_tokens" in name else GGML.Q4_1
                p.copy_(torch.from_numpy(through(kind, p.numpy())))
    model.save_pretrained(folder)
    return folder


def perplexity(folder, quantize_as: str, block_size: int = 32) -> tuple[float, OnnxLM]:
    lm = OnnxLM(folder, quiet=True, quantize=quantize_as, block_size=block_size)
    return quantize.perplexity(lm, TEXTS), lm


def test_int4_of_a_gguf_model_keeps_its_blocks_and_scores_as_fp32_where_rounding_again_does_not(
    gguf_llama,
):
    fp32, _ = perplexity(gguf_llama, "none")
    kept, lm = perplexity(gguf_llama, "int4")
    found = json.loads((lm.exported / onnx_lm.GRID).read_text())
    # 2 layers x (qkv, o, gate, up, down) Q4_1; the LM head and the embedding table Q8_0
    assert found == {"Q4_0": 0, "Q4_1": 10, "Q8_0": 2, "fp32": 0}
    assert "GGUF's own blocks" in lm.weights
    graph = onnx.load(str(lm.exported / "model.onnx"), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    assert "MatMul" in ops  # the Q4_1 offsets' small fp32 products
    assert ops.count("MatMulNBits") == 11 and ops.count("GatherBlockQuantized") == 1
    assert "Transpose" not in ops and not any(i.dims == [64, 49152] for i in graph.initializer)
    # Rounded again by the builder (blocks of 64 take that path): further from fp32.
    again, lm64 = perplexity(gguf_llama, "int4", block_size=64)
    assert not (lm64.exported / onnx_lm.GRID).exists()
    print(f"perplexity fp32 {fp32:.4f}, blocks kept {kept:.4f}, rounded again {again:.4f}")
    assert abs(kept / fp32 - 1) < 0.005
    assert abs(again / fp32 - 1) > 2 * abs(kept / fp32 - 1)
