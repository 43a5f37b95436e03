"""Zero-shot classification, three ways behind one interface: ``load_method(...).scores(texts,
labels)``.

- nli: an NLI model judges whether the text entails "This text is {label}." Every (text, label) pair goes
  into one length-sorted pass (HF's pipeline runs one pass per label).
- similarity: cosine between the text's embedding and each label description's (bundled MiniLM).
- prompt: a causal LM scores each verbalised label after a prompt, calibrated on content-free inputs.
"""

from __future__ import annotations

import numpy as np

from warmstart.config.options import ModelSourceOptions
from warmstart.data.batching import collator, encode
from warmstart.data.tables import Examples
from warmstart.errors import UserError
from warmstart.inference.batched import batched_outputs
from warmstart.inference.features import Embedder
from warmstart.lowshot.prompting import CONTENT_FREE, PromptScorer, calibrate, split_template
from warmstart.metrics import softmax
from warmstart.models.causal import CausalLM
from warmstart.models.classifier import load_classifier
from warmstart.models.device import pick_device
from warmstart.models.registry import load_tokenizer, max_length_of, resolve

DEFAULT_MODELS = {"similarity": "minilm", "prompt": "smollm2", "nli": None}
DEFAULT_TEMPLATES = {
    "nli": "This text is {label}.",
    "similarity": "This text is {label}.",
    "prompt": "{text}\nQuestion: Is the text above {labels}?\nAnswer:",
}
DEFAULT_CHAT_TEMPLATE = "{text}\n\nIs the text above {labels}?"
# all-MiniLM-L6-v2 was trained with cosine similarities scaled by 20 (temperature 0.05); the same
# scale turns its similarities into sensible probabilities.
SIMILARITY_SCALE = 20.0


class ZeroShotMethod:
    method = ""

    def scores(
        self,
        texts: list[str],
        labels: list[str],
        multi_label: bool = False,
        batch_size: int = 16,
        progress: bool = False,
    ) -> np.ndarray:
        """(len(texts), len(labels)) probabilities: rows sum to 1, or each is independent with
        multi_label."""
        raise NotImplementedError


def parse_descriptions(items: list[str], labels: list[str]) -> dict[str, list[str]]:
    """'LABEL=text' items -> {label: [texts]}; a label given several times gets an ensemble."""
    out: dict[str, list[str]] = {}
    for item in items:
        label, sep, text = item.partition("=")
        if not sep or not label.strip() or not text.strip():
            raise UserError(f"--descriptions '{item}' must look like LABEL=description")
        if label.strip() not in labels:
            raise UserError(
                f"--descriptions '{item}': '{label.strip()}' is not one of the labels "
                f"({', '.join(labels)})"
            )
        out.setdefault(label.strip(), []).append(text.strip())
    return out


def check_labels(labels: list[str]) -> list[str]:
    labels = [lab.strip() for lab in labels]
    if not labels or not all(labels):
        raise UserError("no candidate labels: pass --labels A,B,... (none may be empty)")
    if len(set(labels)) < len(labels):
        raise UserError(f"--labels has a duplicate: {', '.join(labels)}")
    return labels


class NLIMethod(ZeroShotMethod):
    method = "nli"

    def __init__(
        self,
        name: str,
        template: str | None,
        cpu: bool,
        max_length: int | None,
        hub: ModelSourceOptions | None = None,
    ):
        path = resolve(name, hub=hub)
        self.model = load_classifier(path)
        label2id = {str(k).lower(): int(v) for k, v in (self.model.config.label2id or {}).items()}
        self.entail = next((i for k, i in label2id.items() if k.startswith("entail")), None)
        self.contra = next((i for k, i in label2id.items() if k.startswith("contradict")), None)
        if self.entail is None:
            raise UserError(
                f"model '{name}' is not an NLI model: its config.label2id ({', '.join(label2id)})"
                " has no entailment label"
            )
        self.tokenizer = load_tokenizer(path)
        self.device = pick_device(cpu)
        self.model.to(self.device).eval()
        self.template = template or DEFAULT_TEMPLATES["nli"]
        if "{label}" not in self.template:
            raise UserError(f"the NLI hypothesis template needs {{label}}: '{self.template}'")
        self.max_length = max_length_of(self.tokenizer, self.model.config, max_length)

    def scores(self, texts, labels, multi_label=False, batch_size=16, progress=False):
        labels = check_labels(labels)
        n, k = len(texts), len(labels)
        # Every (text, hypothesis) pair in one sorted pass: pairs of similar length share a batch.
        pairs = Examples(
            source="texts",
            texts=[t for t in texts for _ in labels],
            pairs=[self.template.format(label=lab) for _ in texts for lab in labels],
            labels=None,
            rows=list(range(n * k)),
        )
        data = encode(self.tokenizer, pairs, self.max_length)
        logits = batched_outputs(
            lambda b: self.model(**b).logits,
            data,
            batch_size,
            collator(self.tokenizer),
            self.device,
            progress,
            desc="nli",
        ).reshape(n, k, -1)
        if (
            multi_label
        ):  # each label on its own: entailment against contradiction (or all other classes)
            if self.contra is not None:
                two = logits[:, :, [self.contra, self.entail]]
                return softmax(two.reshape(n * k, 2))[:, 1].reshape(n, k)
            return softmax(logits.reshape(n * k, -1))[:, self.entail].reshape(n, k)
        return softmax(logits[:, :, self.entail])


