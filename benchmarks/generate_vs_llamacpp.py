"""Generation with SmolLM2-135M-Instruct (the bundled Q4_1 GGUF): warmstart against llama.cpp
(`llama-cpp-python` on the same GGUF file) and against warmstart's own torch route, side by side in
one run, 2 threads each.

Rows:
- quality: perplexity on held-out verses of the World English Bible (the last --passages rows of
  /work/shared/data/bible-en-es/verses.tsv) and greedy agreement with the fp32 model on --prompts
  prompts (the first six words of other verses, --agree-tokens new tokens), for GenAI's fp32, int8
  and int4 exports and llama.cpp's Q4_1;
- batch 1: greedy new tokens/s in-process ("Humanity today is a ", --new-tokens), each route in its
  own process (peak memory is that process's);
- whole process: wall time of `warmstart generate` and of a llama.cpp script for the same call;
- server: `warmstart serve` (its default) and `llama_cpp.server`, --clients concurrent streaming
  clients on /v1/completions: aggregate tokens/s, p50/p99 time to first token and per-token
  latency, the server's peak memory.

Full scale (about 20 minutes on a quiet 2-core machine):

    .venv/bin/python benchmarks/generate_vs_llamacpp.py --passages 200 --prompts 100 \
        --new-tokens 128 --clients 1,4,16 --requests 2

llama-cpp-python is a benchmark dependency only: `CMAKE_ARGS="-DGGML_NATIVE=ON" .venv/bin/pip
install "llama-cpp-python[server]"` (a source build, about 5 minutes)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

VERSES = Path("/work/shared/data/bible-en-es/verses.tsv")
PROMPT = "Humanity today is a "
THREADS = 2
ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def verses() -> list[str]:
    with VERSES.open(encoding="utf-8") as f:
        return [row["en"] for row in csv.DictReader(f, delimiter="\t") if row["en"].strip()]


def gguf() -> str:
    from warmstart.models.bundled import smollm2_gguf

    return str(smollm2_gguf())


# --- quality ---------------------------------------------------------------------------------


def quality(args) -> list[dict]:
    from warmstart.inference import onnx_lm, quantize
    from warmstart.models.bundled import smollm2

    texts = verses()
    held = texts[-args.passages :]
    prompts = [" ".join(t.split()[:6]) for t in texts[: args.prompts * 50 : 50]][: args.prompts]
    folder = smollm2()
    rows, reference = [], None
    for q in ("none", "int8", "int4"):
        lm = onnx_lm.OnnxLM(folder, quiet=True, quantize=q, block_size=args.block_size)
        ppl = quantize.perplexity(lm, held)
        outs = [greedy_genai(lm, p, args.agree_tokens) for p in prompts]
        reference = reference or outs
        name = {"none": "fp32", "int4": "int4 (the GGUF's own blocks)"}.get(q, q)
        rows.append(row_quality(f"GenAI {name}", ppl, outs, reference))
    try:
        from llama_cpp import Llama
    except ImportError:
        print("llama-cpp-python is not installed: no llama.cpp quality row", file=sys.stderr)
        return rows
    llm = Llama(gguf(), n_threads=THREADS, n_ctx=512, logits_all=True, verbose=False)
    outs = [
        llm.create_completion(p, max_tokens=args.agree_tokens, temperature=0)["choices"][0]["text"]
        for p in prompts
    ]
    rows.append(row_quality("llama.cpp Q4_1", llama_perplexity(llm, held), outs, reference))
    return rows


def greedy_genai(lm, prompt: str, tokens: int) -> str:
    og = lm.og
    ids = list(lm.tokenizer.encode(prompt))
    params = og.GeneratorParams(lm.model)
    params.set_search_options(max_length=len(ids) + tokens, do_sample=False)
    gen = og.Generator(lm.model, params)
    gen.append_tokens(ids)
    new = []
    while not gen.is_done() and len(new) < tokens:
        gen.generate_next_token()
        new.append(int(gen.get_next_tokens()[0]))
    full = lm.tokenizer.decode(ids + new)
    return full[len(lm.tokenizer.decode(ids)) :]


def llama_perplexity(llm, texts: list[str]) -> float:
    import math

    import numpy as np

    total, count = 0.0, 0
    for text in texts:
        ids = llm.tokenize(text.encode(), add_bos=True)
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids)], dtype=np.float64)[:-1]
        logits -= logits.max(axis=-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        total -= float(logp[np.arange(len(ids) - 1), ids[1:]].sum())
        count += len(ids) - 1
    return math.exp(total / count)


def row_quality(name: str, ppl: float, outs: list[str], reference: list[str]) -> dict:
    same = sum(a == b for a, b in zip(outs, reference))
    return {"route": name, "perplexity": ppl, "greedy_same": same, "prompts": len(outs)}


# --- batch 1, in-process (each route in its own process) --------------------------------------

CHILD = r"""
import json, os, sys, time
route, n, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[4])
prompt = "Humanity today is a "
if route.startswith("warmstart"):
    import warmstart
    kw = dict(prompts=[prompt], max_new_tokens=n, strategy="greedy", stream=False)
    if route == "warmstart-torch":
        import torch; torch.set_num_threads(2)
        kw.update(backend="torch")
    elif route == "warmstart-fp32":
        kw.update(backend="onnx", quantize="none")
    warmstart.generate(**dict(kw, max_new_tokens=8))  # warm: loads, exports, measures once
    dt = float("inf")
    for _ in range(repeats):  # the fastest counts, as for llama.cpp below
        t = time.perf_counter(); out = warmstart.generate(**kw)[0]; dt = min(dt, time.perf_counter() - t)
    tokens, text = out.completion_tokens[0], out.completions[0]
