"""Pre-training data: tokenizers trained here on real IMDb reviews, packing, the masking,
sentence-pair and denoising statistics, and one forward/backward pass of a tiny model of each family
on each objective."""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest
import torch
import transformers
from transformers import AutoTokenizer

from warmstart.data.corpus import read_corpus, sentence_spans, sentences
from warmstart.errors import UserError
from warmstart.models import scratch
from warmstart.objectives import OBJECTIVES, clm, denoise, mlm, nsp, prepare, tokenize

GAPS = re.compile(r"(?:\s|<br\s*/?>)+")


@pytest.fixture(scope="module")
def reviews(imdb) -> list[str]:
    return read_corpus(imdb, limit=1000)


@pytest.fixture(scope="module")
def toks(reviews) -> dict[str, transformers.PreTrainedTokenizerFast]:
    """One tokenizer per family, trained on 600 real reviews (a few seconds each on a CPU)."""
    texts = reviews[:600]
    return {
        "bert": scratch.train_tokenizer("wordpiece", texts, vocab_size=4000, max_length=512),
        "gpt2": scratch.train_tokenizer("bpe", texts, vocab_size=4000, max_length=512),
        "bart": scratch.train_tokenizer("bpe", texts, vocab_size=4000, max_length=512, arch="bart"),
    }


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# --- tokenizers and presets
# ---------------------------------------------------------------------------------


def test_trained_tokenizers_have_their_family_special_tokens(toks, reviews, tmp_path):
    bert, gpt2, bart = toks["bert"], toks["gpt2"], toks["bart"]
    assert bert.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [
        0,
        1,
        2,
        3,
        4,
    ]
    enc = bert("A GOOD film.", "Bad acting.")
    n_a = len(bert("A GOOD film.", add_special_tokens=False)["input_ids"])
    assert (
        enc["input_ids"][0] == bert.cls_token_id and enc["input_ids"][n_a + 1] == bert.sep_token_id
    )
    assert (
        enc["input_ids"][-1] == bert.sep_token_id and enc["input_ids"].count(bert.sep_token_id) == 2
    )
    assert enc["token_type_ids"] == [0] * (n_a + 2) + [1] * (len(enc["input_ids"]) - n_a - 2)
    assert bert.decode(enc["input_ids"], skip_special_tokens=True) == "a good film. bad acting."

    assert (
        gpt2.eos_token == gpt2.bos_token == gpt2.pad_token == "<|endoftext|>"
        and gpt2.mask_token is None
    )
    review = reviews[700]  # not in the training texts
    ids = gpt2(review)["input_ids"]
    assert gpt2.eos_token_id not in ids and gpt2.decode(ids) == review  # byte-level BPE is lossless

    assert bart.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]) == [
        0,
        1,
        2,
        3,
        4,
    ]
    ids = bart(review)["input_ids"]
    assert ids[0] == bart.bos_token_id and ids[-1] == bart.eos_token_id
    assert bart.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) == review
    assert "token_type_ids" not in bart("x") and "token_type_ids" not in gpt2("x")

    for name, tok in toks.items():
        assert 3000 < len(tok) <= 4000 and tok.model_max_length == 512
        tok.save_pretrained(tmp_path / name)
        again = AutoTokenizer.from_pretrained(tmp_path / name)
        assert (
            again(review[:300], "And a pair.")["input_ids"]
            == tok(review[:300], "And a pair.")["input_ids"]
        )


def test_train_tokenizer_refuses_a_mismatched_model_and_empty_texts(reviews):
    assert "wordpiece" in _error(scratch.train_tokenizer, "bpe", reviews[:5], arch="bert")
    assert "no text" in _error(scratch.train_tokenizer, "wordpiece", ["  ", ""])


