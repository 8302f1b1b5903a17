"""SCORE's perturbed view: speed perturbation, then a +/-2 semitone pitch shift, and a random pair order.

Usage::

    from score_upstream.augment.perturb import ScorePerturbation
    perturb = ScorePerturbation(pitch_method="fast")
    view = perturb(wav, generator)          # wav (T,) at 16 kHz -> PerturbedView
    view.wav, view.speed_factor, view.semitones, view.student_gets_perturbed

The reference recipe draws a speed factor uniformly from {0.9, 1.0, 1.1} (resampling, so duration and
pitch both change: 1.1 is faster and shorter), then shifts the pitch by +2 or -2 semitones with
torchaudio's ``PitchShift`` (phase-vocoder time stretch by ``2^(-n/12)``, then a resample from
``int(sr / rate)`` to ``sr`` Hz), and swaps which model gets the perturbed view 50/50. That ratio is
irreducible at 16 kHz, which makes torchaudio's dense resampling kernel huge and slow; the
``"reference"`` method here computes the same numbers with only the kernel's non-zero taps.

``pitch_method="fast"`` keeps the same two steps but rounds the pitch ratio ``2^(n/12)`` to a fraction
with a small denominator (9/8 for +2 semitones, 3.9 cents sharp), so the resample is cheap. Its output
is measurably close to the reference: :func:`log_mel_distance` between the two is a small fraction of the
distance between the reference and the unshifted audio (see ``tests/test_perturb.py``).

Both paths use torchaudio's phase vocoder, which has no phase locking: it carries each bin's phase
from the first frame and, when stretching (rate < 1), applies some early frame-to-frame increments
twice. On a steady harmonic signal the phase relation between neighbouring bins is then fixed by the
onset, so the output level changes with it (a 150 Hz voice starting abruptly: -4.6 dB after +2
semitones through the reference, -0.5 dB through the fast path, which zero-pads the STFT edges where
the reference reflects; after 0.3 s of leading silence: 0 dB for both at +2, -2.0 / -0.8 dB at -2).
The pitch itself moves by the exact ratio in both (tested on such a voice).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from fractions import Fraction

import torch
import torchaudio.functional as AF
from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = [
    "PerturbError",
    "PerturbedView",
    "ScorePerturbation",
    "speed_perturb",
    "pitch_shift",
    "log_mel_distance",
]

PITCH_METHODS = ("reference", "fast")
N_FFT, HOP = 512, 128  # torchaudio.functional.pitch_shift defaults, used by the reference recipe
MAX_DENOMINATOR = 16


class PerturbError(ValueError):
    """Invalid perturbation setting or input."""


def _check_wav(wav: Tensor, name: str = "wav") -> None:
    if not isinstance(wav, Tensor) or not wav.dtype.is_floating_point or wav.dim() == 0:
        raise PerturbError(f"{name} must be a float tensor (..., T), got {type(wav).__name__} "
                           f"{getattr(wav, 'dtype', '')} {tuple(getattr(wav, 'shape', ()))}")


def speed_perturb(wav: Tensor, factor: float, sr: int = 16000) -> Tensor:
    """Play ``wav`` ``factor`` times faster by resampling (duration / factor, pitch * factor).

    Args:
        wav: (..., T) waveform.
        factor: speed factor > 0; 1.1 = faster and shorter, 0.9 = slower and longer.
        sr: sample rate in Hz; ``sr * factor`` is rounded to an integer frequency.

    Returns:
        (..., ceil(T / factor)) waveform (exactly ``wav`` for factor 1).
    """
    _check_wav(wav)
    if not factor > 0:
        raise PerturbError(f"speed factor must be > 0, got {factor}")
    if factor == 1.0:
        return wav.clone()
    # Treat the samples as if recorded at sr * factor and bring them to sr: T / factor samples.
    return AF.resample(wav, orig_freq=int(round(sr * factor)), new_freq=sr)


def _fix_length(wav: Tensor, length: int) -> Tensor:
    T = wav.shape[-1]
    if T >= length:
        return wav[..., :length]
    return torch.nn.functional.pad(wav, (0, length - T))


def _fast_pitch(wav: Tensor, semitones: float, lengths: Tensor | None = None) -> Tensor:
    """Fast pitch shift of (..., T); with (B,) ``lengths`` for a (B, T) zero-padded batch, each item
    is cut at its own stretched length before the resample, exactly as if processed alone."""
    ratio = Fraction(2.0 ** (semitones / 12.0)).limit_denominator(MAX_DENOMINATOR)
    up, down = ratio.numerator, ratio.denominator
    if up == down:
        return wav.clone()
    shape, T = wav.shape, wav.shape[-1]
    x = wav.reshape(-1, T)
    window = torch.hann_window(N_FFT, dtype=wav.dtype, device=wav.device)
    # Zero (not reflect) padding at the edges: an item inside a zero-padded batch then sees exactly what
    # it sees alone, which keeps the batched path equal to the per-item one.
    spec = torch.stft(x, N_FFT, HOP, window=window, center=True, pad_mode="constant", return_complex=True)
    if lengths is not None:  # drop frames an item alone would not have (they hold its tail)
        frames = 1 + torch.as_tensor(lengths, device=wav.device) // HOP
        spec = spec * (torch.arange(spec.shape[-1], device=wav.device)[None, :] < frames[:, None])[:, None, :]
    advance = torch.linspace(0, math.pi * HOP, spec.shape[-2], device=wav.device, dtype=wav.dtype)[..., None]
    stretched = AF.phase_vocoder(spec, down / up, advance)  # longer by up/down for an upward shift
    y = torch.istft(stretched, N_FFT, HOP, window=window, length=int(round(T * up / down)))
    if lengths is not None:
        # The overlap-add normalisation near an item's end depends on its own frame count, so the
        # inverse STFT runs per item on exactly the frames it would have alone.
        y = torch.zeros_like(y)
        for k, n in enumerate(lengths.tolist()):
            n_out = math.ceil((1 + n // HOP) * up / down)
            y[k, : int(round(n * up / down))] = torch.istft(
                stretched[k, :, :n_out], N_FFT, HOP, window=window, length=int(round(n * up / down)))
    y = AF.resample(y, orig_freq=up, new_freq=down)
    return _fix_length(y, T).reshape(shape)


def pitch_shift(wav: Tensor, semitones: float, sr: int = 16000, method: str = "reference") -> Tensor:
    """Shift the pitch by ``semitones`` keeping the duration.

    Args:
        wav: (..., T) waveform.
        semitones: shift in semitones (+2 = up a whole tone).
        sr: sample rate in Hz (only the reference method depends on it).
        method: ``"reference"`` = the numbers of ``torchaudio.transforms.PitchShift`` (n_fft 512, hop 128,
            Hann), the reference recipe's transform, with a sparse resampling kernel (see
            :class:`_ReferencePitch`); ``"fast"`` = same phase vocoder with the ratio rounded to a small
            fraction.

    Returns:
        (..., T) waveform.
    """
    _check_wav(wav)
    if method not in PITCH_METHODS:
        raise PerturbError(f"pitch method {method!r} is unknown; expected one of {PITCH_METHODS}")
    if semitones == 0:
        return wav.clone()
    if method == "reference":
        with torch.no_grad():  # perturbations never need gradients
            return _reference_shifter(sr, float(semitones), wav.dtype, wav.device)(wav)
    return _fast_pitch(wav, float(semitones))


class _ReferencePitch:
    """``torchaudio.transforms.PitchShift(sr, semitones, n_fft=512, hop_length=128)``, the reference
    recipe's transform, with its resample done by :class:`~score_upstream.augment.resample.SincResampler`.

    The phase-vocoder stretch is torchaudio's, step for step (reflect-padded STFT, ``phase_vocoder`` at
    rate ``2^(-n/12)``, inverse STFT to ``round(T / rate)`` samples). The resample from
    ``int(sr / rate)`` to ``sr`` Hz uses the same sinc kernel values; torchaudio holds them as a dense
    kernel of 16,000 x 17,973 floats for +2 semitones at 16 kHz (1.15 GB per process, ~0.2 s of CPU per
    audio-second), this one only the 15 non-zero taps per phase (1 MB). Outputs agree to float rounding.
    """

    def __init__(self, sr: int, semitones: float, dtype: torch.dtype, device: torch.device):
        from score_upstream.augment.resample import SincResampler

        self.rate = 2.0 ** (-float(semitones) / 12)
        self.window = torch.hann_window(N_FFT, dtype=dtype, device=device)
        orig = int(sr / self.rate)
        self.resampler = SincResampler(orig, sr, dtype=dtype, device=device) if orig != sr else None

    def __call__(self, wav: Tensor) -> Tensor:
        shape = wav.shape
        x = wav.reshape(-1, shape[-1])
        spec = torch.stft(x, N_FFT, HOP, window=self.window, center=True, pad_mode="reflect", return_complex=True)
        advance = torch.linspace(0, math.pi * HOP, spec.shape[-2], device=spec.device)[..., None]
        stretched = AF.phase_vocoder(spec, self.rate, advance)
        y = torch.istft(stretched, N_FFT, HOP, window=self.window, length=int(round(shape[-1] / self.rate)))
        if self.resampler is not None:
            y = self.resampler(y)
        return _fix_length(y, shape[-1]).reshape(shape)


_REFERENCE_SHIFTERS: dict[tuple, _ReferencePitch] = {}


def _reference_shifter(sr: int, semitones: float, dtype: torch.dtype, device: torch.device) -> _ReferencePitch:
    """One :class:`_ReferencePitch` per (rate, shift, dtype, device), kept for the process."""
    key = (int(sr), semitones, dtype, str(device))
    shifter = _REFERENCE_SHIFTERS.get(key)
    if shifter is None:
        shifter = _REFERENCE_SHIFTERS[key] = _ReferencePitch(int(sr), semitones, dtype, device)
    return shifter


def log_mel_distance(a: Tensor, b: Tensor, sr: int = 16000, n_mels: int = 40, range_db: float = 30.0) -> float:
    """Mean absolute log-mel difference in dB between two (T,) signals (25 ms / 10 ms frames).

    Both spectra get the same floor, ``range_db`` below the louder one's peak, so near-silent bins (whose
    log is noise) do not dominate. 0 = identical; a +/-2 semitone shift of speech-like audio is ~1-2 dB.
    """
    T = min(a.shape[-1], b.shape[-1])
    window = torch.hann_window(400, dtype=a.dtype)
    fb = AF.melscale_fbanks(201, 0.0, sr / 2, n_mels, sr).to(a.dtype)

    def mel(w):
        return torch.stft(w[..., :T], 400, 160, window=window, return_complex=True).abs().pow(2).transpose(-1, -2) @ fb

    A, B = mel(a), mel(b)
    floor = torch.maximum(A.max(), B.max()) * 10 ** (-range_db / 10)
    return float((10 * (torch.log10(A + floor) - torch.log10(B + floor))).abs().mean())


@dataclass
class PerturbedView:
    """One perturbed view and the draw that made it.

    Attributes:
        wav: (T',) perturbed waveform (T' = ceil(T / speed_factor)).
        speed_factor: drawn speed factor.
        semitones: drawn pitch shift.
        student_gets_perturbed: True = the student model sees ``wav`` and the target the original.
    """

    wav: Tensor
    speed_factor: float
    semitones: float
    student_gets_perturbed: bool


@dataclass
class ScorePerturbation:
    """SCORE's perturbation settings; calling it draws and applies one perturbation.

    Args:
        speed_factors: speed factors drawn uniformly (paper: 0.9, 1.0, 1.1; WavLM variant adds 0.85, 1.15).
        semitones: pitch shifts drawn uniformly (paper: -2, +2).
        pitch_method: ``"reference"`` (torchaudio's pitch_shift, as the paper) or ``"fast"``.
        sr: sample rate in Hz.
    """

    speed_factors: tuple[float, ...] = (0.9, 1.0, 1.1)
    semitones: tuple[float, ...] = (-2.0, 2.0)
    pitch_method: str = "reference"
    sr: int = 16000

    def __post_init__(self):
        self.speed_factors = tuple(float(f) for f in self.speed_factors)
        self.semitones = tuple(float(s) for s in self.semitones)
        if not self.speed_factors or min(self.speed_factors) <= 0:
            raise PerturbError(f"speed_factors must be a non-empty list of positive numbers, got {self.speed_factors}")
        if not self.semitones:
            raise PerturbError("semitones must be a non-empty list (use [0.0] to switch pitch shifting off)")
        if self.pitch_method not in PITCH_METHODS:
            raise PerturbError(f"pitch_method {self.pitch_method!r} is unknown; expected one of {PITCH_METHODS}")

    def draw(self, generator: torch.Generator) -> dict:
        """Draw one perturbation: speed factor, semitones and pair order."""
        def pick(seq):
            return seq[int(torch.randint(len(seq), (1,), generator=generator))]

        return {
            "speed_factor": pick(self.speed_factors),
            "semitones": pick(self.semitones),
            "student_gets_perturbed": bool(torch.randint(2, (1,), generator=generator)),
        }

    def apply(self, wav: Tensor, draw: dict) -> Tensor:
        """Apply a draw to a (..., T) waveform: speed, then pitch."""
        out = speed_perturb(wav, draw["speed_factor"], self.sr)
        return pitch_shift(out, draw["semitones"], self.sr, self.pitch_method)

    def __call__(self, wav: Tensor, generator: torch.Generator) -> PerturbedView:
        """Perturb one (T,) waveform; the result depends only on ``wav`` and the generator state."""
        _check_wav(wav)
        if wav.dim() != 1:
            raise PerturbError(f"wav must be a 1-D waveform (T,), got shape {tuple(wav.shape)}")
        d = self.draw(generator)
        return PerturbedView(self.apply(wav, d), d["speed_factor"], d["semitones"], d["student_gets_perturbed"])

    def batch(self, wavs: Tensor, lengths: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, list[dict]]:
        """Perturb a zero-padded batch, each item with its own draw, on the batch's device.

        Items that share a draw are processed together. Speed perturbation equals the per-item result
        exactly; the fast pitch path equals it up to float rounding; the reference pitch path runs item
        by item (its edge padding depends on each item's length).

        Args:
            wavs: (B, T) waveforms, padding after ``lengths[b]``.
            lengths: (B,) valid lengths.
            generator: CPU generator; draws are made in item order, so item ``b`` gets the same draw as
                the ``b``-th of ``B`` consecutive calls of :meth:`draw`.

        Returns:
            ``(out (B, T'), new_lengths (B,), draws)``, ``out`` zero-padded.
        """
        _check_wav(wavs, "wavs")
        if wavs.dim() != 2 or lengths.shape != (wavs.shape[0],):
            raise PerturbError(f"wavs must be (B, T) with lengths (B,), got {tuple(wavs.shape)} and {tuple(lengths.shape)}")
        B, T = wavs.shape
        lengths = lengths.to("cpu").long()
        draws = [self.draw(generator) for _ in range(B)]
        mask = torch.arange(T, device=wavs.device)[None, :] < lengths.to(wavs.device)[:, None]
        wavs = torch.where(mask, wavs, torch.zeros((), dtype=wavs.dtype, device=wavs.device))
        new_lengths = torch.tensor([math.ceil(int(n) * self.sr / int(round(self.sr * d["speed_factor"])))
                                    if d["speed_factor"] != 1.0 else int(n) for n, d in zip(lengths, draws)])
        outs: list[Tensor | None] = [None] * B
        groups: dict[tuple[float, float], list[int]] = {}
        for b, d in enumerate(draws):
            groups.setdefault((d["speed_factor"], d["semitones"]), []).append(b)
        for (factor, semis), idx in groups.items():
            Tg = int(lengths[idx].max())
            sped = speed_perturb(wavs[idx, :Tg], factor, self.sr)
            for k, b in enumerate(idx):
                n = int(new_lengths[b])
                item = sped[k : k + 1, :n]
                if self.pitch_method == "reference":
                    outs[b] = pitch_shift(item, semis, self.sr, "reference")[0]
            if self.pitch_method == "fast":
                # Trim each item to its own new length before the shared STFT so tails stay zero.
                nl = new_lengths[idx].to(wavs.device)
                sped = torch.where(torch.arange(sped.shape[-1], device=wavs.device)[None] < nl[:, None], sped, 0.0)
                shifted = sped.clone() if semis == 0 else _fast_pitch(sped, semis, new_lengths[idx])
                for k, b in enumerate(idx):
                    outs[b] = shifted[k, : int(new_lengths[b])]
        out = torch.zeros(B, int(new_lengths.max()), dtype=wavs.dtype, device=wavs.device)
        for b in range(B):
            out[b, : outs[b].shape[-1]] = outs[b]
        return out, new_lengths, draws
