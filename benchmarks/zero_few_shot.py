"""Every way of using a pre-trained model without (much) fine-tuning, on one fixed IMDb test slice.

.venv/bin/python benchmarks/zero_few_shot.py [--only
probe,similarity,prompt,setfit,fewprompt,incontext]

Test: the 1,000 reviews from row 40,000 of ../shared/data/imdb/movie_data.csv.gz (the seed's test
part); valid (picks the probe's C): 500 reviews from row 35,000; training examples: rows 0-34,999
only. Each method runs as the CLI command a user would type (printed), with the bundled models
(MiniLM, SmolLM2-135M-Instruct); the table gives accuracy, macro F1 and texts/s of the prediction
pass. Nothing here is a test: it takes tens of minutes on 2 CPU cores."""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
IMDB = ROOT.parent / "shared" / "data" / "imdb" / "movie_data.csv.gz"
LABELS = "negative,positive"  # IMDb's sentiment 0/1, named in order

NEG = [
    "This is a negative movie review.",
    "I hated this movie. It was terrible and boring.",
    "A waste of time, the worst film I have seen.",
    "Bad acting, awful plot, do not watch it.",
]
POS = [
    "This is a positive movie review.",
    "I loved this movie. It was wonderful and moving.",
    "One of the best films I have seen.",
    "Great acting, brilliant story, highly recommended.",
]
CHAT_TEMPLATE = "Is the sentiment of this movie review positive or negative?\n\n{text}"


def slices(work: Path, train_rows: int, test_rows: int) -> dict[str, Path]:
    df = pd.read_csv(IMDB)
    parts = {
        "train": df.iloc[:train_rows],
        "pool": df.iloc[:35000],
        "valid": df.iloc[35000:35500],
        "test": df.iloc[40000 : 40000 + test_rows],
    }
    out = {}
    for name, part in parts.items():
        out[name] = work / f"{name}.csv"
        if not out[name].is_file():
            part.to_csv(out[name], index=False)
    return out