else:
    from llama_cpp import Llama
    llm = Llama(sys.argv[3], n_threads=2, n_ctx=512, verbose=False)
    llm.create_completion(prompt, max_tokens=8, temperature=0)
    dt = float("inf")
    for _ in range(repeats):
        t = time.perf_counter(); r = llm.create_completion(prompt, max_tokens=n, temperature=0)
        dt = min(dt, time.perf_counter() - t)
    tokens, text = r["usage"]["completion_tokens"], r["choices"][0]["text"]
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec, so a child
# of this (large) benchmark process would report the parent's peak.
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps({"tokens": tokens, "seconds": dt, "peak_mb": peak, "text": text}))
"""


def batch1(args) -> list[dict]:
    routes = ["warmstart", "warmstart-fp32", "warmstart-torch", "llama.cpp"]
    rows = []
    for route in routes:
        if route == "llama.cpp" and not has_llama():
            continue
        done = subprocess.run(
            [PY, "-c", CHILD, route, str(args.new_tokens), gguf(), str(args.repeats)],
            capture_output=True,
            text=True,
            env=env(),
        )
        if done.returncode != 0:
            print(f"{route} failed: {done.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(
            {
                "route": route,
                "tokens_per_s": r["tokens"] / r["seconds"],
                "peak_mb": r["peak_mb"],
                "text": r["text"][:60],
            }
        )
    return rows


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(THREADS), "TQDM_DISABLE": "1"}


def has_llama() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


# --- whole process ----------------------------------------------------------------------------

LLAMA_SCRIPT = (
    "import sys; from llama_cpp import Llama; "
    "llm = Llama(sys.argv[1], n_threads=2, n_ctx=512, verbose=False); "
    "print(llm.create_completion(sys.argv[2], max_tokens=int(sys.argv[3]), "
    "temperature=0)['choices'][0]['text'])"
)


def whole_process(args) -> list[dict]:
    warm = ROOT / ".venv" / "bin" / "warmstart"
    cmds = {
        "warmstart generate": [str(warm), "generate", PROMPT, "--max-new-tokens"]
        + [str(args.new_tokens), "--strategy", "greedy"],
    }
    if has_llama():
        cmds["llama.cpp (python)"] = [PY, "-c", LLAMA_SCRIPT, gguf(), PROMPT, str(args.new_tokens)]
    rows = []
    for name, cmd in cmds.items():
        subprocess.run(cmd, capture_output=True, env=env())  # warm the page cache
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            subprocess.run(cmd, capture_output=True, env=env(), check=True)
            times.append(time.perf_counter() - t)
        rows.append({"route": name, "seconds": min(times), "runs": len(times)})
    return rows


# --- server -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int) -> subprocess.Popen:
    import httpx

    # The server's log goes to a file: llama_cpp.server writes more than a pipe holds (its model
    # metadata) before it listens, and would wait forever for a reader.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env())
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(log.read().decode(errors="replace")[-2000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start")


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def one_stream(base: str, model: str, prompt: str, tokens: int, out: list) -> None:
    import httpx

    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    t0 = time.perf_counter()
    stamps = []
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                data = json.loads(line[6:])
                if data.get("choices") and data["choices"][0].get("text"):
                    stamps.append(time.perf_counter())
    if stamps:
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        out.append({"ttft": stamps[0] - t0, "gaps": gaps, "pieces": len(stamps), "end": stamps[-1]})


def load(base: str, model: str, clients: int, requests: int, tokens: int) -> dict:
    results: list = []
    prompts = [" ".join(v.split()[:8]) for v in verses()[1000 : 1000 + clients * requests]]

    def client(k: int) -> None:
        for j in range(requests):
            one_stream(base, model, prompts[k * requests + j], tokens, results)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = sorted(r["ttft"] for r in results)
    gaps = sorted(g for r in results for g in r["gaps"])
    pieces = sum(r["pieces"] for r in results)
    return {
        "clients": clients,
        "agg_tokens_per_s": pieces / wall,
        "ttft_p50": pct(ttft, 50),
        "ttft_p99": pct(ttft, 99),
        "tpot_p50": pct(gaps, 50),
        "tpot_p99": pct(gaps, 99),
    }


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def servers(args) -> list[dict]:
    warm = ROOT / ".venv" / "bin" / "warmstart"
    routes = {
        "warmstart serve": ([str(warm), "serve", "smollm2", "--log-level", "warning"], "smollm2")
    }
    routes["warmstart serve --backend torch"] = (
        [str(warm), "serve", "smollm2", "--backend", "torch", "--log-level", "warning"],
        "smollm2",
    )
    # One request at a time on the torch route (what it did before its continuous batching).
    routes["warmstart serve --backend torch --no-batching"] = (
        routes["warmstart serve --backend torch"][0] + ["--no-batching"],
        "smollm2",
    )
    if has_llama():
        routes["llama_cpp.server"] = (
            [
                PY,
                "-m",
                "llama_cpp.server",
                "--model",
                gguf(),
                "--n_threads",
                str(THREADS),
                "--n_ctx",
                "4096",
                # Its default interrupts a stream when another request arrives: queue them.
                "--interrupt_requests",
                "False",
            ],
            gguf(),
        )
    rows = []
    for name, (cmd, model) in routes.items():
        if args.servers and not any(name.endswith(k) for k in args.servers.split(",")):
            continue
        port = free_port()
        proc = start(cmd + ["--port", str(port)], port)
        base = f"http://127.0.0.1:{port}"
        try:
            one_stream(base, model, PROMPT, 8, [])  # warm
            for c in args.clients:
                row = load(base, model, c, args.requests, args.new_tokens)
                rows.append({"server": name, **row, "peak_mb": peak_mb(proc.pid)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        finally:
            proc.kill()
            proc.wait()
    return rows


def first_on_cpu() -> None:
    """Both routes then run at the same (top) priority: other jobs on the machine wait, so the
    ratios are those of a quiet machine. With autogroups on, nice alone ranks processes only
    within their own session, hence the autogroup's nice too."""
    try:
        Path("/proc/self/autogroup").write_text("-20")
    except OSError:
        pass
    os.nice(-20 - os.nice(0))


