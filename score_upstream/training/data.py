"""LibriSpeech scan, manifest, update-sized length-bucketed batches and the (view, view) pair dataset.

Data order is a pure function of ``(seed, epoch)``: each epoch is a random order of the manifest
(:func:`epoch_order`), and the epochs, one after the other, form one stream that is cut into updates of
``utterances_per_update`` utterances (all processes together). As in s3prl's runner, which counts
backward steps across epoch boundaries, an epoch's last incomplete group is completed from the next
epoch: no utterance is dropped. Each process takes its share of an update, and
:func:`cut_micro_batches` cuts that share into micro-batches of at most ``batch_seconds`` of padded
audio. The perturbed view of utterance ``i`` in epoch ``e`` is drawn from a generator seeded by
``(seed, e, i)``, so results do not depend on the number of data-loader workers or processes.
Resuming needs only the number of updates drawn so far.

SPIN's batching (``data.pack_seconds``, :mod:`score_upstream.training.packing`) replaces the fixed count
of whole utterances: length-sorted utterances packed up to a total of audio seconds per update, short
ones left out, long ones cropped at random (:class:`PairDataset` ``crop_samples``).

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
    paths: list[Path], sample_rate: int = 16000, max_seconds: Optional[float] = None, min_samples: int = 1
) -> tuple[list[Utterance], dict[str, int]]:
    """Read each file's header; skip (and count) unreadable, empty, wrong-rate, too short or over-long files.

    Args:
        min_samples: shorter files are skipped as ``too_short`` (see :func:`min_utterance_samples`).

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
            skip("unreadable", p, str(e).removeprefix(f"{p}: "))
            continue
        if n <= 0:
            skip("empty", p, "no samples")
        elif sr != sample_rate:
            skip("sample_rate", p, f"{sr} Hz, expected {sample_rate} Hz; resample the file")
        elif n < min_samples:
            skip("too_short", p, f"{n} samples, fewer than the {min_samples} that give one frame in every view")
        elif max_seconds is not None and n > max_seconds * sample_rate:
            skipped["too_long"] = skipped.get("too_long", 0) + 1
        else:
            utts.append(Utterance(str(p), int(n)))
    if skipped:
        logger.warning("manifest: %d usable files, skipped %s", len(utts), dict(sorted(skipped.items())))
    return utts, skipped


def load_manifest(root: str | os.PathLike, subsets: list[str], sample_rate: int = 16000,
                  max_seconds: Optional[float] = None, min_samples: int = 1) -> tuple[list[Utterance], dict[str, int]]:
    """:func:`scan_librispeech` + :func:`build_manifest`; raises DataError when nothing is usable."""
    utts, skipped = build_manifest(scan_librispeech(root, subsets), sample_rate, max_seconds, min_samples)
    if not utts:
        raise DataError(f"{find_librispeech(root)}: no usable utterance in {subsets} (skipped: {skipped})")
    return utts, skipped


