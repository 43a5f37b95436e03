"""`warmstart embed`: hidden-state features of every text, written to .parquet, .npy or
.safetensors.

Texts are embedded a chunk at a time and each finished chunk is saved (atomically) in a parts folder
next to the output, so an interrupted run picks up after the last finished chunk. The final file is
assembled from the parts, written to a temporary name and renamed: it either exists whole or not at
all. A run killed while it assembled (or before it removed the parts) is finished by running the
same command again: from the parts, with no model loaded.

    feats.parquet            columns: id, embedding (float32 list)[, label]
    feats.config.yaml        the resolved config: `warmstart embed --config feats.config.yaml` repeats it
    .feats.parquet.parts/    chunk-00000.npy ... while running (removed at the end)
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from warmstart import distributed
from warmstart.config import EmbedConfig, absolute_paths, make, refuse_inapplicable, settle, to_dict
from warmstart.data.tables import examples_from_table, find_column, read_table
from warmstart.errors import UserError
from warmstart.files import atomic_file, atomic_write_text
from warmstart.inference import ray_engine
from warmstart.inference.features import Embedder
from warmstart.models.download import pin

FORMATS = (".parquet", ".npy", ".safetensors")
# Options that change no number in the output: a resumed run may differ in them.
NOT_COMPARED = {"out", "overwrite", "progress", "batch_size", "cpu", "offline"}


@dataclass
class EmbedResult:
    out: Path
    rows: int
    dim: int
    seconds: float
    texts_per_s: float


@dataclass
class Table:
    texts: list[str]
    ids: list
    labels: list | None
    label_column: str | None


def read_inputs(cfg: EmbedConfig) -> Table:
    if not cfg.data:
        raise UserError("no texts to embed: pass --data FILE")
    df = read_table(cfg.data, cfg.limit)
    ex = examples_from_table(df, cfg.data, cfg.text_column, labelled=False)
    ids = (
        df[find_column(df, cfg.data, cfg.id_column, (), "id", "--id-column")].tolist()
        if cfg.id_column
        else list(range(len(df)))
    )
    labels, lcol = None, None
    if cfg.label_column:
        lcol = find_column(df, cfg.data, cfg.label_column, (), "label", "--label-column")
        labels = df[lcol].tolist()
    return Table(ex.texts, ids, labels, lcol)


def parts_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.parts")


def _check_resumable(parts: Path, settings: dict, overwrite: bool) -> None:
    """A parts folder is reused only by a run with the same settings; --overwrite discards it."""
    saved = parts / "settings.json"
    if parts.is_dir() and overwrite:
        shutil.rmtree(parts)
    if parts.is_dir():
        try:
            old = json.loads(saved.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old != settings:
            differ = (
                sorted(k for k in settings if (old or {}).get(k) != settings[k])
                if old
                else ["(unreadable)"]
            )
            raise UserError(
                f"'{parts}' holds chunks of an interrupted run with other options"
                f" ({', '.join(differ)}); rerun with those options to finish it, or pass"
                " --overwrite to start again"
            )
    parts.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, json.dumps(settings, sort_keys=True))


def _save_chunk(path: Path, x: np.ndarray) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, x)


def embed(config: EmbedConfig | None = None, **kwargs) -> EmbedResult | ray_engine.RayOutput:
    """Turn texts into sentence vectors with an encoder (pooling and normalisation as its
    sentence-transformers settings say) and write them; ``engine="ray"`` spreads a large corpus over
    a Ray cluster."""
    cfg = make(EmbedConfig, config, kwargs)
    ray_engine.refuse_ray_options(cfg)
    cfg = absolute_paths(cfg, "data", "model")
    if cfg.engine == "ray":  # Parquet shards in the folder --out, written by Ray actors
        if not cfg.data:
            raise UserError("no texts to embed: pass --data FILE or FOLDER")
        return ray_engine.embed(settle(cfg, pin(cfg)))
    if not cfg.out:
        raise UserError("no output file: pass --out FILE (.parquet, .npy or .safetensors)")
    out = Path(cfg.out).expanduser().resolve()
    if out.suffix not in FORMATS:
        raise UserError(
            f"--out '{cfg.out}': unknown format '{out.suffix}' (use {', '.join(FORMATS)})"
        )
    if (
        out.suffix != ".parquet"
    ):  # a .npy is the matrix alone; .safetensors keeps integer ids, never labels
        refuse_inapplicable(
            cfg,
            ("label_column",) if out.suffix == ".safetensors" else ("label_column", "id_column"),
            f"a {out.suffix} output (they are copied into .parquet outputs)",
        )
    parts = parts_dir(out)
    exists = f"'{out}' already exists; pass --overwrite to replace it"
    if out.exists() and not cfg.overwrite and not parts.is_dir():
        raise UserError(exists)
    table = read_inputs(cfg)
    # A Hugging Face --model is fetched now if it must be and pinned to one commit (the
    # commit is one of the settings a resumed run must share).
    cfg = settle(cfg, pin(cfg))
    settings = {k: v for k, v in to_dict(cfg).items() if k not in NOT_COMPARED}
    settings["rows"] = len(table.texts)
    n_chunks = -(-len(table.texts) // cfg.chunk_size)
    # Every chunk written by a run killed while it assembled them (or just after, its output renamed
    # but its chunks not yet removed): this rerun only assembles, with no model to load.
    assemble_only = not cfg.overwrite and n_chunks > 0 and _all_chunks(parts, settings, n_chunks)
    if out.exists() and not cfg.overwrite and not assemble_only:
        raise UserError(exists)
    embedder = (
        None
        if assemble_only
        else Embedder.load(
            cfg.model,
            cfg.pooling,
            cfg.layers,
            cfg.layer_mode,
            cfg.normalize,
            cfg.max_length,
            cfg.cpu,
            cfg.precision,
            hub=cfg,
        )
    )
    if (
        distributed.is_main()
    ):  # under accelerate launch: one process checks/prepares the parts folder
        _check_resumable(parts, settings, cfg.overwrite)
    distributed.barrier()

    started = time.perf_counter()
    done_before = 0
    from warmstart.progress import progress_bar

    mine = distributed.shard(
        n_chunks
    )  # every chunk, or this process's share of them under accelerate launch
    quiet = not cfg.progress or not distributed.is_main()
    with progress_bar(total=len(table.texts), desc="embed", unit="text", enabled=not quiet) as bar:
        for c in mine:
            path = parts / f"chunk-{c:05d}.npy"
            lo, hi = c * cfg.chunk_size, min((c + 1) * cfg.chunk_size, len(table.texts))
            if path.is_file():  # finished by an earlier, interrupted run
                done_before += hi - lo
                bar.update(hi - lo)
                continue
            x = embedder.embed(table.texts[lo:hi], cfg.batch_size)
            _save_chunk(path, x)
            bar.update(hi - lo)
    seconds = time.perf_counter() - started
    distributed.barrier()  # all chunks written; the main process assembles them in input order
    dim = (
        embedder.dim
        if embedder is not None
        else np.load(parts / "chunk-00000.npy", mmap_mode="r").shape[1]
    )
    if not distributed.is_main():
        return EmbedResult(out, len(table.texts), dim, round(seconds, 2), 0.0)
    _assemble(out, parts, n_chunks, table, dim)
    cfg_path = out.with_name(out.name.rsplit(".", 1)[0] + ".config.yaml")
    atomic_write_text(cfg_path, yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    shutil.rmtree(parts, ignore_errors=True)
    new = len(table.texts) - done_before
    return EmbedResult(
        out,
        len(table.texts),
        dim,
        round(seconds, 2),
        round(new / seconds, 2) if new and seconds > 0 else 0.0,
    )


def _all_chunks(parts: Path, settings: dict, n_chunks: int) -> bool:
    """Whether ``parts`` holds every chunk of a run with these settings."""
    try:
        same = json.loads((parts / "settings.json").read_text(encoding="utf-8")) == settings
    except (OSError, ValueError):
        return False
    return same and all((parts / f"chunk-{c:05d}.npy").is_file() for c in range(n_chunks))


def _chunks(parts: Path, n_chunks: int):
    for c in range(n_chunks):
        yield np.load(parts / f"chunk-{c:05d}.npy")


def _assemble(out: Path, parts: Path, n_chunks: int, table: Table, dim: int) -> None:
    """Join the chunk files into ``out`` one chunk at a time (memory stays one chunk), then
    rename."""
    n = len(table.texts)
    for stale in out.parent.glob(
        f".{out.name}.tmp*"
    ):  # the unfinished file of an assembly that was killed
        stale.unlink(missing_ok=True)
    with atomic_file(out) as tmp:
        if out.suffix == ".npy":
            mm = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
            start = 0
            for x in _chunks(parts, n_chunks):
                mm[start : start + len(x)] = x
                start += len(x)
            mm.flush()
            del mm
        elif out.suffix == ".parquet":
            _write_parquet(tmp, parts, n_chunks, table, dim)
        else:
            from safetensors.numpy import save_file

            tensors = {
                "embeddings": (
                    np.concatenate(list(_chunks(parts, n_chunks)))
                    if n
                    else np.empty((0, dim), np.float32)
                )
            }
            if all(isinstance(i, (int, np.integer)) for i in table.ids):
                tensors["ids"] = np.asarray(table.ids, dtype=np.int64)
            save_file(tensors, str(tmp), metadata={"format": "warmstart-embed", "dim": str(dim)})


def _write_parquet(tmp: Path, parts: Path, n_chunks: int, table: Table, dim: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = 0
    writer = None
    try:
        for x in _chunks(parts, n_chunks):
            stop = start + len(x)
            cols = {
                "id": pa.array(table.ids[start:stop]),
                "embedding": pa.FixedSizeListArray.from_arrays(
                    pa.array(x.reshape(-1), pa.float32()), dim
                ),
            }
            if table.labels is not None:
                cols[table.label_column or "label"] = pa.array(table.labels[start:stop])
            batch = pa.table(cols)
            if writer is None:
                writer = pq.ParquetWriter(tmp, batch.schema, metadata_collector=None)
            writer.write_table(batch)
            start = stop
        if writer is None:  # no rows: still a valid, empty file
            pq.write_table(
                pa.table(
                    {
                        "id": pa.array([], pa.int64()),
                        "embedding": pa.array([], pa.list_(pa.float32(), dim)),
                    }
                ),
                tmp,
            )
    finally:
        if writer is not None:
            writer.close()


def report(cfg: EmbedConfig, r: EmbedResult | ray_engine.RayOutput) -> str:
    if isinstance(r, ray_engine.RayOutput):
        return (
            f"{r.rows} texts -> {len(r.shards)} Parquet shard(s) in {r.out} ({r.actors} actors,"
            f" {r.rows_per_s} texts/s)\n"
        )
    return (
        f"{r.rows} texts -> {r.dim} features each, written to {r.out} ({r.texts_per_s} texts/s)\n"
    )
