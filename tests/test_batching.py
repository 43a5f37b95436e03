"""Length-grouped training batches, length-sorted evaluation, dynamic padding, input order kept."""

from __future__ import annotations

import numpy as np
import torch

from warmstart import models
from warmstart.data import read_examples
from warmstart.data.batching import LengthGroupedBatches, collator, encode, sorted_batches
from warmstart.inference.batched import predict_logits


def test_length_grouped_batches_cover_each_row_once_and_depend_only_on_seed_and_epoch():
    lengths = np.random.default_rng(0).integers(5, 500, size=1003)
    s = LengthGroupedBatches(lengths, batch_size=16, seed=7)
    first = s.batches()
    assert sorted(i for b in first for i in b) == list(range(1003))
    assert len(first) == len(s) == 63
    again = LengthGroupedBatches(lengths, batch_size=16, seed=7).batches()
    assert first == again
    s.set_epoch(1)
    assert s.batches() != first


def test_length_grouping_cuts_padding_against_random_batches():
    lengths = np.random.default_rng(1).integers(20, 512, size=4000)

    def waste(batches):
        return sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches) / sum(
            lengths[b].max() * len(b) for b in batches)

    grouped = LengthGroupedBatches(lengths, 16, seed=0).batches()
    rng = np.random.default_rng(0).permutation(4000)
    random = [rng[i:i + 16] for i in range(0, 4000, 16)]
    assert waste(grouped) < 0.05 < 0.3 < waste(random)


def test_sorted_batches_go_longest_first():
    batches = sorted_batches(np.array([3, 9, 1, 7, 5]), 2)
    assert batches == [[1, 3], [4, 0], [2]]


def test_batches_are_padded_to_their_own_longest_text_and_predictions_keep_input_order(tiny_models, imdb_head):
    path = str(tiny_models["bert"])
    tok = models.load_tokenizer(path)
    ex = read_examples(str(imdb_head), limit=40)
    data = encode(tok, ex, max_length=64)
    batch = collator(tok)([data[i] for i in (0, 1, 2)])
    longest = max(data.lengths[:3])
    assert batch["input_ids"].shape[1] == -(-longest // 8) * 8  # padded to the batch, not to 64 or 128
    model = models.load_classifier(path, ["0", "1"])
    torch.manual_seed(0)
    batched = predict_logits(model, data, 8, collator(tok), torch.device("cpu"))
    one_by_one = np.concatenate([predict_logits(model, encode(tok, ex.take([i]), 64), 1, collator(tok),
                                                torch.device("cpu")) for i in range(len(ex))])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
