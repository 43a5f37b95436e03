"""What a sentence-transformers model folder says about how it embeds: its maximum sequence length
(sentence_bert_config.json), its pooling (1_Pooling/config.json) and whether it L2-normalises (a
Normalize module in modules.json). Read so that `embed` gives what `SentenceTransformer(...).encode`
gives, without depending on sentence-transformers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

POOLING_KEYS = (
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_lasttoken", "last"),
)


@dataclass(frozen=True)
class SentenceSettings:
    max_seq_length: int | None = None
    pooling: str | None = None
    normalize: bool = False


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sentence_settings(folder: str) -> SentenceSettings:
    """The folder's sentence-transformers settings; all unset for a plain transformers folder."""
    root = Path(folder)
    config = _json(root / "sentence_bert_config.json") or {}
    length = config.get("max_seq_length") if isinstance(config, dict) else None
    pooling = None
    for pooling_config in sorted(root.glob("*Pooling*/config.json")):
        found = _json(pooling_config) or {}
        pooling = next((how for key, how in POOLING_KEYS if found.get(key)), None)
        if pooling:
            break
    modules = _json(root / "modules.json")
    normalize = isinstance(modules, list) and any(
        isinstance(m, dict) and str(m.get("type", "")).endswith(".Normalize") for m in modules
    )
    return SentenceSettings(
        length if isinstance(length, int) and length > 0 else None, pooling, normalize
    )
