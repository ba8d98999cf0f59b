"""Training data: encoded documents, length-bucketed batches padded per batch, DataModule.

Documents are tokenized once in the main process (batched `tokenizers` calls, a bounded
batch at a time) into a `TokenCorpus` of flat int32 arrays; the DataLoader workers only
collate. With `0 < ignore_meta_prob < 1` the training set is
re-encoded at the start of every epoch with an RNG seeded by (seed, epoch), so each epoch
drops a different, reproducible set of metas. Loaders are rebuilt every epoch
(`RELOAD_EVERY_N_EPOCHS`, the Trainer must use it) and never use persistent workers, so
worker processes end with their epoch. A worker also dies with the training process: on
Linux the kernel kills it the moment its parent dies, even of SIGKILL (torch's own watchdog
only notices after up to 5 s).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fst.core.constants import LOSS_IGNORE
from fst.core.documents import Document
from fst.core.token_corpus import TokenCorpus
from fst.core.tokenization import DocumentTokenizer, Encoding
from fst.training.worker_init import WorkerInit

# The Trainer option the DataModule relies on (see module docstring).
RELOAD_EVERY_N_EPOCHS = 1


class EncodingDataset(Dataset):
    """`Encoding`s (token ids + labels): a list, or a `TokenCorpus` (flat arrays)."""

    def __init__(self, encodings: Sequence[Encoding] | TokenCorpus) -> None:
        self.encodings = encodings if isinstance(encodings, TokenCorpus) else list(encodings)

    def __len__(self) -> int:
        return len(self.encodings)

    def __getitem__(self, index: int) -> Encoding:
        return self.encodings[index]

    @property
    def lengths(self) -> list[int]:
        if isinstance(self.encodings, TokenCorpus):
            return self.encodings.lengths.tolist()
        return [len(e.token_ids) for e in self.encodings]


class Collate:
    """Right-pads a list of encodings to the longest one of the batch.

    Padding gets attention 0 and label LOSS_IGNORE, so its id does not matter.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, batch: Sequence[Encoding]) -> dict[str, torch.Tensor]:
        width = max(len(e.token_ids) for e in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(batch), width), LOSS_IGNORE, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, enc in enumerate(batch):
            n = len(enc.token_ids)
            input_ids[row, :n] = torch.tensor(enc.token_ids, dtype=torch.long)
            labels[row, :n] = torch.tensor(enc.labels, dtype=torch.long)
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of indices; sequences of similar length share a batch (less padding).

    With shuffle, indices are shuffled, cut into buckets of `bucket_batches` batches, each
    bucket sorted by length and cut into batches, and the batches shuffled again.
    `bucket_batches=1` gives plain random batches. Without shuffle the order is kept.
    For distributed training each replica takes every `num_replicas`-th batch; trailing
    batches that would leave replicas with unequal counts are dropped.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        bucket_batches: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = epoch
        self.bucket_batches = bucket_batches
        self.num_replicas = num_replicas
        self.rank = rank

    def _all_batches(self) -> list[list[int]]:
        indices = list(range(len(self.lengths)))
        if not self.shuffle:
            return [
                indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)
            ]
        rng = random.Random(f"{self.seed}-{self.epoch}")
        rng.shuffle(indices)
        bucket = self.batch_size * self.bucket_batches
        batches = []
        for start in range(0, len(indices), bucket):
            chunk = sorted(indices[start : start + bucket], key=self.lengths.__getitem__)
            batches += [
                chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
            ]
        rng.shuffle(batches)
        return batches

    def _my_batches(self) -> list[list[int]]:
        batches = self._all_batches()
        if self.num_replicas > 1:
            usable = len(batches) - len(batches) % self.num_replicas
            batches = batches[self.rank : usable : self.num_replicas]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._my_batches())

    def __len__(self) -> int:
        n = -(-len(self.lengths) // self.batch_size)
        return n // self.num_replicas if self.num_replicas > 1 else n


class DocumentDataModule(pl.LightningDataModule):
    """Train/valid loaders over documents encoded by a `DocumentTokenizer`."""

    def __init__(
        self,
        tokenizer: DocumentTokenizer,
        train_documents: Sequence[Document],
        valid_documents: Sequence[Document],
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        bucket_batches: int = 50,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.train_documents = list(train_documents)
        self.valid_documents = list(valid_documents)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.bucket_batches = bucket_batches
        self._train_cache: tuple[int | None, EncodingDataset] | None = None
        self._valid: EncodingDataset | None = None

    @property
    def redraws_meta(self) -> bool:
        """Whether each epoch drops a different random set of metas."""
        return 0.0 < self.tokenizer.settings()["ignore_meta_prob"] < 1.0

    def train_dataset(self, epoch: int) -> EncodingDataset:
        """The training encodings of `epoch` (cached when they do not depend on it)."""
        key = epoch if self.redraws_meta else None
        if self._train_cache is None or self._train_cache[0] != key:
            self._train_cache = None  # the last epoch's arrays go before the next are built
            rng = random.Random(f"{self.seed}-{epoch}") if self.redraws_meta else None
            encodings = self.tokenizer.encode_corpus(self.train_documents, rng)
            self._train_cache = (key, EncodingDataset(encodings))
        return self._train_cache[1]

    def valid_dataset(self) -> EncodingDataset:
        if self._valid is None:
            # No rng: validation keeps every meta, the same set every time.
            self._valid = EncodingDataset(self.tokenizer.encode_corpus(self.valid_documents))
        return self._valid

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        dataset = self.train_dataset(epoch)
        sampler = BucketBatchSampler(
            dataset.lengths,
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            epoch=epoch,
            bucket_batches=self.bucket_batches,
            **self._replicas(),
        )
        return self._loader(dataset, sampler)

    def val_dataloader(self) -> DataLoader:
        dataset = self.valid_dataset()
        sampler = BucketBatchSampler(
            dataset.lengths, self.batch_size, shuffle=False, **self._replicas()
        )
        return self._loader(dataset, sampler)

    def _replicas(self) -> dict[str, int]:
        if self.trainer is None:
            return {"num_replicas": 1, "rank": 0}
        return {"num_replicas": self.trainer.world_size, "rank": self.trainer.global_rank}

    def _loader(self, dataset: EncodingDataset, sampler: BucketBatchSampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=Collate(self.tokenizer.pad_token_id),
            num_workers=self.num_workers,
            persistent_workers=False,  # workers end with each epoch: nothing left behind
            worker_init_fn=WorkerInit(self._replicas()["rank"]),
        )
