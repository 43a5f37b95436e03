"""Pre-training from scratch: a tokenizer trained on the corpus and a small model configuration.

- GPT-2 (``clm``): byte-level BPE, one special token ``<|endoftext|>`` (begin, end, unknown and
  padding, as in GPT-2), no special tokens added around a text.
- BERT (``mlm``, ``mlm+nsp``): WordPiece, lower-cased, ``[PAD] [UNK] [CLS] [SEP] [MASK]`` (ids 0–4),
  ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with token types 0/1.
- BART (``denoise``): byte-level BPE, ``<s> <pad> </s> <unk> <mask>`` (ids 0–4, BART's order for the
  first four), ``<s> A </s>`` / ``<s> A </s></s> B </s>``.

- characters (``char_tokenizer``, for `finetune --task seq2seq --from-scratch --tokenizer char`):
  one token per character seen in the texts, with BART's special tokens and framing; decoding joins
  them back without spaces.
- symbols (``symbol_tokenizer``, `--tokenizer symbols`): characters, but a recurring
  whitespace-separated symbol (a phoneme) is one token; WordPiece's greedy longest match, spaces
  implied between words.

Byte-level BPE starts from all 256 bytes, so it never produces an unknown token, and decoding gives
the text back byte for byte (``clean_up_tokenization_spaces`` is off, as it would turn "a ," into
"a,"). Offsets are trimmed to the word (no leading space), which whole-word masking relies on."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Literal

import transformers
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    BartConfig,
    BertConfig,
    GPT2Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
)

from warmstart.errors import UserError

Arch = Literal["gpt2", "bert", "bart"]
KIND: dict[str, str] = {"gpt2": "bpe", "bert": "wordpiece", "bart": "bpe"}

# Layers, hidden size, attention heads, feed-forward size. A layer has about 12 × hidden² weights
# and the embeddings vocab × hidden more. Measured with an 8k vocabulary: tiny 0.64–0.69M parameters
# (for tests and smoke runs), small 13.9–15.9M (MiniLM-L6's shape); GPT-2 lowest, BART highest.
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"layers": 2, "hidden": 64, "heads": 2, "ffn": 256},
    # Between the two: about half of small's compute a token, for small vocabularies and many epochs
    # (spelling to phonemes), where passes over the data matter more than width.
    "mini": {"layers": 6, "hidden": 256, "heads": 4, "ffn": 1024},
    "small": {"layers": 6, "hidden": 384, "heads": 6, "ffn": 1536},
}


def _bpe(texts: Iterable[str], n: int, vocab_size: int, specials: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=n)
    return tok


def train_tokenizer(
    kind: Literal["bpe", "wordpiece"],
    texts: Sequence[str],
    vocab_size: int = 8000,
    max_length: int = 512,
    arch: Arch | None = None,
) -> PreTrainedTokenizerFast:
    """A fast tokenizer trained on ``texts`` with the special tokens and post-processor of its
    family.

    ``kind="wordpiece"`` gives BERT's; ``kind="bpe"`` gives GPT-2's, or BART's with ``arch="bart"``
    (the algorithm is the same, the special tokens differ). ``max_length`` becomes
    ``model_max_length``."""
    arch = arch or ("bert" if kind == "wordpiece" else "gpt2")
    if KIND.get(arch) != kind:
        raise UserError(
            f"a {kind} tokenizer does not fit {arch}; {arch} uses {KIND.get(arch, 'neither')}"
        )
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UserError("cannot train a tokenizer: the corpus has no text")
    if vocab_size < 300 and kind == "bpe":
        raise UserError(
            "a byte-level BPE vocabulary needs more than its 256 bytes (got --vocab-size"
            f" {vocab_size})"
        )
    if arch == "gpt2":
        eot = "<|endoftext|>"
        tok = _bpe(texts, len(texts), vocab_size, [eot])
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
        return transformers.GPT2TokenizerFast(
            tokenizer_object=tok,
            bos_token=eot,
            eos_token=eot,
            unk_token=eot,
            pad_token=eot,
            model_max_length=max_length,
            clean_up_tokenization_spaces=False,
        )
    if arch == "bart":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = _bpe(texts, len(texts), vocab_size, specials)
        tok.post_processor = processors.RobertaProcessing(
            ("</s>", tok.token_to_id("</s>")),
            ("<s>", tok.token_to_id("<s>")),
            trim_offsets=True,
            add_prefix_space=False,
        )
        return transformers.BartTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            sep_token="</s>",
            cls_token="<s>",
            unk_token="<unk>",
            pad_token="<pad>",
            mask_token="<mask>",
            model_max_length=max_length,
            clean_up_tokenization_spaces=False,
        )
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.train_from_iterator(
        texts,
        trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=False
        ),
        length=len(texts),
    )
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return transformers.BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def char_tokenizer(texts: Sequence[str], max_length: int = 512) -> PreTrainedTokenizerFast:
    """One token per character of ``texts`` (most frequent first, after BART's ``<s> <pad> </s>
    <unk> <mask>``), framed ``<s> A </s>`` like BART's. A character never seen becomes ``<unk>``.
    Where spelling maps to sound letter by letter, a sub-word vocabulary hides the letters the model
    must read (Yao & Zweig 2015 read characters)."""
    counts = Counter(ch for t in texts for ch in t if ch not in "\r\n")
    if not counts:
        raise UserError("cannot train a tokenizer: the texts have no characters")
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {s: i for i, s in enumerate(specials)}
    for ch, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()  # the characters back as they were: no space between tokens
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )


def symbol_tokenizer(
    texts: Sequence[str], max_length: int = 512, min_count: int = 20
) -> PreTrainedTokenizerFast:
    """Characters, except that a whitespace-separated symbol seen at least ``min_count`` times in
    ``texts`` is one token: an ARPAbet phoneme ("AH0") is one unit to write, not three letters and a
    space (a pronunciation is then about a third as many decoder steps as with ``char_tokenizer``).
    Spaces are implied between symbols and between words, as in BERT's WordPiece, whose greedy
    longest match this is: a word is a whole symbol if it is one, else its characters (``##`` marks
    a character inside a word). Framed ``<s> A </s>`` like BART's. A word with a character never
    seen becomes ``<unk>`` (WordPiece's rule)."""
    words = Counter(w for t in texts for w in t.split())
    if not words:
        raise UserError("cannot train a tokenizer: the texts have no characters")
    chars = Counter()
    for w, n in words.items():
        for ch in w:
            chars[ch] += n
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    vocab = {s: i for i, s in enumerate(specials)}
    for w, n in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if n >= min_count and len(w) > 1:
            vocab.setdefault(w, len(vocab))
    for ch, _ in sorted(chars.items(), key=lambda kv: (-kv[1], kv[0])):
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault("##" + ch, len(vocab))
    longest = max(len(w) for w in words)
    tok = Tokenizer(
        models.WordPiece(
            vocab, unk_token="<unk>", max_input_chars_per_word=max(longest, max_length)
        )
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )


def preset(
    arch: Arch,
    size: Literal["tiny", "mini", "small"],
    tokenizer: PreTrainedTokenizerFast,
    max_length: int,
) -> PretrainedConfig:
    """A GPT2Config, BertConfig or BartConfig of the given size, sized to the tokenizer's vocabulary
    and with ``max_length`` positions, its special-token ids taken from the tokenizer.

    Attention-probability dropout is 0: on the CPU it makes PyTorch leave its fused attention kernel
    for one measured 7x slower (see the README's Training section); hidden dropout stays at 0.1."""
    if size not in SIZES:
        raise UserError(f"unknown size '{size}'; choose one of {', '.join(SIZES)}")
    s = SIZES[size]
    vocab = len(tokenizer)
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab,
            n_positions=max_length,
            n_embd=s["hidden"],
            n_layer=s["layers"],
            n_head=s["heads"],
            n_inner=s["ffn"],
            attn_pdrop=0.0,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    if arch == "bert":
        return BertConfig(
            vocab_size=vocab,
            hidden_size=s["hidden"],
            num_hidden_layers=s["layers"],
            num_attention_heads=s["heads"],
            intermediate_size=s["ffn"],
            max_position_embeddings=max_length,
            attention_probs_dropout_prob=0.0,
            pad_token_id=tokenizer.pad_token_id,
            type_vocab_size=2,
        )
    if arch == "bart":
        # An encoder and a decoder of `layers // 2` each keep BART near the parameter count of the
        # others.
        half = max(1, s["layers"] // 2)
        eos = tokenizer.eos_token_id
        return BartConfig(
            vocab_size=vocab,
            d_model=s["hidden"],
            encoder_layers=half,
            decoder_layers=half,
            encoder_attention_heads=s["heads"],
            decoder_attention_heads=s["heads"],
            encoder_ffn_dim=s["ffn"],
            decoder_ffn_dim=s["ffn"],
            max_position_embeddings=max_length,
            attention_dropout=0.0,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=eos,
            decoder_start_token_id=eos,
            forced_eos_token_id=eos,
        )
    raise UserError(f"unknown architecture '{arch}'; choose gpt2, bert or bart")
