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
            "fine-tune a model for a task: labels per text, tags per word, text to text,"
            " instructions and preferences for a causal LM, embeddings, rerankers, extractive QA",
        ),
        Command(
            "evaluate",
            "EvaluateConfig",
            "EvaluateResult",
            ("model",),
            "score a saved model on labelled data: classification, tagging, text-to-text,"
            " question-answering or retrieval metrics",
        ),
        Command(
            "predict",
            "PredictConfig",
            "Prediction",
            ("model", "texts"),
            "run a saved model on texts: labels and probabilities, tags and entities, answers,"
            " scores or written outputs",
        ),
        Command(
            "generate",
            "GenerateConfig",
            "Generation",
            ("prompts",),
            "write text: continue prompts with a causal LM, or run a text-to-text model on them",
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
            "learn from k examples per class: setfit, prompt scoring or in-context examples",
        ),
        # serve's function stays in warmstart.serving (the public function's module; see
        # docs/architecture.md).
        Command(
            "serve",
            "ServeConfig",
            None,
            ("model",),
            "serve a model over HTTP: predict, tag, answer, embed, zeroshot, generate, and an"
            " OpenAI-compatible /v1 API",
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
            "export a fine-tuned classifier or tagger to ONNX (fp32 and int8)",
        ),
        Command(
            "tune",
            "TuneConfig",
            "TuneResult",
            (),
            "hyperparameter search (Optuna TPE, pruning) over finetune or probe options; keeps the"
            " best trial",
        ),
        Command(
            "download",
            "DownloadConfig",
            "DownloadResult",
            ("model",),
            "fetch a model from the Hugging Face Hub into the local cache, to use it offline later",
        ),
        Command(
            "push",
            "PushConfig",
            "Pushed",
            ("model",),
            "publish a saved model (run or model folder, its model card included; --with-onnx its"
            " ONNX export) to a Hugging Face repo",
        ),
    )
}
