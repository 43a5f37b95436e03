"""An int4 export that keeps a GGUF model's own quantised blocks, exactly.

The bundled SmolLM2 ships as a Q4_1 GGUF file: every linear weight is stored in blocks of 32 input
features, each block ``d * q + m`` with 4-bit ``q`` and two fp16 numbers. transformers reads it
de-quantised to fp32, so "fp32" here already holds 4-bit information, and GenAI's builder asked for
int4 rounds those values *again*, onto its own grid (one scale per block, zero point 8): the two
roundings add up (+22% perplexity, docs/quantised-generation.md), while llama.cpp runs the file's
own blocks and gives the fp32 model's text.

This module finds those blocks again in the fp32 export, from the values alone (no GGUF names, so
the fused q/k/v weights and the rows transformers permutes need no mapping), and writes each as
ONNX Runtime's MatMulNBits with the same numbers:
- Q4_0 (``d * (q - 8)``): MatMulNBits' own symmetric 4-bit grid, as is.
- Q8_0 (``d * q``, the tied embedding / LM head): 8-bit MatMulNBits with its default zero point,
  and the embedding table as GatherBlockQuantized over the same codes.
- Q4_1 (``d * q + m``): MatMulNBits keeps ``d * (q - 8)``; the block's offset ``m + 8 d`` times the
  sum of the input's features in that block is added by a small fp32 MatMul (one block sum per
  input, shared by the weights that read it). MatMulNBits could take a float zero point instead,
  but ONNX Runtime 1.32's CPU kernel then de-quantises the whole weight on every call (45x slower,
  measured); an integer zero point cannot express ``m``.
Found means exact: a block is accepted only where re-building it from (d, q, m) in fp32 gives back
the very same fp32 values, bit for bit. A weight whose blocks are not all on one grid stays an fp32
MatMul; a model with none found is not converted (the caller rounds it with the builder instead).
The CPU kernel multiplies in int8 (accuracy level 4, the builder's default for CPUs), as llama.cpp
quantises activations to 8 bits for the same dot products."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BLOCK = 32  # GGUF's block for Q4_0, Q4_1 and Q8_0
ACCURACY_LEVEL = 4  # int8 activations: MLAS's fastest CPU path


class NotFound(Exception):
    """No weight of the model is on a GGUF grid."""


@dataclass(frozen=True)
class Blocks:
    """One weight [K, N] as MatMulNBits holds it: ``codes`` [N, K/32, 32] (unsigned), ``scales``
    [N, K/32]; ``offsets`` [N, K/32] (Q4_1's ``m + 8 d``) or None."""

    kind: str
    bits: int
    codes: np.ndarray
    scales: np.ndarray
    offsets: np.ndarray | None = None


def as_blocks(weight: np.ndarray) -> np.ndarray | None:
    """[K, N] → [N, K/32, 32]: each output's input features in blocks, as GGUF stores them."""
    k, n = weight.shape
    if k % BLOCK or weight.dtype != np.float32:
        return None
    return np.ascontiguousarray(weight.T).reshape(n, k // BLOCK, BLOCK)


def fp16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def safe(d: np.ndarray) -> np.ndarray:
    return np.where(d == 0, np.float32(1), d)[..., None]


def q4_0(x: np.ndarray) -> Blocks | None:
    # The value of largest magnitude is the one quantised to 0: it is -8 d exactly.
    extreme = np.take_along_axis(x, np.abs(x).argmax(-1)[..., None], -1)[..., 0]
    d = fp16(extreme / np.float32(-8))
    q = np.clip(np.rint(x / safe(d) + 8), 0, 15)
    if not np.array_equal(d[..., None] * (q - np.float32(8)), x):
        return None
    return Blocks("Q4_0", 4, q.astype(np.uint8), d)


def q4_1(x: np.ndarray) -> Blocks | None:
    # The smallest value is quantised to 0 (it is m), the largest to 15.
    m = x.min(-1)
    d = fp16((x.max(-1) - m) / np.float32(15))
    q = np.clip(np.rint((x - m[..., None]) / safe(d)), 0, 15)
    if not np.array_equal(d[..., None] * q + m[..., None], x):
        return None
    return Blocks("Q4_1", 4, q.astype(np.uint8), d, m + np.float32(8) * d)


def q8_0(x: np.ndarray) -> Blocks | None:
    d = fp16(np.abs(x).max(-1) / np.float32(127))
    q = np.clip(np.rint(x / safe(d)), -128, 127)
    if not np.array_equal(q * d[..., None], x):
        return None
    return Blocks("Q8_0", 8, (q + 128).astype(np.uint8), d)


def find(weight: np.ndarray) -> Blocks | None:
    """The GGUF blocks ``weight`` [K, N] was de-quantised from, or None."""
    x = as_blocks(weight)
    if x is None:
        return None
    for kind in (q4_0, q4_1, q8_0):
        found = kind(x)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class Table:
    node: object
    initializers: list


def embedding(gather, weight: str, initializers: dict) -> Table | None:
    """An embedding table stored Q8_0 (rows of the transposed ``weight``, blocks along the hidden
    features) as GatherBlockQuantized over the same codes and scales; None for other grids."""
    from onnx import helper, numpy_helper

    blocks = find(numpy_helper.to_array(initializers[weight]))
    axis = next((a.i for a in gather.attribute if a.name == "axis"), 0)
    if blocks is None or blocks.kind != "Q8_0" or axis != 0:
        return None
    rows, n_blocks = blocks.scales.shape
    stem = f"{weight.removesuffix('.weight')}.table"
    return Table(
        helper.make_node(
            "GatherBlockQuantized",
            [f"{stem}.codes", gather.input[1], f"{stem}.scales"],
            list(gather.output),
            name=f"{gather.name}BlockQuantized",
            domain="com.microsoft",
            gather_axis=0,
            quantize_axis=1,
            block_size=BLOCK,
            bits=8,
        ),
        [
            numpy_helper.from_array(blocks.codes.reshape(rows, n_blocks * BLOCK), f"{stem}.codes"),
            numpy_helper.from_array(blocks.scales, f"{stem}.scales"),
        ],
    )


def packed(blocks: Blocks) -> np.ndarray:
    """MatMulNBits' B input [N, K/32, 32 * bits / 8]: 4-bit codes two to a byte, the first in the
    low nibble."""
    if blocks.bits == 8:
        return blocks.codes
    c = blocks.codes
    return (c[..., 0::2] | (c[..., 1::2] << 4)).astype(np.uint8)


def convert(source: Path, target: Path) -> dict[str, int]:
    """Write ``source`` (a GenAI fp32 export) into ``target`` with every weight found on a GGUF grid
    as MatMulNBits; returns how many weights of each kind were found (``fp32``: kept). Writes
    nothing when none was found."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source / "model.onnx"))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    counts = {"Q4_0": 0, "Q4_1": 0, "Q8_0": 0, "fp32": 0}
    # A tied embedding is read as Gather(Transpose(the LM head's weight)).
    transposed = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Transpose" and n.input[0] in initializers
    }
    nodes, added, block_sums = [], [], {}
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in transposed:
            table = embedding(node, transposed[node.input[0]], initializers)
            if table is not None:
                nodes.append(table.node)
                added += table.initializers
                readers[node.input[0]] -= 1
                counts["Q8_0"] += 1
                continue
        weight = node.input[1] if node.op_type == "MatMul" and len(node.input) == 2 else None
        blocks = None
        if weight in initializers:
            blocks = find(numpy_helper.to_array(initializers[weight]))
            counts["fp32" if blocks is None else blocks.kind] += 1
        if blocks is None:
            nodes.append(node)
            continue
        readers[weight] -= 1
        n_out, n_blocks = blocks.scales.shape
        stem, x, y = weight.removesuffix(".weight"), node.input[0], node.output[0]
        added += [
            numpy_helper.from_array(packed(blocks), f"{stem}.codes"),
            numpy_helper.from_array(blocks.scales.reshape(-1), f"{stem}.scales"),
        ]
        grid_out = y if blocks.offsets is None else f"{y}/grid"
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [x, f"{stem}.codes", f"{stem}.scales"],
                [grid_out],
                name=f"{node.name}NBits",
                domain="com.microsoft",
                K=n_blocks * BLOCK,
                N=n_out,
                bits=blocks.bits,
                block_size=BLOCK,
                accuracy_level=ACCURACY_LEVEL,
            )
        )
        if blocks.offsets is None:
            continue
        if x not in block_sums:  # one per input, shared by the weights that read it
            block_sums[x] = f"{x}/block_sums"
            nodes += [
                helper.make_node("Reshape", [x, "grid/blocks"], [f"{x}/in_blocks"]),
                helper.make_node(
                    "ReduceSum", [f"{x}/in_blocks", "grid/last"], [block_sums[x]], keepdims=0
                ),
            ]
        added.append(
            numpy_helper.from_array(np.ascontiguousarray(blocks.offsets.T), f"{stem}.offsets")
        )
        nodes += [
            helper.make_node("MatMul", [block_sums[x], f"{stem}.offsets"], [f"{y}/offset"]),
            helper.make_node("Add", [grid_out, f"{y}/offset"], [y]),
        ]
    if not any(counts[k] for k in ("Q4_0", "Q4_1", "Q8_0")):
        return counts
    added += [
        numpy_helper.from_array(np.array([0, 0, -1, BLOCK], np.int64), "grid/blocks"),
        numpy_helper.from_array(np.array([-1], np.int64), "grid/last"),
    ]
    # A Transpose nothing reads any more goes, and with it the fp32 weight it read.
    for node in list(nodes):
        if node.op_type == "Transpose" and readers.get(node.output[0], 0) <= 0:
            nodes.remove(node)
            readers[node.input[0]] -= 1
    kept = [i for i in graph.initializer if readers.get(i.name, 0) > 0]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + added)
    target.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and not f.name.startswith("model.onnx"):
            shutil.copy2(f, target / f.name)
    onnx.save(
        model,
        str(target / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=1024,
    )
    return counts
