"""Batch prediction on Ray vs one process, in one run: the same classifier (ONNX int8, the CPU
default) and the same IMDb reviews through `warmstart predict` (one process) and `predict --engine
ray` with 1 and 2 actors on a local Ray cluster. Prints rows/s, Ray's overhead at one actor, the
scaling at two, and whether every row is identical.

    make demo      # once: fine-tunes MiniLM into runs/demo/model
    .venv/bin/python benchmarks/ray_predict.py                   # the full run: 20,000 reviews
    .venv/bin/python benchmarks/ray_predict.py --rows 1000       # a smaller one on a busy machine

The input is written once as 4 Parquet shards (what Ray Data reads); the single process reads the
same rows from one file. The Ray timings include reading, scheduling, the actors' model loads and
writing the shards, and exclude starting the cluster (`ray.init`, once per session); the single
process's include reading, its model load and writing the JSON Lines. Each setting runs --rounds
times and its best round counts (a shared machine disturbs some rounds; the load average is
printed before and after).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMDB = ROOT.parent / "shared" / "data" / "imdb" / "movie_data.csv.gz"


def records_of_shards(folder: Path) -> list[dict]:
    df = pd.concat(
        [pd.read_parquet(f) for f in sorted(folder.glob("part-*.parquet"))], ignore_index=True
    )
    assert df["id"].tolist() == list(range(len(df))), "ids out of input order"
    return [
        {"text": r.text, "label": r.label, "score": r.score, "probabilities": r.probabilities}
        for r in df.itertuples()
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "runs" / "demo" / "model"))
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--max-length", type=int, default=256, help="tokens read per review")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--actors", default="1,2", help="actor counts to time")
    args = ap.parse_args()

    import ray

    import warmstart

    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    work = Path(tempfile.mkdtemp(prefix="ray-predict-"))
    df = pd.read_csv(IMDB, nrows=args.rows)[["review"]]
    whole = work / "reviews.parquet"
    df.to_parquet(whole)
    shards = work / "shards"
    shards.mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(df)), 4)):
        df.iloc[part].to_parquet(shards / f"part-{i}.parquet")
    common = dict(model=args.model, max_length=args.max_length, progress=False)
    # the ONNX int8 export is made once, before any timing
    warmstart.predict(**common, texts=["warm up"])

    times: dict[str, float] = {}
    outputs: dict[str, list[dict]] = {}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    counts = [int(n) for n in args.actors.split(",")]
    for _ in range(args.rounds):
        # One process on every core (predict's default: one text per core), and on one core: an
        # actor has one CPU (Ray sets its OMP_NUM_THREADS=1), so Ray's overhead is measured
        # against the single process on one core.
        for name, threads in (("one process", None), ("one process, 1 core", "1")):
            saved = os.environ.pop("OMP_NUM_THREADS", None)
            if threads:
                os.environ["OMP_NUM_THREADS"] = threads
            t0 = time.perf_counter()
            preds = warmstart.predict(**common, input=str(whole), out=str(work / "one.jsonl"))
            times[name] = min(times.get(name, 1e9), time.perf_counter() - t0)
            outputs[name] = [p.record() for p in preds]
            os.environ.pop("OMP_NUM_THREADS", None)
            if saved is not None:
                os.environ["OMP_NUM_THREADS"] = saved
        for n in counts:
            name, out = f"ray, {n} actor(s)", work / f"ray-{n}"
            t0 = time.perf_counter()
            warmstart.predict(**common, input=str(shards), out=str(out), engine="ray", actors=n)
            times[name] = min(times.get(name, 1e9), time.perf_counter() - t0)
            outputs[name] = records_of_shards(out)
    ray.shutdown()
    print(f"load average after: {os.getloadavg()[0]:.1f}")

    base = times["one process"]
    print(f"\n{args.rows} IMDb reviews, {Path(args.model).name} ONNX int8, best of {args.rounds}")
    print(f"{'setting':<20} {'rows/s':>8} {'vs one process':>15}  identical rows")
    for name, seconds in times.items():
        same = outputs[name] == outputs["one process"]
        print(f"{name:<20} {args.rows / seconds:8.1f} {base / seconds:14.2f}x  {same}")
    if "ray, 1 actor(s)" in times:
        overhead = times["ray, 1 actor(s)"] / times["one process, 1 core"] - 1
        print(f"\nRay's overhead at one actor: {overhead:+.1%} of one process's time on one core")


if __name__ == "__main__":
    main()
