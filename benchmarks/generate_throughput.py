"""Generation, side by side in one run: the Hugging Face pipeline vs `warmstart generate`, same
model and prompt.

Two views, each in interleaved rounds (the best round counts; the load average is printed): 1. whole
process: `warmstart generate PROMPT --max-length 50 --num-return-sequences 5` (the seed's call) vs a
script doing the same with `pipeline("text-generation")` — start-up, imports, loading and
generation; 2. in-process, model loaded once: new tokens/s at batch 1 (greedy) and with 5 sampled
sequences, for `pipeline(...)(prompt)` vs warmstart's CausalLM + decoding path (what `serve` and
`generate --backend torch` run) and its ONNX Runtime GenAI route (what `generate` runs by default on
a CPU). Prints seconds, new tokens/s, the ratios, and whether greedy decoding gives the same tokens
as plain `model.generate` in the precision warmstart chose (torch) and in fp32 (ONNX).

    .venv/bin/python benchmarks/generate_throughput.py [--model smollm2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Humanity today is a "

PIPELINE_SCRIPT = """
import sys
from transformers import pipeline, set_seed
set_seed(0)
generator = pipeline("text-generation", model=sys.argv[1], device="cpu")
for out in generator(sys.argv[2], max_length=50, num_return_sequences=5, do_sample=True):
    print(out["generated_text"])
"""


def whole_process(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(
        cmd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--new-tokens", type=int, default=44, help="in-process: new tokens per sequence"
    )
    a = ap.parse_args()

    import torch
    from transformers import pipeline

    from warmstart.config import GenerateConfig
    from warmstart.inference.decoding import complete, generation_config
    from warmstart.models import resolve
    from warmstart.models.causal import CausalLM

    path = resolve(a.model, want="causal-lm")
    print(
        f"model {a.model} ({path}); {torch.get_num_threads()} threads; load average"
        f" {os.getloadavg()[0]:.1f}"
    )

    # 1. whole process
    ours_cmd = [
        sys.executable,
        "-m",
        "warmstart",
        "generate",
        PROMPT,
        "--model",
        a.model,
        "--max-length",
        "50",
        "--num-return-sequences",
        "5",
        "--seed",
        "0",
    ]
    hf_cmd = [sys.executable, "-c", PIPELINE_SCRIPT, path, PROMPT]
    torch_cmd = ours_cmd + ["--backend", "torch"]
    whole_process(
        ours_cmd
    )  # exports the model for ONNX Runtime GenAI once (cached), outside the timing
    whole = {
        "HF pipeline script": [],
        "warmstart generate": [],
        "warmstart generate --backend torch": [],
    }
    for _ in range(a.rounds):
        whole["HF pipeline script"].append(whole_process(hf_cmd))
        whole["warmstart generate"].append(whole_process(ours_cmd))
        whole["warmstart generate --backend torch"].append(whole_process(torch_cmd))
    for name, times in whole.items():
        print(
            f"whole process  {name:<36} best {min(times):6.2f} s  (rounds:"
            f" {', '.join(f'{t:.2f}' for t in times)})"
        )
    whole_ratio = min(whole["HF pipeline script"]) / min(whole["warmstart generate"])
    print(f"whole process ratio: {whole_ratio:.2f}x")

    # 2. in-process: the model loaded once, generation timed
    n = a.new_tokens
    hf = pipeline("text-generation", model=path, device="cpu")
    lm = CausalLM.load(a.model)
    ids = lm.tokenizer(PROMPT)["input_ids"]

    def hf_run(seqs: int) -> None:
        hf(
            PROMPT,
            max_new_tokens=n,
            min_new_tokens=n,
            num_return_sequences=seqs,
            do_sample=seqs > 1,
            return_full_text=False,
        )

    def ours_run(seqs: int) -> list:
        cfg = GenerateConfig(
            prompts=[PROMPT],
            model=a.model,
            max_new_tokens=n,
            num_return_sequences=seqs,
            strategy="sample" if seqs > 1 else "greedy",
        )
        gc = generation_config(cfg, lm.model.generation_config, [])
        gc.min_new_tokens = n
        return complete(lm, [PROMPT], [ids], [n], gc, [], None)

    rates: dict[str, dict[int, float]] = {"HF pipeline": {}, "warmstart": {}}
    for seqs in (1, 5):
        for name, fn in (("HF pipeline", hf_run), ("warmstart", ours_run)):
            fn(seqs)  # warm-up
            best = float("inf")
            for _ in range(a.rounds):
                torch.manual_seed(0)
                t = time.perf_counter()
                fn(seqs)
                best = min(best, time.perf_counter() - t)
            rates[name][seqs] = seqs * n / best
    for seqs in (1, 5):
        h, o = rates["HF pipeline"][seqs], rates["warmstart"][seqs]
        print(
            f"in-process, {seqs} sequence(s) x {n} new tokens: HF pipeline {h:6.1f} tok/s,"
            f" warmstart {o:6.1f} tok/s ({o / h:.2f}x; warmstart {lm.precision})"
        )

    # greedy decoding: warmstart's path gives plain model.generate's tokens in the same precision
    plain = lm.model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=n,
        do_sample=False,
    )[0, len(ids) :].tolist()
    cfg = GenerateConfig(prompts=[PROMPT], model=a.model, max_new_tokens=n, strategy="greedy")
    ours = complete(
        lm, [PROMPT], [ids], [n], generation_config(cfg, lm.model.generation_config, []), [], None
    )
    same = (
        lm.tokenizer.decode(plain, skip_special_tokens=True).strip()
        == ours[0].completions[0].strip()
    )
    print(f"greedy: warmstart's text equals plain model.generate's ({lm.precision}): {same}")

    # the ONNX Runtime GenAI route, in-process
    from warmstart.inference import onnx_lm

    def onnx_cfg(seqs: int) -> GenerateConfig:
        return GenerateConfig(
            prompts=[PROMPT],
            model=a.model,
            max_new_tokens=n,
            num_return_sequences=seqs,
            strategy="sample" if seqs > 1 else "greedy",
            backend="onnx",
            seed=0,
        )

    olm = onnx_lm.load(onnx_cfg(1))
    oids = olm.prompt_ids(PROMPT, False, None)
    for seqs in (1, 5):
        olm.complete(PROMPT, oids, n, onnx_cfg(seqs), [])  # warm-up
        best, made = float("inf"), 0
        for _ in range(a.rounds):
            t = time.perf_counter()
            g = olm.complete(PROMPT, oids, n, onnx_cfg(seqs), [])
            if time.perf_counter() - t < best:
                best, made = time.perf_counter() - t, sum(g.completion_tokens)
        h = rates["HF pipeline"][seqs]
        print(
            f"in-process, {seqs} sequence(s): warmstart onnx {made / best:6.1f} tok/s"
            f" ({made / best / h:.2f}x the HF pipeline; {made} tokens: sampling may end a sequence"
            " early)"
        )
    plain32 = hf.model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=n,
        do_sample=False,
    )[0, len(ids) :].tolist()
    onnx_text = olm.complete(PROMPT, oids, n, onnx_cfg(1), []).completions[0]
    same32 = hf.tokenizer.decode(plain32, skip_special_tokens=True).strip() == onnx_text.strip()
    print(f"greedy: the ONNX route's text equals plain model.generate's in fp32: {same32}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
