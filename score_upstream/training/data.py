"""LibriSpeech scan, manifest, update-sized length-bucketed batches and the (view, view) pair dataset.

Data order is a pure function of ``(seed, epoch)``: :func:`update_groups` lists, for one epoch, the
utterance indices of every optimiser update (``utterances_per_update`` each, all processes together).
Each process takes its share of a group, and :func:`split_micro_batches` cuts that share into
micro-batches of at most ``batch_seconds`` of padded audio. The perturbed view of utterance ``i`` in
epoch ``e`` is drawn from a generator seeded by ``(seed, e, i)``, so results do not depend on the number
of data-loader workers or processes. Resuming needs only ``(epoch, updates done in that epoch)``.

A manifest line is ``(path, num_samples)``, read from file headers::

    Utterance(path='.../train-clean-100/103/1240/103-1240-0000.flac', num_samples=225360)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch

from score_upstream.audio import AudioError, audio_info, read_mono

logger = logging.getLogger(__name__)


class DataError(RuntimeError):
    """A corpus path or subset that is missing or holds no usable audio."""


@dataclass(frozen=True)
class Utterance:
    path: str
    num_samples: int


def find_librispeech(root: str | os.PathLike) -> Path:
    """The directory that holds the subsets: ``root/LibriSpeech`` if present, else ``root`` itself."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: LibriSpeech root not found; pass --data DIR holding LibriSpeech/<subset>/")
    if not root.is_dir():
        raise DataError(f"{root}: LibriSpeech root is not a directory; pass --data DIR holding LibriSpeech/<subset>/")
    return root / "LibriSpeech" if (root / "LibriSpeech").is_dir() else root


def scan_librispeech(root: str | os.PathLike, subsets: list[str]) -> list[Path]:
    """All ``<subset>/<speaker>/<chapter>/*.flac`` files of the given subsets, sorted.

    Raises:
        DataError: the root or a subset is missing, or a subset holds no .flac file.
    """
    base = find_librispeech(root)
    files: list[Path] = []
    for subset in subsets:
        d = base / subset
        if not d.is_dir():
            have = sorted(p.name for p in base.iterdir() if p.is_dir())
            raise DataError(f"{d}: subset '{subset}' not found under {base} (found: {', '.join(have) or 'nothing'})")
        found = sorted(d.glob("*/*/*.flac"))
        if not found:
            raise DataError(f"{d}: subset '{subset}' holds no <speaker>/<chapter>/*.flac files")
        files.extend(found)
    return files