def table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    keys = list(rows[0])
    out = "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n"
    for r in rows:
        cells = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in r.values()]
        out += "| " + " | ".join(cells) + " |\n"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--passages", type=int, default=200)
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--agree-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    ap.add_argument("--requests", type=int, default=2, help="streams per client")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of each route, batch 1 and whole process (the fastest counts)",
    )
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--only", default="quality,batch1,process,server")
    ap.add_argument(
        "--servers", default="", help="e.g. 'serve,llama_cpp.server' (default: all three)"
    )
    ap.add_argument("--out", default=None, help="write the tables (markdown) here")
    ap.add_argument(
        "--nice",
        action="store_true",
        help="on a machine shared with other jobs: give this run (and every process it starts) the "
        "CPU first, through Linux's scheduler autogroup and nice -20 (needs root)",
    )
    args = ap.parse_args()
    if args.nice:
        first_on_cpu()
    parts = args.only.split(",")
    report = f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    report += f", this run at nice {os.nice(0)}\n\n"
    for name, fn in (
        ("quality", quality),
        ("batch1", batch1),
        ("process", whole_process),
        ("server", servers),
    ):
        if name in parts:
            started = time.perf_counter()
            rows = fn(args)
            report += f"## {name} ({time.perf_counter() - started:.0f} s)\n\n{table(rows)}\n"
            print(report, flush=True)
    report += f"load average at end: {os.getloadavg()[0]:.1f}\n"
    if args.out:
        Path(args.out).write_text(report, encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