class SimilarityMethod(ZeroShotMethod):
    method = "similarity"

    def __init__(
        self,
        name: str,
        template: str | None,
        cpu: bool,
        max_length: int | None,
        descriptions: dict[str, list[str]] | None = None,
        hub: ModelSourceOptions | None = None,
    ):
        self.embedder = Embedder.load(name, normalize=True, max_length=max_length, cpu=cpu, hub=hub)
        self.template = template or DEFAULT_TEMPLATES["similarity"]
        if "{label}" not in self.template:
            raise UserError(f"the label description template needs {{label}}: '{self.template}'")
        self.descriptions = descriptions or {}

    def label_vectors(self, labels: list[str], batch_size: int = 16) -> np.ndarray:
        """One unit vector per label: the mean of its descriptions' embeddings (several make an
        ensemble)."""
        rows = []
        for lab in labels:
            texts = self.descriptions.get(lab) or [self.template.format(label=lab)]
            v = self.embedder.embed(list(texts), batch_size).mean(axis=0)
            rows.append(v / max(float(np.linalg.norm(v)), 1e-12))
        return np.stack(rows)

    def scores(self, texts, labels, multi_label=False, batch_size=16, progress=False):
        labels = check_labels(labels)
        unknown = sorted(set(self.descriptions) - set(labels))
        if unknown:
            raise UserError(
                f"descriptions are given for {', '.join(unknown)}, which is not among the labels "
                f"({', '.join(labels)})"
            )
        sim = (
            self.embedder.embed(texts, batch_size, progress)
            @ self.label_vectors(labels, batch_size).T
        )
        if multi_label:
            return 1.0 / (1.0 + np.exp(-SIMILARITY_SCALE * sim))
        return softmax(SIMILARITY_SCALE * sim)


class PromptMethod(ZeroShotMethod):
    method = "prompt"

    def __init__(
        self,
        name: str,
        template: str | None,
        cpu: bool,
        max_length: int | None,
        calibrate: bool = True,
        chat: bool = False,
        answer_prefix: str = "The answer is",
        truncate: str = "head",
        hub: ModelSourceOptions | None = None,
    ):
        self.lm = CausalLM.load(name, cpu, precision="fp32", hub=hub)  # scores: kept exact
        self.scorer = PromptScorer(self.lm, max_length or 256, truncate)
        self.template = template or (DEFAULT_CHAT_TEMPLATE if chat else DEFAULT_TEMPLATES["prompt"])
        split_template(self.template)
        if chat:  # an instruction-tuned model answers best inside its own chat format
            self.template = self.lm.chat_text(self.template) + answer_prefix
        self.calibrate = calibrate

    def verbalise(self, labels: list[str]) -> list[str]:
        # The answer follows "Answer:" after a space, as the model saw such words in running text.
        sep = "" if self.template.endswith((" ", "\n")) else " "
        return [sep + lab for lab in labels]

    def label_probabilities(
        self,
        texts: list[str],
        labels: list[str],
        prefix: list[int] | None = None,
        batch_size: int = 16,
        progress: bool = False,
    ) -> np.ndarray:
        fields = {"labels": " or ".join(labels)}
        lab_ids = self.scorer.label_ids(self.verbalise(labels))
        queries = [self.scorer.prompt_ids(self.template, t, **fields) for t in texts]
        probs = softmax(self.scorer.score(queries, lab_ids, prefix, batch_size, progress))
        if self.calibrate:
            cf = [self.scorer.prompt_ids(self.template, t, **fields) for t in CONTENT_FREE]
            p_cf = softmax(self.scorer.score(cf, lab_ids, prefix, batch_size)).mean(
                axis=0, keepdims=True
            )
            probs = calibrate(probs, p_cf)
        return probs

    def scores(self, texts, labels, multi_label=False, batch_size=16, progress=False):
        labels = check_labels(labels)
        if multi_label:
            raise UserError(
                "--multi-label needs --method nli or similarity: prompt scoring picks one label"
            )
        return self.label_probabilities(texts, labels, None, batch_size, progress)


def load_method(
    method: str,
    model: str | None = None,
    *,
    template: str | None = None,
    cpu: bool = False,
    max_length: int | None = None,
    descriptions: dict[str, list[str]] | None = None,
    calibrate: bool = True,
    chat: bool = False,
    answer_prefix: str = "The answer is",
    truncate: str = "head",
    hub: ModelSourceOptions | None = None,
) -> ZeroShotMethod:
    """The zero-shot method with its model loaded (``model`` None: the method's bundled default;
    ``hub``: the command's --revision, --offline and --trust-remote-code for a Hugging Face id)."""
    if method not in DEFAULT_MODELS:
        raise UserError(f"unknown zero-shot method '{method}' (nli, similarity or prompt)")
    name = model or DEFAULT_MODELS[method]
    if name is None:
        raise UserError(
            "--method nli needs --model: an NLI model (a Hugging Face id such as "
            "facebook/bart-large-mnli, or a folder with a fine-tuned MNLI checkpoint); none is bundled"
        )
    if method == "nli":
        return NLIMethod(name, template, cpu, max_length, hub)
    if method == "similarity":
        return SimilarityMethod(name, template, cpu, max_length, descriptions, hub)
    return PromptMethod(
        name, template, cpu, max_length, calibrate, chat, answer_prefix, truncate, hub
    )