def build_manifest(
    paths: list[Path], sample_rate: int = 16000, max_seconds: Optional[float] = None
) -> tuple[list[Utterance], dict[str, int]]:
    """Read each file's header; skip (and count) unreadable, empty, wrong-rate or over-long files.

    Returns:
        ``(utterances, skipped)`` where ``skipped`` maps a reason to a count.
    """
    utts: list[Utterance] = []
    skipped: dict[str, int] = {}

    def skip(reason: str, path: Path, detail: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1
        logger.warning("skipping %s: %s", path, detail)

    for p in paths:
        try:
            n, sr, _ = audio_info(p)
        except AudioError as e:
            skip("unreadable", p, str(e))
            continue
        if n <= 0:
            skip("empty", p, "no samples")
        elif sr != sample_rate:
            skip("sample_rate", p, f"{sr} Hz, expected {sample_rate} Hz")
        elif max_seconds is not None and n > max_seconds * sample_rate:
            skipped["too_long"] = skipped.get("too_long", 0) + 1
        else:
            utts.append(Utterance(str(p), int(n)))
    if skipped:
        logger.warning("manifest: %d usable files, skipped %s", len(utts), dict(sorted(skipped.items())))
    return utts, skipped


def load_manifest(root: str | os.PathLike, subsets: list[str], sample_rate: int = 16000,
                  max_seconds: Optional[float] = None) -> tuple[list[Utterance], dict[str, int]]:
    """:func:`scan_librispeech` + :func:`build_manifest`; raises DataError when nothing is usable."""
    utts, skipped = build_manifest(scan_librispeech(root, subsets), sample_rate, max_seconds)
    if not utts:
        raise DataError(f"{find_librispeech(root)}: no usable utterance in {subsets} (skipped: {skipped})")
    return utts, skipped


def mix_seed(*values: int) -> int:
    """A stable 63-bit seed from integers (splitmix64 steps; Python's hash() is salted per process)."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x & 0x7FFFFFFFFFFFFFFF


def update_groups(lengths: list[int], per_update: int, seed: int, epoch: int, bucket_window: int = 0) -> list[list[int]]:
    """Indices of every update in one epoch (a trailing incomplete group is dropped).

    With ``bucket_window == 0`` the groups are consecutive slices of a random permutation (the paper's
    batch-1 order). With ``bucket_window = W`` each run of ``W * per_update`` shuffled utterances is
    sorted by length before slicing, and the groups are shuffled again: similar lengths share an update,
    which cuts padding.
    """
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, 1))
    order = torch.randperm(len(lengths), generator=g).tolist()
    if bucket_window > 0:
        span = bucket_window * per_update
        order = [i for s in range(0, len(order), span) for i in sorted(order[s:s + span], key=lambda j: lengths[j])]
    groups = [order[s:s + per_update] for s in range(0, len(order) - per_update + 1, per_update)]
    if bucket_window > 0:
        groups = [groups[i] for i in torch.randperm(len(groups), generator=g).tolist()]
    return groups


def split_micro_batches(lengths: list[int], max_samples: int) -> list[list[int]]:
    """Positions of ``lengths`` grouped longest-first so that ``count * longest <= max_samples``.

    A single item longer than ``max_samples`` still forms its own micro-batch (whole utterances).
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_samples:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class UpdateSampler:
    """Batch sampler yielding this process's indices for each update, from a resumable position."""

    def __init__(self, lengths: list[int], per_update: int, seed: int, rank: int = 0, world: int = 1,
                 bucket_window: int = 0):
        if per_update % world:
            raise DataError(f"data.utterances_per_update={per_update} is not divisible by {world} processes; "
                            "choose a multiple of the process count")
        self.lengths, self.per_update, self.seed = lengths, per_update, seed
        self.rank, self.world, self.bucket_window = rank, world, bucket_window
        self.epoch, self.start = 0, 0

    def updates_per_epoch(self) -> int:
        return len(self.lengths) // self.per_update

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.updates_per_epoch() - self.start

    def __iter__(self) -> Iterator[list[int]]:
        groups = update_groups(self.lengths, self.per_update, self.seed, self.epoch, self.bucket_window)
        for grp in groups[self.start:]:
            yield [(i, self.epoch) for i in grp[self.rank::self.world]]


@dataclass
class MicroBatch:
    """Padded waveforms of both views. ``student``/``target``: (B, T) float32; lengths: (B,) int64."""

    student: torch.Tensor
    student_lengths: torch.Tensor
    target: torch.Tensor
    target_lengths: torch.Tensor
    indices: list[int]


@dataclass
class UpdateBatch:
    """One process's share of one update."""

    micro: list[MicroBatch] = field(default_factory=list)
    num_pairs: int = 0
    audio_seconds: float = 0.0  # original (unperturbed) audio
    failed: list[str] = field(default_factory=list)  # files that could not be read
    originals: bool = False  # one micro-batch of unperturbed audio, to be perturbed on the device


def pad_batch(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D tensors -> ``(padded (B, T_max) on their device, lengths (B,) int64 on the CPU)``."""
    lengths = torch.tensor([w.numel() for w in wavs], dtype=torch.long)
    out = wavs[0].new_zeros(len(wavs), int(lengths.max()))
    for k, w in enumerate(wavs):
        out[k, : w.numel()] = w
    return out, lengths


class PairDataset(torch.utils.data.Dataset):
    """Item ``(index, epoch)`` -> ``{index, student, target, seconds}`` or ``{index, error}``.

    Args:
        utts: the manifest.
        perturb: a ``ScorePerturbation`` (``perturb(wav (T,), generator)`` -> a view with ``.wav`` and
            ``.student_gets_perturbed``); a callable returning a plain tensor gets a 50/50 pair order
            drawn here. ``None``: items hold only the original (the trainer perturbs on its device).
        seed: run seed; the item generator is seeded from ``(seed, epoch, index)``.
    """

    def __init__(self, utts: list[Utterance], perturb: Optional[Callable], seed: int, sample_rate: int = 16000):
        self.utts, self.perturb, self.seed, self.sample_rate = utts, perturb, seed, sample_rate

    def __len__(self) -> int:
        return len(self.utts)

    def item_generator(self, index: int, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(mix_seed(self.seed, epoch, index, 2))

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, epoch = key
        utt = self.utts[index]
        try:
            wav = read_mono(utt.path, self.sample_rate)
        except AudioError as e:
            return {"index": index, "error": str(e)}
        if self.perturb is None:
            return {"index": index, "original": wav, "seconds": wav.numel() / self.sample_rate}
        g = self.item_generator(index, epoch)
        view = self.perturb(wav, g)
        if isinstance(view, torch.Tensor):
            perturbed, to_student = view, bool(torch.randint(2, (), generator=g))
        else:
            perturbed, to_student = view.wav, view.student_gets_perturbed
        student, target = (perturbed, wav) if to_student else (wav, perturbed)
        return {"index": index, "student": student, "target": target, "seconds": wav.numel() / self.sample_rate}


class UpdateCollate:
    """collate_fn: the items of one update -> :class:`UpdateBatch` of length-sorted micro-batches."""

    def __init__(self, batch_seconds: float, sample_rate: int = 16000):
        self.max_samples = int(batch_seconds * sample_rate)

    def __call__(self, items: list[dict]) -> UpdateBatch:
        out = UpdateBatch()
        good = []
        for it in items:
            if "error" in it:
                out.failed.append(it["error"])
            else:
                good.append(it)
        if not good:
            return out
        out.num_pairs = len(good)
        out.audio_seconds = float(sum(it["seconds"] for it in good))
        if "original" in good[0]:  # perturbed later, batched on the training device
            w, wl = pad_batch([it["original"] for it in good])
            out.micro.append(MicroBatch(w, wl, w, wl, [it["index"] for it in good]))
            out.originals = True
            return out
        longest = [max(it["student"].numel(), it["target"].numel()) for it in good]
        for pos in split_micro_batches(longest, self.max_samples):
            s, sl = pad_batch([good[p]["student"] for p in pos])
            t, tl = pad_batch([good[p]["target"] for p in pos])
            out.micro.append(MicroBatch(s, sl, t, tl, [good[p]["index"] for p in pos]))
        return out
