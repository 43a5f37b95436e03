"""Length-grouped training batches, length-sorted evaluation, dynamic padding, input order kept."""

from __future__ import annotations

import numpy as np
import torch

import warmstart
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
            lengths[b].max() * len(b) for b in batches
        )

    grouped = LengthGroupedBatches(lengths, 16, seed=0).batches()
    rng = np.random.default_rng(0).permutation(4000)
    random = [rng[i : i + 16] for i in range(0, 4000, 16)]
    assert waste(grouped) < 0.05 < 0.3 < waste(random)


def test_one_length_bucket_gives_random_batches_in_both_engines(tiny_models, imdb_head, tmp_path):
    # --length-buckets 1: each batch a random draw (as the HF Trainer without group_by_length),
    # padding as random batches carry; both engines take it, and the resolved config records it.
    from warmstart.training.trainer import EpochSeededSampler

    lengths = np.random.default_rng(1).integers(20, 512, size=4000)

    def waste(batches):
        return sum(lengths[b].max() * len(b) - lengths[b].sum() for b in batches) / sum(
            lengths[b].max() * len(b) for b in batches
        )

    native = LengthGroupedBatches(lengths, 16, seed=0, bucket=1).batches()
    assert sorted(i for b in native for i in b) == list(range(4000)) and waste(native) > 0.3
    dataset = [{"input_ids": [0] * int(n)} for n in lengths]
    order = list(
        EpochSeededSampler(16, dataset=dataset, model_input_name="input_ids", seed=0, buckets=1)
    )
    trainer = [order[i : i + 16] for i in range(0, 4000, 16)]
    assert sorted(order) == list(range(4000)) and waste(trainer) > 0.3
    grouped = list(
        EpochSeededSampler(16, dataset=dataset, model_input_name="input_ids", seed=0, buckets=50)
    )
    assert waste([grouped[i : i + 16] for i in range(0, 4000, 16)]) < 0.05
    for engine in ("native", "trainer"):
        out = tmp_path / engine
        warmstart.finetune(
            data=str(imdb_head),
            split="40,10,10",
            model=str(tiny_models["bert"]),
            epochs=1,
            batch_size=8,
            length_buckets=1,
            engine=engine,
            progress=False,
            out=str(out),
        )
        assert "length_buckets: 1" in (out / "config.yaml").read_text()


def test_sorted_batches_go_longest_first():
    batches = sorted_batches(np.array([3, 9, 1, 7, 5]), 2)
    assert batches == [[1, 3], [4, 0], [2]]


def test_batches_are_padded_to_their_own_longest_text_and_predictions_keep_input_order(
    tiny_models, imdb_head
):
    path = str(tiny_models["bert"])
    tok = models.load_tokenizer(path)
    ex = read_examples(str(imdb_head), limit=40)
    data = encode(tok, ex, max_length=64)
    batch = collator(tok)([data[i] for i in (0, 1, 2)])
    longest = max(data.lengths[:3])
    assert (
        batch["input_ids"].shape[1] == -(-longest // 8) * 8
    )  # padded to the batch, not to 64 or 128
    model = models.load_classifier(path, ["0", "1"])
    torch.manual_seed(0)
    batched = predict_logits(model, data, 8, collator(tok), torch.device("cpu"))
    one_by_one = np.concatenate(
        [
            predict_logits(
                model, encode(tok, ex.take([i]), 64), 1, collator(tok), torch.device("cpu")
            )
            for i in range(len(ex))
        ]
    )
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
