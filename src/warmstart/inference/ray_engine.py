"""Batch inference on a Ray cluster (`--engine ray`): Ray Data reads the input files, an actor pool of
model replicas scores them, and the rows come back in input order to be written as Parquet shards.

Each actor loads the model once, exactly as one process would (``Classifier.load`` / ``Embedder.load``
with the same options: ONNX int8 on CPUs), so the rows are the ones the single-process command
writes. The actor classes are plain Ray Data callables, usable without the CLI:

    ds = ray.data.read_parquet("reviews/")
    ds.map_batches(ClassifierPredictor, fn_constructor_kwargs={"model": "runs/demo"},
                   batch_format="pyarrow", concurrency=2, num_cpus=1)

Order and duplicates: the dataset runs with ``preserve_order``, so blocks come back in input order
and ids are their positions. Ray Data retries the task of an actor that died (``max_restarts`` and
``max_task_retries`` are unlimited for actor pools) and keeps only the retried task's output, and
the shards are written here, from that output, so a retried batch is never written twice.

Every read and transform task but the actors' asks for no CPU: with one actor per CPU, tasks
waiting for a free one would wait for ever.

Batches are sized by tokens: rows per batch = ``batch_tokens`` over the mean length in tokens of a
sample of the input (Ray Data batches count rows)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from warmstart.data.tables import TEXT_COLUMNS, Examples, find_column
from warmstart.errors import UserError
from warmstart.files import atomic_file
from warmstart.models.registry import resolve
from warmstart.progress import progress_bar

# Readers by file suffix: every file of a folder of shards must have one of these (one format).
READERS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".jsonl": "json",
    ".ndjson": "json",
}
SHARD_ROWS = 50_000  # rows per output Parquet shard
SAMPLE_ROWS = 256  # rows whose token count sizes the batches
MAX_BATCH_ROWS = 4096


@dataclass
class RayOutput:
    """What a `--engine ray` run wrote: ``rows`` rows in ``shards`` Parquet files under ``out``."""

    out: Path
    rows: int
    shards: list[Path]
    actors: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return round(self.rows / self.seconds, 2) if self.seconds > 0 else 0.0


# -- the cluster ---------------------------------------------------------------------------------
def start(address: str | None = None) -> None:
    """Join the cluster at ``address``, or start a local Ray on this machine's CPUs (once)."""
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs the package ray: pip install 'ray[data]'") from None
    if not ray.is_initialized():
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError) as e:
            raise UserError(f"--ray-address {address}: {str(e).strip().splitlines()[0]}") from None
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows come back in input order: ids are positions
    # Ray 2.60's new Parquet reader (listing, then reading) waits for a free CPU whatever num_cpus
    # says: with one actor per CPU it waited for ever (measured: 2 actors, 2 CPUs). The classic one
    # does not.
    if hasattr(ctx, "use_datasource_v2"):
        ctx.use_datasource_v2 = False
    ctx.enable_progress_bars = False  # ours counts rows written
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# -- reading -------------------------------------------------------------------------------------
def input_files(path: str) -> list[str]:
    """``path`` itself, or the shards of a folder in name order (one format: Parquet, CSV, JSONL)."""
    p = Path(path).expanduser()
    if p.is_file():
        files = [p]
    elif p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in READERS)
        if not files:
            raise UserError(f"'{path}': no .parquet, .csv or .jsonl shards in this folder")
    else:
        raise UserError(f"'{path}': no such file or folder")
    kinds = {READERS.get(f.suffix.lower()) for f in files}
    if None in kinds:
        raise UserError(f"'{path}': --engine ray reads Parquet, CSV or JSON Lines files")
    if len(kinds) > 1:
        raise UserError(f"'{path}': the shards mix formats ({', '.join(sorted(kinds))}); use one")
    return [str(f.resolve()) for f in files]


