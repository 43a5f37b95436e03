"""Grapheme-to-phoneme outputs scored two ways: as CMUdict writes phonemes (ARPAbet with stress
digits 0/1/2, what warmstart trains on and reports), and with the stress digits removed from outputs
and references alike (the 39-phoneme set the published CMUdict figures, e.g. Bisani & Ney 2008 and
Yao & Zweig 2015, are usually given in). Reads a run's predictions.jsonl (or evaluate's
--predictions file); a word with several pronunciations is right when it is any of them, as
warmstart scores it.

    .venv/bin/python benchmarks/g2p_rescore.py runs/g2p/predictions.jsonl
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from warmstart.metrics import text_metrics  # noqa: E402


def without_stress(phonemes: str) -> str:
    return re.sub(r"(?<=[A-Z])[012]\b", "", phonemes)


def main() -> None:
    rows = [json.loads(line) for line in Path(sys.argv[1]).read_text(encoding="utf-8").splitlines()]
    refs = [r.get("references") or [r["reference"]] for r in rows]
    hyps = [r["prediction"] for r in rows]
    print(f"{len(rows)} words")
    for name, f in (("with stress (as trained)", lambda t: t), ("stress removed", without_stress)):
        m = text_metrics(
            [f(h) for h in hyps], [[f(x) for x in r] for r in refs], ["exact_match", "wer"]
        )
        print(f"{name:<26} word error {1 - m['exact_match']:.2%}  phoneme error {m['wer']:.2%}")


if __name__ == "__main__":
    main()