def test_tiny_mini_and_small_presets_have_their_intended_parameter_counts(toks):
    counts = {}
    for arch, cls in (
        ("gpt2", transformers.GPT2LMHeadModel),
        ("bert", transformers.BertForPreTraining),
        ("bart", transformers.BartForConditionalGeneration),
    ):
        for size in ("tiny", "mini", "small"):
            config = scratch.preset(arch, size, toks[arch], 128)
            assert config.vocab_size == len(toks[arch])
            counts[arch, size] = sum(p.numel() for p in cls(config).parameters())
    # With this 4k vocabulary (the default 8k adds 0.25M to tiny and 1.5M to small).
    for arch in ("gpt2", "bert", "bart"):
        assert 0.2e6 < counts[arch, "tiny"] < 1.5e6, counts
        assert 10e6 < counts[arch, "small"] < 20e6, counts
        assert 4e6 < counts[arch, "mini"] < 0.6 * counts[arch, "small"], counts
    assert "tiny, mini, small" in _error(scratch.preset, "bert", "huge", toks["bert"], 128)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_each_objective_trains_a_tiny_model_from_scratch(name, toks, reviews):
    obj = OBJECTIVES[name]
    tok = toks[obj.arch]
    data, collate = prepare(name, tok, reviews[:40], 64, seed=0)
    batch = collate([data[i] for i in range(8)])
    keys = {"input_ids", "attention_mask", "labels"} | (
        {"token_type_ids", "next_sentence_label"} if name == "mlm+nsp" else set()
    )
    assert set(batch) == keys and all(isinstance(v, torch.Tensor) for v in batch.values())
    torch.manual_seed(0)
    model = getattr(transformers, obj.model_class).from_config(
        scratch.preset(obj.arch, "tiny", tok, 64)
    )
    loss = model(**batch).loss
    loss.backward()
    # An untrained model predicts about uniformly: cross-entropy near ln(vocab) (plus ln 2 for the
    # NSP head), which also shows that the labels select real targets (all -100 would give nan).
    expected = math.log(len(tok)) + (math.log(2) if name == "mlm+nsp" else 0)
    assert abs(loss.item() - expected) < 1.0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad and p.dim() == 2)


def test_objectives_refuse_unsuitable_tokenizers_short_corpora_and_unknown_options(toks, reviews):
    assert "mask token" in _error(mlm.dataset, toks["gpt2"], reviews[:5], 64)
    assert "<s>" in _error(denoise.dataset, toks["bert"], reviews[:5], 64)
    assert "two documents" in _error(nsp.dataset, toks["bert"], reviews[:1], 64)
    assert "fewer than one block of 512" in _error(
        clm.dataset, toks["gpt2"], ["Too short.", "Also short."], 512
    )
    assert "unknown objective 'mlm+sop'" in _error(
        prepare, "mlm+sop", toks["bert"], reviews[:5], 64
    )
    assert "whole-word" in _error(
        prepare, "clm", toks["gpt2"], reviews[:5], 64, whole_word_mask=True
    )


def test_sentence_boundaries_do_not_depend_on_offset_trimming(toks, reviews):
    from tokenizers import Tokenizer, processors

    # Without trimming, byte-level offsets of "ĠThe" start on the space before the sentence; tokens
    # must still go to the sentence they open.
    raw = Tokenizer.from_str(toks["gpt2"].backend_tokenizer.to_str())
    raw.post_processor = processors.ByteLevel(trim_offsets=False)
    assert raw.encode("a b", add_special_tokens=False).offsets[-1] == (1, 3)
    untrimmed = transformers.PreTrainedTokenizerFast(tokenizer_object=raw)
    docs = reviews[:30]
    expected = [d.sentence_starts for d in tokenize(toks["gpt2"], docs, sentences=True)]
    assert [d.sentence_starts for d in tokenize(untrimmed, docs, sentences=True)] == expected
    assert sum(len(s) for s in expected) > 200


# --- packing (clm, mlm)
# ---------------------------------------------------------------------------------------