def read(path: str, limit: int | None = None) -> Any:
    """The Ray dataset of the input file or folder of shards, in file order."""
    import ray.data

    files = input_files(path)
    fmt = READERS[Path(files[0]).suffix.lower()]
    # Reading asks for no CPU of its own: with one actor per CPU (the default), read tasks waiting
    # for a free CPU would wait for ever. Ray Data cuts each file's rows into several blocks, so
    # the actors share even a single file.
    if fmt == "parquet":
        ds = ray.data.read_parquet(files, num_cpus=0)
    elif fmt == "csv":
        # every cell a string, an empty one "" (not null): as the single-process reader takes a CSV,
        # so ids and labels copied to the output are the same values
        import pyarrow as pa
        from pyarrow import csv

        header = pd.read_csv(files[0], nrows=0).columns
        types = {name: pa.string() for name in header}
        convert = csv.ConvertOptions(column_types=types, strings_can_be_null=False)
        ds = ray.data.read_csv(files, num_cpus=0, convert_options=convert)
    else:
        ds = ray.data.read_json(files, lines=True, num_cpus=0)
    return ds.limit(limit) if limit else ds


def column(
    ds: Any, path: str, given: str | None, candidates: tuple[str, ...], what: str, flag: str
):
    """The column of ``ds`` named by ``flag`` or found among ``candidates`` (the single-process
    readers' rule and message)."""
    names = ds.schema().names
    return find_column(pd.DataFrame(columns=names), path, given, candidates, what, flag)


def rows_per_batch(ds: Any, text_column: str, tokenizer: Any, batch_tokens: int) -> int:
    """Rows per actor batch: ``batch_tokens`` over the mean token count of the first rows."""
    texts = [str(r[text_column]) for r in ds.take(SAMPLE_ROWS)]
    if not texts:
        return 1
    mean = np.mean([len(ids) for ids in tokenizer(texts, truncation=True)["input_ids"]])
    return int(np.clip(batch_tokens // max(mean, 1.0), 1, MAX_BATCH_ROWS))


def texts_of(batch: Any, name: str) -> list[str]:
    """A batch's texts; an empty cell fails naming the column (as the single-process readers do)."""
    texts = batch.column(name).to_pylist()
    for i, t in enumerate(texts):
        if t is None or not str(t).strip():
            raise UserError(f"column '{name}': row {i + 1} of a batch has no text")
    return [str(t) for t in texts]


# -- the actors (Ray Data callables) -------------------------------------------------------------
class ClassifierPredictor:
    """A saved sequence classifier, loaded once per actor; each batch (a pyarrow Table with a text
    column) comes back as predict's records (text, label, score, probabilities...) or, with
    ``outputs="probabilities"``, as one probability row per text (evaluate's)."""

    def __init__(
        self,
        model: str,
        text_column: str = "text",
        text_pair_column: str | None = None,
        *,
        max_length: int | None = None,
        cpu: bool = True,
        backend: str = "auto",
        quantize: str = "auto",
        precision: str = "auto",
        long_text: str | None = None,
        stride: int | None = None,
        aggregation: str | None = None,
        batch_size: int | None = None,
        outputs: str = "records",
    ) -> None:
        from warmstart.inference.classifier import Classifier

        self.clf = Classifier.load(
            model, max_length, cpu, backend, quantize, precision, long_text, stride, aggregation
        )
        self.text_column, self.text_pair_column = text_column, text_pair_column
        self.batch_size, self.outputs = batch_size, outputs

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        texts = texts_of(batch, self.text_column)
        pairs = texts_of(batch, self.text_pair_column) if self.text_pair_column else None
        ex = Examples("ray", texts, pairs, None, list(range(1, len(texts) + 1)))
        probs = self.clf.probabilities(ex, self.batch_size)
        if self.outputs == "probabilities":
            return pa.table({"probabilities": vectors(probs)})
        # predict's record: the text, then what clf.records gives (kinds.Prediction's order)
        return pa.Table.from_pylist(
            [{"text": t, **r} for t, r in zip(texts, self.clf.records(probs))]
        )


class TextEmbedder:
    """An encoder's pooled features, loaded once per actor (embed's options); each batch comes back
    as ``embedding`` (float32 vectors) beside the columns named in ``keep`` (id, label)."""

    def __init__(
        self,
        model: str,
        text_column: str = "text",
        *,
        keep: dict[str, str] | None = None,
        pooling: str = "auto",
        layers: str = "-1",
        layer_mode: str = "concat",
        normalize: bool | None = None,
        max_length: int | None = None,
        cpu: bool = True,
        precision: str = "auto",
        batch_size: int = 32,
    ) -> None:
        from warmstart.inference.features import Embedder

        self.embedder = Embedder.load(
            model, pooling, layers, layer_mode, normalize, max_length, cpu, precision
        )
        self.text_column, self.keep, self.batch_size = text_column, keep or {}, batch_size

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        x = self.embedder.embed(texts_of(batch, self.text_column), self.batch_size)
        cols = {new: batch.column(old) for new, old in self.keep.items()}
        return pa.table({**cols, "embedding": vectors(x)})


def vectors(x: np.ndarray) -> Any:
    """Rows of a float32 matrix as an Arrow fixed-size list column."""
    import pyarrow as pa

    x = np.ascontiguousarray(x, dtype=np.float32)
    width = x.shape[1] if x.ndim == 2 else 1
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), width)


