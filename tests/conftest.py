"""Shared fixtures: paths to the real data in ../shared, and tiny random encoders (BERT, DistilBERT)
saved with save_pretrained, with a WordPiece tokenizer trained on the fly — loaded by the tests
through the same code path a user's model folder takes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on a 2-core machine: one thread each (torch, ONNX Runtime's OpenMP,
    # and every CLI subprocess inherits it), else four threads fight for two cores and spin.
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# pretrain caches token files; the tests keep theirs out of ~/.cache
os.environ.setdefault("WARMSTART_TOKEN_CACHE", tempfile.mkdtemp(prefix="warmstart-tokens-"))

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
IMDB = SHARED / "data" / "imdb" / "movie_data.csv.gz"
SST2 = SHARED / "data" / "sst2" / "train.tsv"
GPT2_TOKENIZER = SHARED / "models" / "gpt2-tokenizer"


@pytest.fixture(scope="session")
def imdb() -> Path:
    assert IMDB.is_file(), f"{IMDB} is missing: the tests read the real IMDb data from ../shared"
    return IMDB


@pytest.fixture(scope="session")
def minilm_run(tmp_path_factory, imdb):
    """The bundled MiniLM fine-tuned on 160 real reviews for 3 epochs (30 steps), scored on 200 test
    reviews: one run, read by the finetune tests and compared with the Trainer engine's."""
    import warmstart

    out = tmp_path_factory.mktemp("minilm") / "run"
    return warmstart.finetune(
        data=str(imdb),
        split="35000,5000,10000",
        max_train_samples=160,
        max_valid_samples=48,
        max_test_samples=200,
        label_names="negative,positive",
        max_length=128,
        epochs=3,
        lr=1e-4,
        batch_size=16,
        logging_steps=5,
        out=str(out),
        progress=False,
    )


@pytest.fixture(scope="session")
def imdb_head(tmp_path_factory) -> Path:
    """The first 600 IMDb reviews, cut to 60 words so that tiny-model runs stay fast."""
    df = pd.read_csv(IMDB, nrows=600)
    df["review"] = df["review"].str.split().str[:60].str.join(" ")
    path = tmp_path_factory.mktemp("data") / "imdb600.csv"
    df.to_csv(path, index=False)
    return path


def _wordpiece(texts: list[str], folder: Path, cls_name: str):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=1000, special_tokens=specials)
    )
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    import transformers

    fast = getattr(transformers, cls_name)(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    fast.save_pretrained(folder)
    return fast


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random pre-trained-style encoders (no classification head), as folders on disk."""
    import torch
    from transformers import BertConfig, BertModel, DistilBertConfig, DistilBertModel

    texts = pd.read_csv(IMDB, nrows=400)["review"].tolist()
    out = {}
    torch.manual_seed(0)
    for name, cfg_cls, model_cls, tok_cls, kw in (
        (
            "bert",
            BertConfig,
            BertModel,
            "BertTokenizerFast",
            dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        ),
        (
            "distilbert",
            DistilBertConfig,
            DistilBertModel,
            "DistilBertTokenizerFast",
            dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64),
        ),
    ):
        folder = tmp_path_factory.mktemp(f"tiny-{name}")
        tok = _wordpiece(texts, folder, tok_cls)
        config = cfg_cls(
            vocab_size=len(tok), max_position_embeddings=128, pad_token_id=tok.pad_token_id, **kw
        )
        model_cls(config).save_pretrained(folder)
        out[name] = folder
    return out


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A random 2-layer GPT2LMHeadModel with GPT-2's real tokenizer files, saved like a user's model
    folder."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    assert (GPT2_TOKENIZER / "vocab.json").is_file(), f"{GPT2_TOKENIZER} is missing"
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tok = AutoTokenizer.from_pretrained(GPT2_TOKENIZER)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    # A large init spread makes the random model's choices decisive, so batched and single runs
    # cannot differ through float noise on a near-tie.
    config = GPT2Config(
        vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2, initializer_range=0.2
    )
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


TEXTS = [
    "A wonderful film with a moving story.",
    "Dull and far too long.",
    "The actors did what they could.",
    "I would watch it again tomorrow, and the day after.",
]


def start_warmstart(args: list[str]) -> subprocess.Popen:
    """`python -m warmstart ARGS` as a separate process (to be killed mid-run by a test)."""
    return subprocess.Popen(
        [sys.executable, "-m", "warmstart", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ},
    )


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, timeout: float = 180) -> None:
    """Return once the training process ``proc`` has a complete checkpoint in ``out`` (or has
    ended)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if any((p / "state.json").is_file() for p in (out / "checkpoints").glob("checkpoint-*")):
            return
        time.sleep(0.01)


def kill_after_checkpoint(args: list[str], out: Path) -> dict:
    """Run `warmstart ARGS --out OUT`, SIGKILL it once it has written a complete checkpoint, check
    that it died unfinished, and return that checkpoint's state.json."""
    import json
    import signal

    proc = start_warmstart([*args, "--out", str(out)])
    wait_for_checkpoint(proc, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert not (out / "metrics.json").exists()
    return json.loads(next((out / "checkpoints").glob("checkpoint-*/state.json")).read_text())