def test_clm_packing_is_exact_and_in_order(toks, reviews):
    tok = toks["gpt2"]
    docs = reviews[:50]
    stream = [t for d in docs for t in tok(d)["input_ids"] + [tok.eos_token_id]]
    data = clm.dataset(tok, docs, 100)
    assert len(data) == len(stream) // 100 > 50
    items = [data[i] for i in range(len(data))]
    assert all(
        len(x["input_ids"]) == 100
        and x["labels"] == x["input_ids"]
        and x["attention_mask"] == [1] * 100
        for x in items
    )
    assert [t for x in items for t in x["input_ids"]] == stream[: len(data) * 100]
    batch = clm.collator()(items[:4])
    assert batch["input_ids"].shape == (4, 100) and torch.equal(batch["labels"], batch["input_ids"])


def test_mlm_blocks_are_full_and_framed(toks, reviews):
    tok = toks["bert"]
    docs = reviews[:30]
    stream = [
        t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
    ]
    data = mlm.dataset(tok, docs, 64, whole_word_mask=True)
    blocks = np.array([data[i]["input_ids"] for i in range(len(data))])
    assert blocks.shape == (len(stream) // 62, 64) and tok.pad_token_id not in blocks
    assert (blocks[:, 0] == tok.cls_token_id).all() and (blocks[:, -1] == tok.sep_token_id).all()
    assert blocks[:, 1:-1].ravel().tolist() == stream[: blocks.shape[0] * 62]
    spans = np.array([data[i]["offset_mapping"] for i in range(len(data))])
    assert spans.shape == (len(data), 64, 2)
    # The word spans travel with their tokens: a '##' piece touches the span before it, any other
    # token starts a new word (after a gap), which is how the whole-word collator reads them.
    pieces = np.array(
        [[t.startswith("##") for t in tok.convert_ids_to_tokens(row.tolist())] for row in blocks]
    )
    touching = (
        spans[:, 1:, 0] == spans[:, :-1, 1]
    )  # [:, j]: token j + 1 continues the word of token j
    # Text tokens 2..62 (a block's first text token, 1, starts a word whatever it is).
    assert (touching[:, 1:-1] == pieces[:, 2:-1]).all() and pieces[:, 2:-1].sum() > 100


# --- masking statistics
# ----------------------------------------------------------------------------------------


def _mask_all(collate, data) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    items = [data[i] for i in range(len(data))]
    orig = np.array([x["input_ids"] for x in items])
    out = [collate(items[i : i + 64]) for i in range(0, len(items), 64)]
    return (
        orig,
        torch.cat([b["input_ids"] for b in out]).numpy(),
        torch.cat([b["labels"] for b in out]).numpy(),
    )


def _check_bert_masking(tok, orig, inputs, labels, rate_tolerance):
    special = np.isin(orig, tok.all_special_ids)
    chosen = labels != -100
    assert (~special).sum() > 90_000
    assert not (chosen & special).any() and (inputs[special] == orig[special]).all()
    assert (labels[chosen] == orig[chosen]).all() and (inputs[~chosen] == orig[~chosen]).all()
    rate = chosen.sum() / (~special).sum()
    assert abs(rate - 0.15) < rate_tolerance, rate
    as_mask = (inputs[chosen] == tok.mask_token_id).mean()
    unchanged = (inputs[chosen] == orig[chosen]).mean()
    assert abs(as_mask - 0.8) < 0.02 and abs(unchanged - 0.1) < 0.02, (as_mask, unchanged)
    assert abs((1 - as_mask - unchanged) - 0.1) < 0.02  # random replacements
    return chosen


def test_mlm_masks_15_percent_of_tokens_80_10_10_and_the_seed_fixes_the_masks(toks, reviews):
    # ~115k maskable tokens: the 15% rate has a standard error of 0.1 point, the 80/10/10 split
    # (over ~17k chosen tokens) 0.3 point; tolerances of 0.5 and 2 points are 5 standard errors and
    # more.
    tok = toks["bert"]
    data = mlm.dataset(tok, reviews[:400], 128)
    orig, inputs, labels = _mask_all(mlm.collator(tok, seed=0), data)
    _check_bert_masking(tok, orig, inputs, labels, 0.005)
    again = _mask_all(mlm.collator(tok, seed=0), data)
    other = _mask_all(mlm.collator(tok, seed=1), data)
    assert (again[2] == labels).all() and not (other[2] == labels).all()  # the seed fixes the masks


def _word_groups(tok, ids: np.ndarray) -> list[list[int]]:
    """Positions of each word of a block: a piece and the '##' pieces that follow it."""
    groups: list[list[int]] = []
    specials = set(tok.all_special_ids)
    for i, t in enumerate(tok.convert_ids_to_tokens(ids.tolist())):
        if ids[i] in specials:
            continue
        if t.startswith("##") and groups and groups[-1][-1] == i - 1:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def test_whole_word_masking_masks_every_piece_of_a_word(toks, reviews):
    tok = toks["bert"]
    data = mlm.dataset(tok, reviews[:400], 128, whole_word_mask=True)
    orig, inputs, labels = _mask_all(mlm.collator(tok, whole_word_mask=True, seed=0), data)
    # Words, not tokens, are drawn, so chosen tokens come in clumps: the rate's standard error is
    # about twice the per-token one, hence 1 point of tolerance. 80/10/10 is still decided per
    # token.
    chosen = _check_bert_masking(tok, orig, inputs, labels, 0.01)
    split, whole = 0, 0
    _, _, plain = _mask_all(mlm.collator(tok, seed=0), data)
    for row in range(len(orig)):
        for g in _word_groups(tok, orig[row]):
            if len(g) > 1:
                assert len(set(chosen[row, g])) == 1  # all pieces or none
                whole += bool(chosen[row, g[0]])
                split += len(set(plain[row, g] != -100)) > 1
    # Enough multi-piece words were chosen for the check to mean something, and token-level masking
    # does split words, so the property above is the collator's doing.
    assert whole > 300 and split > 300


# --- next-sentence prediction
# ---------------------------------------------------------------------------------


def _sentence_streams(tok, doc: str) -> tuple[list[int], set[int]]:
    """The tokens of a document, tokenised one sentence at a time (with the gap after it), and the
    token positions where sentences start."""
    starts = [s for s, _ in sentence_spans(doc)]
    stream, bounds = [], set()
    for s, e in zip(starts, starts[1:] + [len(doc)]):
        bounds.add(len(stream))
        stream += tok(doc[s:e], add_special_tokens=False)["input_ids"]
    return stream, bounds | {len(stream)}


def _find(stream: list[int], part: list[int]) -> list[int]:
    return [
        i
        for i in range(len(stream) - len(part) + 1)
        if stream[i] == part[0] and stream[i : i + len(part)] == part
    ]


def test_nsp_pairs_are_consecutive_or_from_another_document(toks, reviews):
    tok = toks["bert"]
    docs = reviews[:700]
    tokenized = tokenize(tok, docs, sentences=True)
    pairs = nsp.pairs(tokenized, 128, seed=0)
    streams = [_sentence_streams(tok, d) for d in docs]
    labels = []
    for p in pairs:
        item = nsp.features(tok, tokenized, p)
        ids, types = item["input_ids"], item["token_type_ids"]
        n_a = types.count(0) - 2
        a, b = ids[1 : 1 + n_a], ids[n_a + 2 : -1]
        assert len(ids) <= 128 and a and b and ids[0] == tok.cls_token_id
        assert ids[n_a + 1] == ids[-1] == tok.sep_token_id and types == [0] * (n_a + 2) + [1] * (
            len(b) + 1
        )
        stream, bounds = streams[p.a_doc]
        labels.append(item["next_sentence_label"])
        together = _find(stream, a + b)
        if item["next_sentence_label"] == 0:
            # B is the text right after A in the same review, and A ends where a sentence ends.
            assert any(i + len(a) in bounds for i in together)
        else:
            b_stream, b_bounds = streams[p.b_doc]
            assert p.b_doc != p.a_doc and not together
            assert any(i + len(a) in bounds for i in _find(stream, a))
            assert any(i in b_bounds for i in _find(b_stream, b))
    # ~2,600 pairs: the share of random ones has a standard error of 1 point, and 3 points is 3 of
    # them. Not wider: forcing one-sentence chunks into random pairs, as BERT does, gave 54% here.
    assert len(pairs) > 2000 and abs(np.mean(labels) - 0.5) < 0.03
    assert nsp.pairs(tokenized, 128, seed=0) == pairs and nsp.pairs(tokenized, 128, seed=1) != pairs


@pytest.mark.parametrize("whole_word", [False, True])
def test_nsp_collator_pads_masks_and_keeps_labels(toks, reviews, whole_word):
    tok = toks["bert"]
    data = nsp.dataset(tok, reviews[:60], 128, seed=0, whole_word_mask=whole_word)
    items = [data[i] for i in range(32)]
    batch = nsp.NSPCollator(tok, whole_word_mask=whole_word, seed=0)(items)
    assert batch["input_ids"].shape[1] % 8 == 0 and batch["input_ids"].shape[1] >= max(
        len(x["input_ids"]) for x in items
    )
    assert batch["next_sentence_label"].tolist() == [x["next_sentence_label"] for x in items]
    assert 0 < sum(x["next_sentence_label"] for x in items) < 32
    for row, x in enumerate(items):
        n = len(x["input_ids"])
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (
            batch["input_ids"].shape[1] - n
        )
        assert batch["token_type_ids"][row, :n].tolist() == x["token_type_ids"]
        labels = batch["labels"][row]
        orig = torch.tensor(x["input_ids"])
        assert (labels[n:] == -100).all() and (
            batch["input_ids"][row, n:] == tok.pad_token_id
        ).all()
        special = torch.isin(orig, torch.tensor(tok.all_special_ids))
        assert (labels[:n][special] == -100).all() and (
            batch["input_ids"][row, :n][special] == orig[special]
        ).all()
        chosen = labels[:n] != -100
        assert (labels[:n][chosen] == orig[chosen]).all()
    assert 0.08 < (batch["labels"] != -100).sum() / batch["attention_mask"].sum() < 0.22


# --- denoising
# ------------------------------------------------------------------------------------------------


def test_poisson_spans_mask_30_percent_with_poisson_3_lengths_placed_uniformly():
    rng = np.random.default_rng(0)
    drawn, first_half, masked_total = [], 0, 0
    for _ in range(1500):
        n = int(rng.integers(20, 400))
        spans = denoise.poisson_spans(n, rng)
        lengths = [length for _, length in spans]
        assert sum(lengths) == round(0.3 * n)  # exactly 30% of the tokens
        assert (
            all(s1 + l1 <= s2 for (s1, l1), (s2, _) in zip(spans, spans[1:])) and spans[-1][0] <= n
        )
        drawn += lengths[:-1]  # the last span is shortened to hit 30% exactly
        first_half += sum(min(s + length, n // 2) - s for s, length in spans if s < n // 2)
        masked_total += sum(lengths)
    # ~20k Poisson(3) draws: the mean's standard error is 0.012, the variance's about 0.04.
    drawn = np.array(drawn)
    assert len(drawn) > 15_000
    assert abs(drawn.mean() - 3) < 0.1 and abs(drawn.var() - 3) < 0.25
    assert abs((drawn == 0).mean() - math.exp(-3)) < 0.01  # zero-length spans: mask insertions
    assert abs(first_half / masked_total - 0.5) < 0.02  # spans are placed uniformly


def test_infill_collapses_each_span_to_one_mask():
    rng = np.random.default_rng(1)
    for _ in range(300):
        tokens = list(range(10, 10 + int(rng.integers(5, 200))))
        noised, spans = denoise.infill(tokens, 4, rng)
        assert noised.count(4) == len(spans)
        gone = {i for s, length in spans for i in range(s, s + length)}
        assert [t for t in noised if t != 4] == [t for i, t in enumerate(tokens) if i not in gone]
        # Each mask stands exactly where its span was, after the tokens before it.
        kept_before = [sum(1 for i in range(s) if i not in gone) for s, _ in spans]
        mask_positions = [i for i, t in enumerate(noised) if t == 4]
        assert mask_positions == [k + j for j, k in enumerate(kept_before)]


def _is_arrangement(seq: list[int], blocks: list[list[int]]) -> bool:
    """Whether ``seq`` is the concatenation of all ``blocks`` in some order."""
    if not blocks:
        return not seq
    return any(
        seq[: len(b)] == b and _is_arrangement(seq[len(b) :], blocks[:i] + blocks[i + 1 :])
        for i, b in enumerate(blocks)
    )


def test_denoise_segments_keep_the_text_and_its_sentences(toks, reviews):
    tok = toks["bart"]
    docs = reviews[:80]
    data = denoise.dataset(tok, docs, 128)
    items = [data[i] for i in range(len(data))]
    assert all(
        len(x["input_ids"]) <= 128
        and x["input_ids"][0] == tok.bos_token_id
        and x["input_ids"][-1] == tok.eos_token_id
        and x["sentence_starts"][0] == 1
        for x in items
    )
    # Lossless: the segments' texts, joined, are the reviews, byte for byte.
    joined = tok.decode(
        [t for x in items for t in x["input_ids"][1:-1]], clean_up_tokenization_spaces=False
    )
    assert joined == "".join(docs)
    known = {GAPS.sub(" ", s) for d in docs for s in sentences(d)}
    blocks = [
        x["input_ids"][a:b]
        for x in items
        for a, b in zip(x["sentence_starts"], x["sentence_starts"][1:] + [len(x["input_ids"]) - 1])
    ]
    found = [
        GAPS.sub(" ", tok.decode(b, clean_up_tokenization_spaces=False)).strip() in known
        for b in blocks
    ]
    assert (
        len(blocks) > 500 and np.mean(found) > 0.97
    )  # the rest: pieces of sentences longer than a segment


def test_denoise_collator_permutes_masks_and_keeps_labels(toks, reviews):
    tok = toks["bart"]
    data = denoise.dataset(tok, reviews[:80], 128)
    items = [data[i] for i in range(200)]
    permuted = denoise.DenoisingCollator(tok, seed=0, mask_ratio=0.0)(items)
    changed = []
    for row, x in enumerate(items):
        labels = [t for t in permuted["labels"][row].tolist() if t != -100]
        assert labels == x["input_ids"]  # the decoder reconstructs the original, in order
        enc = [t for t in permuted["input_ids"][row].tolist() if t != tok.pad_token_id]
        starts = x["sentence_starts"] + [len(x["input_ids"]) - 1]
        sents = [x["input_ids"][a:b] for a, b in zip(starts, starts[1:])]
        assert (
            enc[0] == tok.bos_token_id
            and enc[-1] == tok.eos_token_id
            and _is_arrangement(enc[1:-1], sents)
        )
        if len(sents) >= 3:
            changed.append(enc != x["input_ids"])
    assert (
        len(changed) > 50 and np.mean(changed) > 0.75
    )  # 5/6 or more of these orders differ from the original

    batch = denoise.DenoisingCollator(tok, seed=0)(items)
    assert torch.equal(batch["labels"], permuted["labels"])
    for row, x in enumerate(items):
        enc = [t for t in batch["input_ids"][row].tolist() if t != tok.pad_token_id]
        n = len(x["input_ids"]) - 2
        kept = Counter(t for t in enc[1:-1] if t != tok.mask_token_id)
        assert not kept - Counter(x["input_ids"][1:-1])  # only original tokens survive, no new ones
        assert n - sum(kept.values()) == round(0.3 * n)  # exactly 30% of them are gone
        assert enc.count(tok.mask_token_id) >= 1 and len(enc) <= len(x["input_ids"])
    again = denoise.DenoisingCollator(tok, seed=0)(items)
    assert torch.equal(again["input_ids"], batch["input_ids"])