def min_utterance_samples(frame_samples: int, speeds: list[float], sample_rate: int = 16000) -> int:
    """Fewest samples an utterance needs so that every speed-perturbed view gives ``frame_samples`` samples.

    ``frame_samples`` is the input length that gives the CNN one frame (400 for HuBERT Base); the pitch
    shift's reflect-padded STFT also needs more than ``n_fft / 2`` samples. A view at speed ``f`` holds
    ``ceil(T * sr / round(sr * f))`` samples (see ``augment.perturb.speed_perturb``).
    """
    from score_upstream.augment.perturb import N_FFT

    need = max(int(frame_samples), N_FFT // 2 + 1)
    return max((need - 1) * (round(sample_rate * f) if f != 1.0 else sample_rate) // sample_rate + 1
               for f in speeds)


def mix_seed(*values: int) -> int:
    """A stable 63-bit seed from integers (splitmix64 steps; Python's hash() is salted per process)."""
    x = 0x9E3779B97F4A7C15
    for v in values:
        x = (x ^ (v & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return x & 0x7FFFFFFFFFFFFFFF


def epoch_order(lengths: list[int], per_update: int, seed: int, epoch: int, bucket_window: int = 0) -> list[int]:
    """Utterance indices of one epoch in the order they are used (every utterance once).

    With ``bucket_window == 0`` the order is a random permutation (the paper's batch-1 order). With
    ``bucket_window = W``, after the first items (those that complete the previous epoch's last update),
    each run of ``W * per_update`` shuffled utterances is sorted by length and cut into updates, and the
    complete updates are shuffled again: similar lengths share an update, which cuts padding.
    """
    g = torch.Generator().manual_seed(mix_seed(seed, epoch, 1))
    order = torch.randperm(len(lengths), generator=g).tolist()
    if bucket_window <= 0:
        return order
    head = (-epoch * len(lengths)) % per_update  # items that complete the previous epoch's last update
    span = bucket_window * per_update
    rest = order[head:]
    rest = [i for s in range(0, len(rest), span) for i in sorted(rest[s:s + span], key=lambda j: lengths[j])]
    full = len(rest) - len(rest) % per_update
    groups = [rest[s:s + per_update] for s in range(0, full, per_update)]
    groups = [groups[i] for i in torch.randperm(len(groups), generator=g).tolist()]
    return order[:head] + [i for grp in groups for i in grp] + rest[full:]


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
    """Batch sampler: this process's ``(index, epoch)`` items of each update, from a resumable position.

    Update ``u`` holds items ``u * per_update ... (u + 1) * per_update - 1`` of the stream formed by the
    epochs' orders one after the other (:func:`epoch_order`), so an update may span two epochs.
    """

    def __init__(self, lengths: list[int], per_update: int, seed: int, rank: int = 0, world: int = 1,
                 bucket_window: int = 0):
        if per_update % world:
            raise DataError(f"data.utterances_per_update={per_update} is not divisible by {world} processes; "
                            "choose a multiple of the process count")
        self.lengths, self.per_update, self.seed = lengths, per_update, seed
        self.rank, self.world, self.bucket_window = rank, world, bucket_window
        self.start, self.stop = 0, None
        self._orders: dict[int, list[int]] = {}

    def updates_per_epoch(self) -> float:
        """Updates per pass over the manifest (fractional: updates carry across epoch boundaries)."""
        return len(self.lengths) / self.per_update

    def epoch_of(self, update: int) -> int:
        """The epoch in which update ``update`` (0-based) starts."""
        return update * self.per_update // len(self.lengths)

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = epoch_order(self.lengths, self.per_update, self.seed, epoch, self.bucket_window)
        return self._orders[epoch]

    def group(self, update: int) -> list[tuple[int, int]]:
        """All ``(index, epoch)`` items of update ``update``, every process's share together."""
        n, out = len(self.lengths), []
        pos = update * self.per_update
        while len(out) < self.per_update:
            epoch, k = divmod(pos, n)
            take = min(self.per_update - len(out), n - k)
            out.extend((i, epoch) for i in self._order(epoch)[k:k + take])
            pos += take
        return out

    def set_position(self, start: int, stop: int | None = None) -> None:
        """Iterate over updates ``start .. stop - 1`` (0-based; ``stop=None``: without end)."""
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("UpdateSampler without a stop position has no length; call set_position(start, stop)")
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        u = self.start
        while self.stop is None or u < self.stop:
            yield self.group(u)[self.rank::self.world]
            u += 1


def pad_batch(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D tensors -> ``(padded (B, T_max) on their device, lengths (B,) int64 on the CPU)``."""
    lengths = torch.tensor([w.numel() for w in wavs], dtype=torch.long)
    out = wavs[0].new_zeros(len(wavs), int(lengths.max()))
    for k, w in enumerate(wavs):
        out[k, : w.numel()] = w
    return out, lengths


@dataclass
class MicroBatch:
    """Padded (view, view) pairs. ``student``/``target``: (B, T) float32; lengths: (B,) int64."""

    student: torch.Tensor
    student_lengths: torch.Tensor
    target: torch.Tensor
    target_lengths: torch.Tensor
    indices: list[int]

    def pin_memory(self) -> "MicroBatch":
        """Page-locked copies, so that ``.to(cuda, non_blocking=True)`` is asynchronous (DataLoader calls it)."""
        return MicroBatch(self.student.pin_memory(), self.student_lengths, self.target.pin_memory(),
                          self.target_lengths, self.indices)

    def select(self, k: int) -> "MicroBatch":
        """Pair ``k`` alone, trimmed to its own lengths."""
        return self.subset([k])

    def subset(self, ks: list[int]) -> "MicroBatch":
        """Pairs ``ks`` as one micro-batch, the padding trimmed to the longest of them."""
        idx = torch.tensor(ks, dtype=torch.long)
        sl, tl = self.student_lengths[idx], self.target_lengths[idx]
        return MicroBatch(self.student[idx, :int(sl.max())], sl, self.target[idx, :int(tl.max())], tl,
                          [self.indices[k] for k in ks])


@dataclass
class Originals:
    """Unperturbed, zero-padded utterances, perturbed later on the training device.

    ``wav``: (B, T) float32; ``lengths``: (B,) int64; ``indices``: manifest indices.
    """

    wav: torch.Tensor
    lengths: torch.Tensor
    indices: list[int]

    def pin_memory(self) -> "Originals":
        return Originals(self.wav.pin_memory(), self.lengths, self.indices)


@dataclass
class UpdateBatch:
    """One process's share of one update: (view, view) micro-batches, or the originals to perturb."""

    micro: list[MicroBatch] = field(default_factory=list)
    originals: Optional[Originals] = None  # set instead of ``micro`` when perturbing on the device
    num_pairs: int = 0
    audio_seconds: float = 0.0  # original (unperturbed) audio
    failed: list[tuple[int, str]] = field(default_factory=list)  # (manifest index, "path: why") of unusable items

    def pin_memory(self) -> "UpdateBatch":
        return UpdateBatch([mb.pin_memory() for mb in self.micro],
                           None if self.originals is None else self.originals.pin_memory(),
                           self.num_pairs, self.audio_seconds, self.failed)


def cut_micro_batches(students: list[torch.Tensor], targets: list[torch.Tensor], indices: list[int],
                      max_samples: int) -> list[MicroBatch]:
    """(view, view) pairs -> padded micro-batches of at most ``max_samples`` padded samples per side
    (:func:`split_micro_batches` on each pair's longer view)."""
    longest = [max(s.numel(), t.numel()) for s, t in zip(students, targets)]
    out = []
    for pos in split_micro_batches(longest, max_samples):
        s, sl = pad_batch([students[p] for p in pos])
        t, tl = pad_batch([targets[p] for p in pos])
        out.append(MicroBatch(s, sl, t, tl, [indices[p] for p in pos]))
    return out


class PairDataset(torch.utils.data.Dataset):
    """Item ``(index, epoch)`` -> ``{index, student, target, seconds}`` or ``{index, error}``.

    ``crop_samples``: a longer utterance is cropped to this length at random before its views are made
    (:meth:`crop`; SPIN's ``random_crop_len``); ``seconds`` counts the cropped audio.

    Args:
        utts: the manifest.
        perturb: a ``ScorePerturbation`` (``perturb(wav (T,), generator)`` -> a view with ``.wav`` and
            ``.student_gets_perturbed``); a callable returning a plain tensor gets a 50/50 pair order
            drawn here. ``None``: items hold only the original (the trainer perturbs on its device).
        seed: run seed; the item generator is seeded from ``(seed, epoch, index)``.

    A file that cannot be read (corrupt, NaN samples, ...) or perturbed gives ``{index, error}``, never an
    exception: the trainer reports it once and trains on.
    """

    def __init__(self, utts: list[Utterance], perturb: Optional[Callable], seed: int, sample_rate: int = 16000,
                 crop_samples: Optional[int] = None):
        self.utts, self.perturb, self.seed, self.sample_rate = utts, perturb, seed, sample_rate
        self.crop_samples = crop_samples

    def __len__(self) -> int:
        return len(self.utts)

    def item_generator(self, index: int, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(mix_seed(self.seed, epoch, index, 2))

    def crop(self, wav: torch.Tensor, index: int, epoch: int) -> torch.Tensor:
        """``crop_samples`` samples from a start drawn uniformly from ``[0, T - crop_samples)`` (SPIN's
        ``np.random.randint(0, len(wav) - crop)``), by a generator of its own: the perturbation's draws stay
        those of an uncropped run."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, epoch, index, 3))
        start = int(torch.randint(0, wav.numel() - self.crop_samples, (1,), generator=g))
        return wav[start:start + self.crop_samples]

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, epoch = key
        utt = self.utts[index]
        try:
            wav = read_mono(utt.path, self.sample_rate)
        except AudioError as e:
            return {"index": index, "error": f"{utt.path}: cannot be loaded: {str(e).removeprefix(utt.path + ': ')}"}
        if self.crop_samples and wav.numel() > self.crop_samples:
            wav = self.crop(wav, index, epoch)
        if self.perturb is None:
            return {"index": index, "original": wav, "seconds": wav.numel() / self.sample_rate}
        g = self.item_generator(index, epoch)
        try:
            view = self.perturb(wav, g)
        except Exception as e:  # any failure of one file's perturbation skips that file, never the run
            return {"index": index, "error": f"{utt.path}: cannot be perturbed ({type(e).__name__}: {e})"}
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
        out = UpdateBatch(failed=[(it["index"], it["error"]) for it in items if "error" in it])
        good = [it for it in items if "error" not in it]
        if not good:
            return out
        out.num_pairs = len(good)
        out.audio_seconds = float(sum(it["seconds"] for it in good))
        indices = [it["index"] for it in good]
        if "original" in good[0]:  # perturbed later, batched on the training device
            out.originals = Originals(*pad_batch([it["original"] for it in good]), indices)
        else:
            out.micro = cut_micro_batches([it["student"] for it in good], [it["target"] for it in good], indices,
                                          self.max_samples)
        return out
