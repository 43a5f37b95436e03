"""Retrieval on Cranfield (../shared/data/cranfield, BEIR layout), side by side in one run: BM25, the
bundled MiniLM as it is, MiniLM fine-tuned with `finetune --task embedding` on Cranfield's training
judgements (queries 1-100), on SQuAD question -> paragraph pairs (squad/train.json), and on both;
then the best first stage re-ranked by a `finetune --task rerank` cross-encoder (trained on the
training queries, negatives mined with BM25). Every figure is on the test judgements (queries
101-150, qrels/test.tsv): nDCG@10, MRR@10 and Recall@100 (pytrec_eval). Prints a Markdown table
and writes the figures as JSON.

Quick (the default; fits a loaded 2-core machine in under an hour):

    .venv/bin/python benchmarks/retrieval.py --out runs/bench-retrieval

Full scale (256 tokens, 3 epochs, all 7,628 SQuAD questions, 7 negatives, re-rank the top 100):

    .venv/bin/python benchmarks/retrieval.py --full --out runs/bench-retrieval-full
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CRANFIELD = DATA / "cranfield"
SQUAD = DATA / "squad" / "train.json"
TEST = CRANFIELD / "qrels" / "test.tsv"
QUICK = {
    "max_length": 96,
    "epochs": 1.0,
    "batch_size": 32,
    "squad": 500,
    "negatives": 3,
    "rerank_epochs": 1.0,
    "rerank_length": 128,
    "top_k": 20,
}
FULL = {
    "max_length": 256,
    "epochs": 3.0,
    "batch_size": 32,
    "squad": None,
    "negatives": 7,
    "rerank_epochs": 2.0,
    "rerank_length": 256,
    "top_k": 100,
}
HEAD = ("ndcg@10", "mrr@10", "recall@100")


def main() -> None:
    import warmstart

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="runs/bench-retrieval")
    ap.add_argument("--full", action="store_true", help="full scale (see above)")
    ap.add_argument(
        "--lr", type=float, default=None, help="embedding learning rate (default: the kind's)"
    )
    ap.add_argument(
        "--sources",
        default="cranfield,squad,both",
        help="training data of the embedding routes, comma separated (cranfield, squad, both)",
    )
    args = ap.parse_args()
    s = FULL if args.full else QUICK
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    seconds: dict[str, float] = {}

    def timed(name: str, fn):
        t = time.time()
        result = fn()
        seconds[name] = round(time.time() - t, 1)
        print(f"[{name}: {seconds[name]:.0f}s]", flush=True)
        return result

    def save() -> None:  # after every route: a run cut short still leaves its figures
        (out / "retrieval.json").write_text(
            json.dumps({"settings": s, "rows": rows, "seconds": seconds}, indent=2)
        )

    def embedding(name: str, data: str, limit: int | None) -> str:
        run = out / name
        result = timed(
            name,
            lambda: warmstart.finetune(
                task="embedding",
                data=data,
                test=str(TEST),
                max_train_samples=limit,
                epochs=s["epochs"],
                batch_size=s["batch_size"],
                max_length=s["max_length"],
                lr=args.lr,
                out=str(run),
                overwrite=True,
                progress=False,
            ),
        )
        rows[f"MiniLM + embedding ({name})"] = result.metrics["test"]
        save()
        return str(result.model_dir)

    sources = {
        "cranfield": (str(CRANFIELD), None),
        "squad": (str(SQUAD), s["squad"]),
        "both": (f"{CRANFIELD},{SQUAD}", s["squad"]),
    }
    tuned = {k: embedding(k, *sources[k]) for k in args.sources.split(",")}
    # BM25 and MiniLM as it is: one evaluate call gives both rows.
    base = timed(
        "bm25 + minilm",
        lambda: warmstart.evaluate(
            model="minilm",
            data=str(TEST),
            first_stage="bm25",
            max_length=s["max_length"],
            progress=False,
        ),
    )
    stages = base.metrics["stages"]
    rows = {"BM25 (rank_bm25 Okapi)": stages["bm25"], "MiniLM as it is": stages["minilm"], **rows}
    save()
    best = max(tuned, key=lambda k: rows[f"MiniLM + embedding ({k})"]["ndcg@10"])
    reranker = timed(
        "rerank",
        lambda: warmstart.finetune(
            task="rerank",
            data=str(CRANFIELD),
            negatives=s["negatives"],
            epochs=s["rerank_epochs"],
            batch_size=8,
            max_length=s["rerank_length"],
            out=str(out / "reranker"),
            overwrite=True,
            progress=False,
        ),
    )
    reranked = timed(
        "re-rank",
        lambda: warmstart.evaluate(
            model=tuned[best],
            data=str(TEST),
            rerank=str(reranker.model_dir),
            top_k=s["top_k"],
            max_length=s["max_length"],
            progress=False,
        ),
    )
    first, last = list(reranked.metrics["stages"].values())
    rows[f"embedding ({best}) re-ranked @{s['top_k']} by the rerank model"] = last
    print(f"\nCranfield test queries 101-150 ({'full' if args.full else 'quick'} settings: {s})\n")
    print("| route | nDCG@10 | MRR@10 | Recall@100 |\n|---|---|---|---|")
    for name, m in rows.items():
        print(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in HEAD) + " |")
    print(
        f"\nre-ranking vs its first stage: nDCG@10 {last['ndcg@10']:.3f} vs {first['ndcg@10']:.3f}"
        f" ({last['ndcg@10'] / max(first['ndcg@10'], 1e-9):.2f}x)"
    )
    examples = reranked.metrics.get("examples", [])
    (out / "retrieval.json").write_text(
        json.dumps(
            {"settings": s, "rows": rows, "seconds": seconds, "examples": examples}, indent=2
        )
    )
    print(f"figures and five example rankings: {out / 'retrieval.json'}")


if __name__ == "__main__":
    main()
