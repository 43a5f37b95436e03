"""Options: shared option groups (options), one dataclass per command (commands), and building them
from files, flags and keyword arguments (loading)."""

from warmstart.config.commands import (
    CalibrateConfig,
    EmbedConfig,
    EvaluateConfig,
    ExportConfig,
    FewshotConfig,
    FinetuneConfig,
    GenerateConfig,
    PredictConfig,
    PretrainConfig,
    ProbeConfig,
    ServeConfig,
    TuneConfig,
    ZeroshotConfig,
)
from warmstart.config.loading import (
    absolute_paths,
    build,
    given_flags,
    make,
    read_config_file,
    refuse_inapplicable,
    to_dict,
)
from warmstart.config.options import (
    TRUNCATIONS,
    DataOptions,
    FeatureOptions,
    InferenceOptions,
    TrainOptions,
    opt,
)

__all__ = [
    "given_flags",
    "refuse_inapplicable",
    "CalibrateConfig",
    "TRUNCATIONS",
    "DataOptions",
    "EmbedConfig",
    "EvaluateConfig",
    "ExportConfig",
    "FeatureOptions",
    "FewshotConfig",
    "FinetuneConfig",
    "GenerateConfig",
    "InferenceOptions",
    "PredictConfig",
    "PretrainConfig",
    "ProbeConfig",
    "ServeConfig",
    "TrainOptions",
    "TuneConfig",
    "ZeroshotConfig",
    "absolute_paths",
    "build",
    "make",
    "opt",
    "read_config_file",
    "to_dict",
]
