"""Dataset, per-batch padding, length-bucketed batches, per-epoch meta dropping."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from fst.core.constants import LOSS_IGNORE
from fst.core.documents import Document
from fst.core.tokenization import DocumentTokenizer, Encoding
from fst.training.data import BucketBatchSampler, Collate, DocumentDataModule, EncodingDataset


@pytest.fixture(scope="module")
def gpt2_tokenizer(gpt2_bpe_dir):
    def make(**settings):
        return DocumentTokenizer.from_gpt2_files(
            gpt2_bpe_dir / "vocab.json", gpt2_bpe_dir / "merges.txt", **settings
        )

    return make


def test_collate_pads_right_and_ignores_padding():
    batch = [Encoding([5, 6, 7], [LOSS_IGNORE, 6, 7]), Encoding([8], [8])]
    out = Collate(pad_token_id=0)(batch)
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[LOSS_IGNORE, 6, 7], [8, LOSS_IGNORE, LOSS_IGNORE]]
    assert all(t.dtype == torch.long for t in out.values())


def test_padded_batch_gives_the_same_logits_as_unpadded():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(
        transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=20)
    ).eval()
    short, long = Encoding([3, 4], [3, 4]), Encoding([5, 6, 7, 8], [5, 6, 7, 8])
    batch = Collate(pad_token_id=0)([short, long])
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    alone = model(input_ids=torch.tensor([[3, 4]])).logits
    torch.testing.assert_close(logits[0, :2], alone[0], rtol=1e-5, atol=1e-5)


def mean_spread(batches, lengths) -> float:
    return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(
        batches
    )


def test_bucket_sampler_covers_every_index_once_and_groups_lengths():
    lengths = [(i * 37) % 101 for i in range(200)]
    sampler = BucketBatchSampler(lengths, batch_size=8, shuffle=True, seed=1, bucket_batches=5)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 25
    assert Counter(i for b in batches for i in b) == Counter(range(200))
    # Within a batch lengths are close: a far smaller spread than plain random batches.
    random_batches = list(BucketBatchSampler(lengths, 8, shuffle=True, seed=1, bucket_batches=1))
    assert mean_spread(batches, lengths) < mean_spread(random_batches, lengths) / 2
    # Same seed and epoch: same batches; another epoch: another order.
    assert list(BucketBatchSampler(lengths, 8, True, seed=1, bucket_batches=5)) == batches
    assert list(BucketBatchSampler(lengths, 8, True, seed=1, epoch=1, bucket_batches=5)) != batches


def test_bucket_sampler_without_shuffle_keeps_order():
    assert list(BucketBatchSampler([1] * 5, batch_size=2, shuffle=False)) == [[0, 1], [2, 3], [4]]


def test_bucket_sampler_shards_equal_counts_across_replicas():
    lengths = list(range(43))  # 6 batches of 8 (the last one short)
    shards = [
        list(BucketBatchSampler(lengths, 8, True, seed=3, num_replicas=4, rank=r)) for r in range(4)
    ]
    assert [len(s) for s in shards] == [1, 1, 1, 1]
    assert all(
        len(BucketBatchSampler(lengths, 8, True, num_replicas=4, rank=r)) == 1 for r in range(4)
    )
    indices = [i for shard in shards for b in shard for i in b]
    assert len(indices) == len(set(indices))


def test_meta_is_redrawn_per_epoch_and_reproducible(gpt2_tokenizer):
    docs = [Document(body=f"body number {i}", meta=f"meta {i}") for i in range(40)]
    tok = gpt2_tokenizer(max_meta_len=8, max_body_len=32, ignore_meta_prob=0.5)
    data = DocumentDataModule(tok, docs, docs[:4], batch_size=4, seed=7)

    def with_meta(epoch: int) -> list[bool]:
        return [tok.end_of_meta_id in e.token_ids for e in data.train_dataset(epoch).encodings]

    epoch0, epoch1 = with_meta(0), with_meta(1)
    assert 5 < sum(epoch0) < 35 and 5 < sum(epoch1) < 35  # about half
    assert epoch0 != epoch1
    assert with_meta(0) == epoch0  # (seed, epoch) decides
    other_seed = DocumentDataModule(tok, docs, docs[:4], batch_size=4, seed=8)
    assert [
        tok.end_of_meta_id in e.token_ids for e in other_seed.train_dataset(0).encodings
    ] != epoch0
    # Validation keeps every meta.
    assert all(tok.end_of_meta_id in e.token_ids for e in data.valid_dataset().encodings)


def test_encodings_are_cached_when_no_meta_is_dropped(gpt2_tokenizer):
    docs = [Document(body="some text", meta="m")] * 3
    data = DocumentDataModule(gpt2_tokenizer(ignore_meta_prob=0.0), docs, docs, batch_size=2)
    assert data.train_dataset(0) is data.train_dataset(5)


def test_dataloader_batches_are_padded_per_batch(gpt2_tokenizer):
    docs = [Document(body="word " * n) for n in (1, 2, 30, 31)]
    tok = gpt2_tokenizer(max_body_len=64)
    data = DocumentDataModule(tok, docs, docs, batch_size=2, bucket_batches=2)
    widths = sorted(b["input_ids"].shape[1] for b in data.train_dataloader())
    # Buckets put the two short and the two long documents together: no batch padded to 33.
    expected = sorted(
        max(len(e.token_ids) for e in pair)
        for pair in (data.train_dataset(0).encodings[:2], data.train_dataset(0).encodings[2:])
    )
    assert widths == expected
    assert isinstance(data.valid_dataset(), EncodingDataset)
