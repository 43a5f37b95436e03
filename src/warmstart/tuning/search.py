"""What a search is, decided before any work: the tuned command and its options, the space, the metric
the trials are compared on and its direction. ``plan`` checks all of it and raises UserError before
anything is written, so a typo costs a second, not a trial.

The tuned command's options come from a file (``--base FILE``, as for its own ``--config``), from
its own flags given to tune (``--data reviews.csv --epochs 2``; ``options={...}`` in Python), or
both: the flags over the file."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warmstart.config import (
    FinetuneConfig,
    ProbeConfig,
    TuneConfig,
    build,
    read_config_file,
    refuse_inapplicable,
)
from warmstart.data.hub import is_hub_id
from warmstart.errors import UserError
from warmstart.tuning.space import OWNED, Param, read_space

COMMAND_CONFIGS: dict[str, type] = {"finetune": FinetuneConfig, "probe": ProbeConfig}
# The valid metrics a probe's metrics.json holds (metrics.classification_metrics).
PROBE_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "precision_macro", "recall_macro")


@dataclass
class Search:
    """Everything checked before any work: the tuned command, its options, the space, metric and
    direction."""

    cfg: TuneConfig
    cls: type
    base: dict[str, Any]  # the tuned command's options: the --base file's, then its flags over them
    params: list[Param]
    space: dict[str, Any]
    # None: finetune resolves its default (per task); read from the first trial's config.yaml
    metric: str | None
    direction: str  # maximize or minimize

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def shared(self) -> bool:
        """Whether the study lives in a storage given by --storage, which other tune processes
        (on this machine or others) may be using at the same time."""
        return self.cfg.storage is not None

    @property
    def storage(self) -> str:
        return self.cfg.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"

    def setup(self) -> dict[str, Any]:
        """What a resumed search must share with the one in the folder (trials, timeout and pruner
        may change). The options, not where they came from: a search started with flags resumes
        from the same options in a --base file."""
        return json.loads(
            json.dumps(
                {
                    "command": self.cfg.command,
                    "base": self.base,
                    "space": self.space,
                    "metric": self.metric,
                    "direction": self.direction,
                },
                default=str,
            )
        )


def plan(cfg: TuneConfig, options: dict[str, Any] | None = None) -> Search:
    """Check the tuned options (``cfg.base`` and ``options``), the space file and tune's own
    options; raises UserError before anything is written."""
    cls = COMMAND_CONFIGS[cfg.command]
    if cfg.command == "probe":
        refuse_inapplicable(
            cfg, ("pruner", "prune_after", "prune_warmup"), "--command probe (it has no epochs)"
        )
    elif cfg.pruner == "none":
        refuse_inapplicable(cfg, ("prune_after", "prune_warmup"), "--pruner none")
    elif cfg.pruner == "hyperband":
        refuse_inapplicable(cfg, ("prune_after",), "--pruner hyperband")
    base = tuned_options(cfg, cls, options)
    params, space = read_space(cfg.space, cls, base, cfg.command)
    metric, direction = _metric_and_direction(cfg, base)
    return Search(cfg, cls, base, params, space, metric, direction)


def tuned_options(cfg: TuneConfig, cls: type, options: dict[str, Any] | None) -> dict[str, Any]:
    """The options every trial starts from, checked as the tuned command checks its own: the --base
    file's (its out/overwrite/resume dropped: a finished run's config.yaml is a natural base), then
    ``options`` over them (out/overwrite/resume refused there: tune sets them)."""
    given = {str(k).replace("-", "_"): v for k, v in (options or {}).items()}
    if not cfg.base and not given:
        raise UserError(
            f"tune needs the options of the command it tunes: --base FILE (YAML or TOML), or"
            f" {cfg.command}'s own flags (e.g. --data FILE)"
        )
    from_file = {}
    if cfg.base:
        from_file = {k: v for k, v in read_config_file(cfg.base).items() if k not in OWNED}
        build(cls, from_file, source=f"base config '{cfg.base}'")
    if given:
        owned = [k for k in OWNED if k in given]
        if owned:
            raise UserError(
                f"option(s) {', '.join(owned)} of {cfg.command}: set by tune for every trial (each"
                " runs from the start in its own folder of tune's --out)"
            )
        build(cls, given, source=f"the options of {cfg.command}")
    values = {**from_file, **given}
    parsed = build(cls, values, source=_where(cfg, given))

    def where(key: str) -> str:
        return f"option '{key}'" if key in given else f"base config '{cfg.base}', key '{key}'"

    for key in ("data", "train", "valid", "test"):
        value = getattr(parsed, key, None)
        # A Hub dataset id is no file; the trial's own reader checks it.
        if isinstance(value, str) and value and not Path(value).expanduser().exists():
            if not (key == "data" and is_hub_id(value)):
                raise UserError(f"{where(key)}: file '{value}' does not exist")
    if getattr(parsed, "push_to_hub", None):
        raise UserError(
            f"{where('push_to_hub')}: every trial would push its model; push the best one once the"
            " search ends (warmstart push OUT/best --repo ID)"
        )
    if not (getattr(parsed, "valid", None) or (parsed.split and len(parsed.split.split(",")) > 1)):
        raise UserError(
            f"{_where(cfg, given)}: trials are compared on a validation split; give it valid:"
            " FILE or a split with a valid part (e.g. split: 0.8,0.1,0.1)"
        )
    return values


def _where(cfg: TuneConfig, given: dict[str, Any]) -> str:
    """Where the tuned options came from, for an error about them as a whole."""
    if not given:
        return f"base config '{cfg.base}'"
    own = f"the options of {cfg.command}"
    return f"{own} (over base config '{cfg.base}')" if cfg.base else own


def _metric_and_direction(cfg: TuneConfig, base: dict[str, Any]) -> tuple[str | None, str]:
    if cfg.command == "probe":
        metric = cfg.metric or "accuracy"
        if metric not in PROBE_METRICS:
            raise UserError(
                f"--metric {metric}: a probe's valid metrics are {', '.join(PROBE_METRICS)}"
            )
    else:
        metric = cfg.metric or base.get("metric_for_best")
        allowed = {f.name: f for f in dataclasses.fields(FinetuneConfig)}[
            "metric_for_best"
        ].metadata["choices"]
        if metric is not None and metric not in allowed:
            raise UserError(f"--metric {metric}: finetune compares epochs on {', '.join(allowed)}")
    if cfg.direction != "auto":
        return metric, cfg.direction
    return metric, "minimize" if metric == "loss" else "maximize"