def classifier_options(clf: Any) -> dict:
    """The ``ClassifierPredictor`` options that load ``clf`` again, as it was loaded here."""
    chunk = clf.long_text == "chunk"
    return {
        "model": clf.path,
        "max_length": clf.max_length,
        "cpu": clf.plan.device.type == "cpu",
        "backend": clf.plan.backend,
        "quantize": clf.plan.quantize,
        "precision": clf.plan.precision,
        "long_text": clf.long_text,
        "stride": clf.stride if chunk else None,
        "aggregation": clf.aggregation if chunk else None,
    }


# -- running -------------------------------------------------------------------------------------
def mapped(ds: Any, actor: type, options: dict, actors: int, rows: int) -> Any:
    """``ds`` through a pool of ``actors`` replicas of ``actor``, one CPU each."""
    import ray.data

    return ds.map_batches(
        actor,
        fn_constructor_kwargs=options,
        batch_size=rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=1,
    )


def blocks(ds: Any) -> Iterator[Any]:
    """The output tables in input order; an input error raised in an actor fails as one line."""
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
    except Exception as e:  # Ray wraps the actor's exception (RayTaskError, UserCodeException)
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is not None:
            raise UserError(str(cause).strip().splitlines()[-1]) from None
        raise


def write_shards(ds: Any, out: Path, ids: bool, progress: bool, total: int | None) -> list[Path]:
    """Write ``ds``'s rows as out/part-NNNNN.parquet, ``SHARD_ROWS`` rows each, in input order;
    ``ids``: add an ``id`` column, the row's position in the input (from 0)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    held: list[Any] = []
    start = 0

    def flush() -> None:
        table = pa.concat_tables(held, promote_options="permissive")
        path = out / f"part-{len(shards):05d}.parquet"
        with atomic_file(path) as tmp:
            pq.write_table(table, tmp)
        shards.append(path)
        held.clear()

    with progress_bar(total=total, desc="ray", unit="row", enabled=progress, leave=False) as bar:
        for table in blocks(ds):
            n = table.num_rows
            if ids:
                table = table.add_column(0, "id", pa.array(np.arange(start, start + n)))
            start += n
            held.append(table)
            if sum(t.num_rows for t in held) >= SHARD_ROWS:
                flush()
            bar.update(n)
    if held or not shards:
        if not held:  # no rows: still one (empty) shard, so the folder reads as a table
            held.append(pa.table({"id": pa.array([], pa.int64())}))
        flush()
    return shards


def prepare_out(out: str | None, overwrite: bool = True) -> Path:
    """The output folder of Parquet shards: new, empty, or holding only an earlier run's shards."""
    if not out:
        raise UserError("--engine ray writes Parquet shards: pass --out FOLDER")
    folder = Path(out).expanduser().resolve()
    if folder.suffix and not folder.is_dir():
        raise UserError(
            f"--out '{out}': --engine ray writes a folder of Parquet shards, not a file"
        )
    if folder.is_dir():
        others = [f for f in folder.iterdir() if not f.name.startswith("part-")]
        if others:
            raise UserError(f"--out '{out}' holds other files ({others[0].name}); choose a new one")
        if not overwrite and any(folder.iterdir()):
            raise UserError(f"--out '{out}' already holds shards; pass --overwrite to replace them")
        for old in folder.glob("part-*.parquet"):
            old.unlink()
    return folder


