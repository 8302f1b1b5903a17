"""SPIN's batching (Chang, Liu & Glass, 2023; vectominist/spin ``src/data/sampler.py``, ``dataset.py``,
``config/spin.yaml``): utterances sorted by length and packed up to a total of audio per update.

SPIN's data set drops utterances under ``min_audio_len`` (40,000 samples = 2.5 s), sorts the rest longest
first, and its ``MaxLengthBatchSampler`` packs them greedily into batches of at most ``batch_len``
(4,096,000 samples = 256 s) counting each utterance as ``min(length, random_crop_len)`` (272,000 samples =
17 s); the last, incomplete batch is dropped and the batches are shuffled every epoch. Each longer
utterance is cropped at random to ``random_crop_len`` when it is read (:meth:`.data.PairDataset.crop`).

Config keys (``data.*``, method ``spin``): ``pack_seconds`` (256), ``min_seconds`` (2.5), ``crop_seconds``
(17); without ``pack_seconds`` an update holds ``utterances_per_update`` whole utterances
(:class:`.data.UpdateSampler`).

Example::

    sampler = make_sampler(cfg.data, [u.num_samples for u in utts], seed=0)   # PackedSampler or UpdateSampler
    sampler.group(0)                                                          # [(index, epoch), ...]
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from score_upstream.training.data import DataError, UpdateSampler, mix_seed

logger = logging.getLogger(__name__)


def pack_batches(lengths: list[int], max_samples: int, crop_samples: Optional[int] = None,
                 min_samples: int = 0) -> list[list[int]]:
    """SPIN's batches (vectominist/spin ``MaxLengthBatchSampler`` over its length-sorted dataset).

    Utterances shorter than ``min_samples`` are left out; the rest, longest first (ties in manifest order),
    are packed greedily: an utterance joins the open batch while the batch's total of
    ``min(length, crop_samples)`` stays ``<= max_samples``, else it opens the next batch. The last, incomplete
    batch is dropped (SPIN's ``drop_last=True`` for training). The batches are the same every epoch; only
    their order changes.

    Raises:
        DataError: an utterance alone exceeds ``max_samples`` (SPIN raises too).
    """
    crop = crop_samples if crop_samples else None
    order = sorted((i for i in range(len(lengths)) if lengths[i] >= min_samples), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    batch: list[int] = []
    total = 0
    for i in order:
        n = lengths[i] if crop is None else min(lengths[i], crop)
        if n > max_samples:
            raise DataError(f"an utterance of {n} samples is longer than data.pack_seconds allows ({max_samples} "
                            "samples); raise data.pack_seconds or set data.crop_seconds")
        if total + n > max_samples:
            batches.append(batch)
            batch, total = [], 0
        batch.append(i)
        total += n
    return batches


class PackedSampler(UpdateSampler):
    """SPIN's batching as a batch sampler: update ``u`` is batch ``u mod B`` of epoch ``u // B`` in that
    epoch's random order of the :func:`pack_batches` batches (``B`` of them); each process takes its share
    of an update's utterances (SPIN gives each GPU a batch of its own: ``pack_seconds`` is the update's
    total here, all processes together).

    Args:
        lengths: samples per utterance. max_samples, crop_samples, min_samples: see :func:`pack_batches`.
    """

    def __init__(self, lengths: list[int], max_samples: int, seed: int, rank: int = 0, world: int = 1,
                 crop_samples: Optional[int] = None, min_samples: int = 0, sample_rate: int = 16000):
        self.lengths, self.seed, self.rank, self.world = lengths, seed, rank, world
        self.crop = crop_samples if crop_samples else None
        self.start, self.stop = 0, None
        self.batches = pack_batches(lengths, max_samples, crop_samples, min_samples)
        short = sum(n < min_samples for n in lengths)
        if not self.batches or min(len(b) for b in self.batches) < world:
            kept = sum(self.cropped(i) for i in range(len(lengths)) if lengths[i] >= min_samples)
            raise DataError(f"{len(lengths) - short} utterances ({kept / sample_rate:.1f} s after cropping; {short} "
                            f"shorter than data.min_seconds left out) fill {len(self.batches)} complete updates of "
                            f"data.pack_seconds with at least {world} utterance(s) each; lower data.pack_seconds or "
                            "data.min_seconds, or add audio")
        logger.info("SPIN batching: %d updates per epoch, %.1f utterances each on average; %d utterances shorter "
                    "than data.min_seconds left out", len(self.batches),
                    sum(map(len, self.batches)) / len(self.batches), short)
        self._orders: dict[int, list[int]] = {}

    def cropped(self, i: int) -> int:
        """Samples of utterance ``i`` after cropping."""
        return self.lengths[i] if self.crop is None else min(self.lengths[i], self.crop)

    def updates_per_epoch(self) -> float:
        return float(len(self.batches))

    def epoch_of(self, update: int) -> int:
        return update // len(self.batches)

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, 5))
            self._orders[epoch] = torch.randperm(len(self.batches), generator=g).tolist()
        return self._orders[epoch]

    def group(self, update: int) -> list[tuple[int, int]]:
        epoch, k = divmod(update, len(self.batches))
        return [(i, epoch) for i in self.batches[self._order(epoch)[k]]]


def make_sampler(data, lengths: list[int], seed: int, rank: int = 0, world: int = 1) -> UpdateSampler:
    """The batch sampler a ``DataConfig`` asks for: :class:`PackedSampler` when ``data.pack_seconds`` is
    set (SPIN's batching), else :class:`UpdateSampler` (``data.utterances_per_update`` whole utterances)."""
    sr = data.sample_rate
    if getattr(data, "pack_seconds", None):
        return PackedSampler(lengths, int(data.pack_seconds * sr), seed, rank, world, crop_samples(data),
                             int(round(data.min_seconds * sr)), sr)
    return UpdateSampler(lengths, data.utterances_per_update, seed, rank, world, data.bucket_window)


def crop_samples(data) -> Optional[int]:
    """The crop length a ``DataConfig`` asks for (``data.crop_seconds`` with SPIN's batching), or None."""
    if getattr(data, "pack_seconds", None) and getattr(data, "crop_seconds", None):
        return int(round(data.crop_seconds * data.sample_rate))
    return None


def drawn_samples(sampler: UpdateSampler, update: int) -> int:
    """Audio samples drawn for update ``update``, all processes together (after cropping)."""
    crop = getattr(sampler, "crop", None)
    return sum(sampler.lengths[i] if crop is None else min(sampler.lengths[i], crop) for i, _ in sampler.group(update))
