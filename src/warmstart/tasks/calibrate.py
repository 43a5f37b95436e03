"""`warmstart calibrate MODEL --data FILE`: fit a saved classifier's temperature on labelled
held-out rows (temperature scaling: inference/calibration.py) and write it into the model folder's
config.json, where every backend and the server apply it; calibration.json and reliability.png show
the ECE and NLL before and after.

Everything that can be wrong (the model, the folder's permissions, the file, its labels) is checked
before the first byte is written, so a refused calibration leaves the model folder exactly as it
was."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from warmstart.config import CalibrateConfig, make
from warmstart.config.options import ModelSourceOptions
from warmstart.data.tables import LabelMap, read_examples
from warmstart.errors import UserError
from warmstart.hub import card
from warmstart.inference import calibration
from warmstart.inference.classifier import Classifier
from warmstart.inference.export import adopt_config, current_export, is_export
from warmstart.models.download import revision_of
from warmstart.models.registry import kind, load_config, resolve


@dataclass
class CalibrateResult:
    model_dir: Path
    out: Path  # where calibration.json and reliability.png are
    calibration: calibration.Calibration
    previous: float  # the temperature the model had (1.0: none)

    @property
    def temperature(self) -> float:
        return self.calibration.temperature


def calibrate(config: CalibrateConfig | None = None, **kwargs) -> CalibrateResult:
    """Fit temperature scaling (and per-label thresholds for multi-label) on held-out data and save
    it with the model, so that its probabilities mean what they say."""
    cfg = make(CalibrateConfig, config, kwargs)
    if not cfg.data:
        raise UserError(
            "no data to calibrate on: pass --data FILE (labelled rows the model was not trained on)"
        )
    path = Path(calibratable(cfg.model, cfg))
    out = Path(cfg.out).expanduser() if cfg.out else default_out(path)
    refuse_unwritable(path, out)
    ex = read_examples(
        cfg.data, cfg.text_column, cfg.text_pair_column, cfg.label_column, limit=cfg.limit
    )
    y = LabelMap.from_model_config(load_config(str(path))).encode(
        ex
    )  # an unknown label fails before any work
    clf = Classifier.load(
        str(path),
        cfg.max_length,
        cfg.cpu,
        cfg.backend,
        cfg.quantize,
        cfg.precision,
        cfg.long_text,
        cfg.stride,
        cfg.chunk_aggregation,
    )
    cal = calibration.calibrate(
        clf.logits(ex, cfg.batch_size, cfg.progress), y, "softmax", cfg.bins
    )
    previous = calibration.saved_temperature(path)
    export = current_export(
        path
    )  # before the model folder changes: an up-to-date export stays up to date
    calibration.write_report(cal, out)
    calibration.save_temperature(path, cal.temperature)
    if export is not None:
        adopt_config(path, export)
    card.note_calibration(path, cal, cfg.data)  # README.md: the new temperature (a card of ours)
    return CalibrateResult(path, out, cal, previous)


def calibratable(name: str, hub: ModelSourceOptions | None = None) -> str:
    """The folder of ``name`` if it is a single-label classifier in a local folder; else one
    sentence why not."""
    path = resolve(name, hub=hub)
    if revision_of(path):
        # The Hugging Face cache's files are shared by every program that reads the model.
        raise UserError(
            f"'{name}' is a model in the Hugging Face cache, and calibrate writes into the model "
            "folder: copy it (`warmstart download` prints where it is) and calibrate the copy"
        )
    if is_export(path):
        raise UserError(
            f"'{name}' is an ONNX export: calibrate the model folder it was exported from (its own "
            "onnx/ export is updated with it), then export again"
        )
    config = load_config(path)
    what = kind(config)
    if what == "tagger":
        raise UserError(
            f"'{name}' is a tagger (finetune --task tokens); calibrate fits the temperature of a "
            "sequence classifier"
        )
    if what not in ("classifier", "nli"):
        raise UserError(
            f"model '{name}' has no classification head; calibrate a fine-tuned classifier "
            "(warmstart finetune)"
        )
    problem = getattr(config, "problem_type", None)
    if problem not in (None, "single_label_classification"):
        raise UserError(
            f"'{name}' is a {problem.replace('_', ' ')} model; calibrate fits single-label "
            "classifiers (one softmax over the classes)"
        )
    if not Path(name).expanduser().exists():
        # An alias or a Hugging Face cache entry: writing into it would change a shared copy.
        raise UserError(
            f"calibrate writes the temperature into the model folder; '{name}' is not a local"
            " folder: save a copy of the model (save_pretrained) and calibrate that"
        )
    return path


def default_out(model_dir: Path) -> Path:
    """The run folder for a run's model/ (beside finetune's own calibration.json), else the model
    folder."""
    run = model_dir.parent
    return run if model_dir.name == "model" and (run / "config.yaml").is_file() else model_dir


def refuse_unwritable(model_dir: Path, out: Path) -> None:
    # config.json is replaced by a rename, so the folder itself must be writable, not only the file.
    if not os.access(model_dir, os.W_OK) or not os.access(model_dir / "config.json", os.W_OK):
        raise UserError(
            f"cannot write the model folder '{model_dir}': calibrate saves the temperature in its "
            "config.json; calibrate a writable copy"
        )
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK):
        raise UserError(
            f"cannot write calibration.json and reliability.png to '{out}'; pass a writable --out"
        )


def report(cfg: CalibrateConfig, result: CalibrateResult) -> str:
    cal = result.calibration
    b, a = cal.before, cal.after
    was = f" (was {result.previous:.4f})" if result.previous != 1.0 else ""
    return (
        f"temperature {cal.temperature:.4f}{was} fitted on {cal.rows} texts of {cfg.data}\n"
        f"{'':<10}{'T = 1':>10}{'calibrated':>12}\n"
        f"{'ECE':<10}{b['ece']:>10.4f}{a['ece']:>12.4f}\n"
        f"{'NLL':<10}{b['nll']:>10.4f}{a['nll']:>12.4f}\n"
        f"{'accuracy':<10}{b['accuracy']:>10.4f}{a['accuracy']:>12.4f}\n"
        f"saved in {result.model_dir / 'config.json'}; "
        f"{result.out / 'calibration.json'}, {result.out / 'reliability.png'}\n"
    )
