"""The one command table: the CLI's subcommands and the lazy public API (``warmstart.finetune`` ...)
are both built from it, so every command is a function of the same name taking its config dataclass.

Each command's function lives in ``warmstart.tasks.<name>`` (serve's in ``warmstart.serving``,
beside the app it runs), next to ``report(cfg, result)``: the text the CLI prints on standard
output. Names are strings, so reading the table imports nothing heavy: `warmstart --help` does not
wait for torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str
    config: str  # the dataclass's name in warmstart.config
    result: str | None  # the result class's name in the module, exported as warmstart.<result>
    positional: tuple[str, ...]  # fields taken as positional arguments on the command line
    help: str
    module: str = ""  # where the function (and report) live; default warmstart.tasks.<name>
    streams: bool = False  # the function takes stream_to: the CLI hands it the terminal
    reports: bool = True  # the module has report(cfg, result)

    @property
    def where(self) -> str:
        return self.module or f"warmstart.tasks.{self.name}"


COMMANDS: dict[str, Command] = {
    c.name: c
    for c in (
        Command(
            "finetune",
            "FinetuneConfig",
            "FinetuneResult",
            (),
            "fine-tune an encoder with a classification head on a labelled table",
        ),
        Command(
            "evaluate",
            "EvaluateConfig",
            "EvaluateResult",
            ("model",),
            "accuracy, per-class F1 and confusion matrix of a saved model",
        ),
        Command(
            "predict",
            "PredictConfig",
            "Prediction",
            ("model", "texts"),
            "label and class probabilities for texts",
        ),
        Command(
            "generate",
            "GenerateConfig",
            "Generation",
            ("prompts",),
            "continue prompts with a causal language model",
            streams=True,
        ),
        Command(
            "pretrain",
            "PretrainConfig",
            "PretrainResult",
            (),
            "self-supervised pre-training on raw text: clm, mlm, mlm+nsp, denoise",
        ),
        Command(
            "embed",
            "EmbedConfig",
            "EmbedResult",
            (),
            "hidden-state features of texts from any encoder or decoder, to a file",
        ),
        Command(
            "probe",
            "ProbeConfig",
            "ProbeResult",
            (),
            "logistic-regression probe on frozen features; same run folder as finetune",
        ),
        Command(
            "zeroshot",
            "ZeroshotConfig",
            "ZeroshotResult",
            ("texts",),
            "classify into unseen labels: nli, similarity or prompt",
        ),
        Command(
            "fewshot",
            "FewshotConfig",
            "FewshotResult",
            (),
            "learn from k examples per class: setfit or in-context examples",
        ),
        # serve's function stays in warmstart.serving (the public function's module; see the
        # README's Architecture).
        Command(
            "serve",
            "ServeConfig",
            None,
            ("model",),
            "serve a model over HTTP: predict, embed, zeroshot, generate",
            module="warmstart.serving",
            reports=False,
        ),
        Command(
            "calibrate",
            "CalibrateConfig",
            "CalibrateResult",
            ("model",),
            "fit a saved classifier's temperature on labelled held-out data: calibrated"
            " probabilities",
        ),
        Command(
            "export",
            "ExportConfig",
            "ExportResult",
            ("model",),
            "export a fine-tuned classifier to ONNX (fp32 and int8)",
        ),
        Command(
            "tune",
            "TuneConfig",
            "TuneResult",
            (),
            "hyperparameter search (Optuna TPE, pruning) over finetune or probe options; keeps the"
            " best trial",
        ),
    )
}