def count_if_cheap(ds: Any, files: list[str]) -> int | None:
    """Rows of a Parquet input (from its metadata), for the progress bar; None for text formats."""
    return ds.count() if Path(files[0]).suffix.lower() in (".parquet", ".pq") else None


def run(
    input: str,
    out: str | None,
    actor: type,
    options: Callable[[str], dict],
    *,
    address: str | None,
    actors: int | None,
    batch_tokens: int,
    tokenizer: Any,
    text_column: str | None,
    limit: int | None = None,
    ids: bool = True,
    progress: bool = True,
    overwrite: bool = True,
) -> RayOutput:
    """``input`` through ``actor`` replicas (constructor options: ``options(text column)``) on the
    cluster, written to ``out`` as Parquet shards in input order."""
    files = input_files(input)
    folder = prepare_out(out, overwrite)
    start(address)
    t0 = time.perf_counter()
    ds = read(input, limit)
    name = column(ds, input, text_column, TEXT_COLUMNS, "text", "--text-column")
    n = actors or cluster_cpus()
    rows = rows_per_batch(ds, name, tokenizer, batch_tokens)
    result = mapped(ds, actor, options(name), n, rows)
    shards = write_shards(
        result, folder, ids, progress, count_if_cheap(ds, files) if progress else None
    )
    import pyarrow.parquet as pq

    written = sum(pq.read_metadata(s).num_rows for s in shards)
    return RayOutput(folder, written, shards, n, round(time.perf_counter() - t0, 2))


def require_classifier(path: str) -> None:
    """--engine ray runs sequence classifiers (predict, evaluate) and encoders (embed)."""
    from warmstart.models.registry import has_classifier_head, load_config

    if not has_classifier_head(load_config(path)):
        raise UserError(
            f"--engine ray runs sequence classifiers; '{path}' is not one (run it without"
            " --engine ray)"
        )


def scorer(address: str | None, actors: int | None, batch_tokens: int, path: str) -> Callable:
    """``probabilities(clf, ex, batch_size, progress)`` on Ray actors, for evaluate: the examples the
    task read, scored by replicas of ``clf`` in slices, the rows back in order (see
    distributed.scored_by)."""
    require_classifier(path)

    def probabilities(clf: Any, ex: Examples, batch_size: int | None, progress: bool) -> np.ndarray:
        import pyarrow as pa
        import ray.data

        start(address)
        n = actors or cluster_cpus()
        cols = {"text": ex.texts, **({"pair": ex.pairs} if ex.pairs else {})}
        table = pa.table(cols)
        rows = rows_per_batch(ray.data.from_arrow(table), "text", clf.tokenizer, batch_tokens)
        # one block per batch: a block goes to one actor
        ds = ray.data.from_arrow([table.slice(i, rows) for i in range(0, len(ex), rows)] or table)
        options = {
            **classifier_options(clf),
            "text_column": "text",
            "text_pair_column": "pair" if ex.pairs else None,
            "batch_size": batch_size,
            "outputs": "probabilities",
        }
        parts = []
        with progress_bar(
            total=len(ex), desc="ray", unit="text", enabled=progress, leave=False
        ) as bar:
            for t in blocks(mapped(ds, ClassifierPredictor, options, n, rows)):
                col = t.column("probabilities").combine_chunks()
                parts.append(col.values.to_numpy().reshape(t.num_rows, -1))
                bar.update(t.num_rows)
        return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)

    return probabilities