def run(args: list[str], log: list[str]) -> float:
    cmd = [sys.executable, "-m", "warmstart", *args]
    shown = "warmstart " + " ".join(shlex.quote(a) for a in args)
    print(f"\n$ {shown}", flush=True)
    log.append(shown)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="probe,similarity,prompt,setfit,fewprompt,incontext")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench-zero-few"))
    p.add_argument("--train-rows", type=int, default=4000, help="probe training rows (from row 0)")
    p.add_argument("--test-rows", type=int, default=1000)
    p.add_argument(
        "--prompt-test-rows", type=int, default=None, help="fewer test rows for the LM methods"
    )
    p.add_argument("--repeats", type=int, default=3, help="draws of the k examples for setfit")
    p.add_argument(
        "--prompt-repeats",
        type=int,
        default=5,
        help=(
            "draws for fewshot prompt (the test texts are "
            "scored once for all draws, so draws are cheap)"
        ),
    )
    p.add_argument("--k", type=int, default=16, help="examples per class for few-shot")
    p.add_argument(
        "--layers", default="1:", help="MiniLM layers whose mean-pooled states the probe gets"
    )
    p.add_argument(
        "--reuse-features", action="store_true", help="keep feature files of an earlier run"
    )
    a = p.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    files = slices(work, a.train_rows, a.test_rows)
    lm_test = files["test"]
    if a.prompt_test_rows:
        lm_test = work / f"test{a.prompt_test_rows}.csv"
        pd.read_csv(files["test"]).iloc[: a.prompt_test_rows].to_csv(lm_test, index=False)
    only = set(a.only.split(","))
    rows, commands = [], []

    if "probe" in only:
        feats, seconds = {}, 0.0
        for role in ("train", "valid", "test"):
            feats[role] = work / f"{role}.features.parquet"
            if a.reuse_features and feats[role].is_file():
                continue
            seconds = run(
                [
                    "embed",
                    "--data",
                    str(files[role]),
                    "--out",
                    str(feats[role]),
                    "--label-column",
                    "sentiment",
                    "--layers",
                    a.layers,
                    "--max-length",
                    "512",
                    "--overwrite",
                    "--no-progress",
                ],
                commands,
            )
        run(
            [
                "probe",
                "--train",
                str(feats["train"]),
                "--valid",
                str(feats["valid"]),
                "--test",
                str(feats["test"]),
                "--label-names",
                LABELS,
                "--out",
                str(work / "probe"),
                "--overwrite",
                "--no-progress",
            ],
            commands,
        )
        m = json.loads((work / "probe" / "metrics.json").read_text())
        # texts/s of the test split's `embed` command, model loading included (the probe itself is
        # instant)
        rows.append(
            (
                (
                    f"probe: logistic regression on MiniLM layers {a.layers} (mean-pooled, 512"
                    f" tokens), {a.train_rows} train"
                ),
                m["test"]["accuracy"],
                m["test"]["f1_macro"],
                round(a.test_rows / seconds, 2) if seconds else "(reused)",
                a.test_rows,
            )
        )

    def zeroshot(name: str, extra: list[str], test: Path) -> None:
        out = work / f"zeroshot-{name}.json"
        run(
            [
                "zeroshot",
                "--labels",
                LABELS,
                "--data",
                str(test),
                "--out",
                str(out),
                "--no-progress",
                *extra,
            ],
            commands,
        )
        m = json.loads(out.read_text())
        rows.append((f"zero-shot {name}", m["accuracy"], m["f1_macro"], m["texts_per_s"], m["n"]))

    desc = [f"negative={d}" for d in NEG] + [f"positive={d}" for d in POS]
    if "similarity" in only:
        zeroshot(
            "similarity",
            [
                "--method",
                "similarity",
                "--max-length",
                "256",
                *[x for d in desc for x in ("--descriptions", d)],
            ],
            files["test"],
        )
    if "prompt" in only:
        zeroshot(
            "prompt",
            [
                "--method",
                "prompt",
                "--chat",
                "--template",
                CHAT_TEMPLATE,
                "--answer-prefix",
                "The sentiment of the review is",
                "--max-length",
                "256",
                "--truncate",
                "head+tail",
                "--batch-size",
                "8",
            ],
            lm_test,
        )

    def fewshot(name: str, extra: list[str], test: Path) -> None:
        out = work / f"fewshot-{name}"
        run(
            [
                "fewshot",
                "--data",
                str(files["pool"]),
                "--test",
                str(test),
                "--labels",
                LABELS,
                "--k",
                str(a.k),
                "--out",
                str(out),
                "--overwrite",
                "--no-progress",
                *extra,
            ],
            commands,
        )
        m = json.loads((out / "metrics.json").read_text())
        speed = sum(r["test_texts_per_s"] for r in m["repeats"]) / len(m["repeats"])
        acc = (
            f"{m['accuracy_mean']:.4f} ± {m['accuracy_std']:.4f}"
            if len(m["repeats"]) > 1
            else m["accuracy_mean"]
        )
        rows.append(
            (
                f"{2 * a.k}-shot {name} ({len(m['repeats'])} draws)",
                acc,
                m["f1_macro_mean"],
                round(speed, 2),
                m["test_rows"],
            )
        )

    if "setfit" in only:
        fewshot(
            "setfit",
            [
                "--method",
                "setfit",
                "--repeats",
                str(a.repeats),
                "--max-length",
                "256",
                "--lr",
                "5e-5",
            ],
            files["test"],
        )
    if "fewprompt" in only:
        fewshot(
            "prompt",
            [
                "--method",
                "prompt",
                "--repeats",
                str(a.prompt_repeats),
                "--chat",
                "--template",
                CHAT_TEMPLATE,
                "--answer-prefix",
                "The sentiment of the review is",
                "--max-length",
                "256",
                "--truncate",
                "head+tail",
                "--batch-size",
                "8",
                *[x for d in desc for x in ("--descriptions", d)],
            ],
            lm_test,
        )
    if "incontext" in only:
        fewshot(
            "incontext",
            [
                "--method",
                "incontext",
                "--chat",
                "--template",
                CHAT_TEMPLATE,
                "--answer-prefix",
                "The sentiment of the review is",
                "--max-length",
                "256",
                "--example-max-length",
                "64",
                "--batch-size",
                "8",
            ],
            lm_test,
        )

    print("\n| method | accuracy | macro F1 | texts/s | test rows |\n|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    (work / "commands.txt").write_text("\n".join(commands) + "\n")


if __name__ == "__main__":
    main()