# -- the commands' --engine ray ------------------------------------------------------------------
def refuse_ray_options(cfg: Any) -> None:
    """--ray-address, --actors and --batch-tokens would do nothing without --engine ray."""
    from warmstart.config import refuse_inapplicable

    if cfg.engine != "ray":
        names = ("ray_address", "actors", "batch_tokens")
        refuse_inapplicable(cfg, names, "--engine local (they are --engine ray's options)")


def predict(cfg: Any) -> RayOutput:
    """`warmstart predict --engine ray`: a sequence classifier's records of --input, as Parquet
    shards in --out (id, text, label, score, probabilities... as predict's JSON Lines)."""
    from warmstart.inference.classifier import Classifier

    if cfg.texts or not cfg.input:
        raise UserError("--engine ray reads its texts with Ray Data: pass --input FILE or FOLDER")
    require_classifier(resolve(cfg.model, hub=cfg))
    # Loaded here once too: a model that is no classifier fails in one line before Ray starts, and
    # the ONNX export is made once, not by every actor at the same time.
    clf = Classifier.load(
        cfg.model,
        cfg.max_length,
        cfg.cpu,
        cfg.backend,
        cfg.quantize,
        cfg.precision,
        cfg.long_text,
        cfg.stride,
        cfg.chunk_aggregation,
        hub=cfg,
    )
    options = classifier_options(clf)

    def actor_options(text_column: str) -> dict:
        pair = cfg.text_pair_column
        return {**options, "text_column": text_column, "text_pair_column": pair}

    return run(
        cfg.input,
        cfg.out,
        ClassifierPredictor,
        lambda name: {**actor_options(name), "batch_size": cfg.batch_size},
        address=cfg.ray_address,
        actors=cfg.actors,
        batch_tokens=cfg.batch_tokens,
        tokenizer=clf.tokenizer,
        text_column=cfg.text_column,
        limit=cfg.limit,
        progress=cfg.progress,
    )


def embed(cfg: Any) -> RayOutput:
    """`warmstart embed --engine ray`: id, embedding (and --label-column) as Parquet shards in
    --out; the id is --id-column's value, else the row's position."""
    from warmstart.inference.features import Embedder

    folder = prepare_out(cfg.out, cfg.overwrite)
    # Loaded here once: bad options and models fail before Ray starts; the actors load the same.
    embedder = Embedder.load(
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
    start(cfg.ray_address)
    ds = read(cfg.data, cfg.limit)
    keep = {}
    if cfg.id_column:
        keep["id"] = column(ds, cfg.data, cfg.id_column, (), "id", "--id-column")
    if cfg.label_column:
        label = column(ds, cfg.data, cfg.label_column, (), "label", "--label-column")
        keep[label] = label
    options = {
        "model": embedder.path,
        "keep": keep,
        "pooling": embedder.pooling,
        "layers": cfg.layers,
        "layer_mode": cfg.layer_mode,
        "normalize": embedder.normalize,
        "max_length": embedder.max_length,
        "cpu": embedder.device.type == "cpu",
        "precision": embedder.precision,
        "batch_size": cfg.batch_size,
    }
    return run(
        cfg.data,
        str(folder),
        TextEmbedder,
        lambda name: {**options, "text_column": name},
        address=cfg.ray_address,
        actors=cfg.actors,
        batch_tokens=cfg.batch_tokens,
        tokenizer=embedder.tokenizer,
        text_column=cfg.text_column,
        limit=cfg.limit,
        ids=not cfg.id_column,
        progress=cfg.progress,
        overwrite=True,
    )
