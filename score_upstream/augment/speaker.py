"""SPIN's speaker perturbation: Praat's "Change gender" (formant and F0 shift) then a random 10-band EQ.

Usage::

    from score_upstream.augment.speaker import SpeakerPerturbation
    perturb = SpeakerPerturbation()
    view = perturb(wav, generator)        # wav (T,) at 16 kHz -> SpeakerView, view.wav (T,)
    view.draw                             # the drawn ratios and EQ, plain floats

As SPIN's data pipeline does (vectominist/spin ``src/data/dataset.py``, after ContentVec): a formant
shift ratio from U(1, 1.4), a median-F0 ratio from U(1, 2) and a pitch-range ratio from U(1, 1.5) are
drawn, each kept or inverted 50/50, and applied with Praat's ``Change gender`` (duration factor 1; the
new median F0 is the measured median times the ratio, F0 measured by Praat's autocorrelation pitch with
time step 0.8 / floor). Then a random equaliser: a low shelf, eight peaking filters and a high shelf at
centre frequencies log-spaced from 60 to 7,600 Hz, gains from U(-12, 12) dB, Q = 2 (5/2)^z with z from
U(0, 1) (RBJ audio-EQ-cookbook biquads). The result is clipped to [-1, 1]. When Praat fails (no voiced
frame, an error), the formant/F0 step is left out and the EQ still applied, as SPIN does.

SPIN reads the F0 search range per LibriSpeech speaker; here it is one range for all (``pitch_floor``,
``pitch_ceiling``, Praat's defaults 75-600 Hz). All draws come from an explicit ``torch.Generator``.
Praat's PSOLA draws random numbers of its own (the output of two identical calls differs by up to
~0.4 in amplitude), so each call first seeds Praat's generator with a seed drawn from the generator too:
the view is a function of the input and the generator state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from score_upstream.augment.perturb import PerturbError

__all__ = ["SpeakerPerturbation", "SpeakerView", "change_gender", "eq_sos", "median_f0"]

EQ_BANDS = 10
EQ_LOW_HZ, EQ_HIGH_HZ = 60.0, 7600.0
EQ_Q_MIN, EQ_Q_MAX = 2.0, 5.0


def _biquad(kind: str, gain_db: float, fc: float, q: float, sr: float) -> list[float]:
    """One second-order section ``[b0, b1, b2, 1, a1, a2]`` (RBJ cookbook, normalised by a0)."""
    A = 10.0 ** (gain_db / 40.0)
    w0 = 2.0 * math.pi * max(fc, 2.0) / sr
    cw, alpha = math.cos(w0), math.sin(w0) / (2.0 * q)
    if kind == "peak":
        b = [1 + alpha * A, -2 * cw, 1 - alpha * A]
        a = [1 + alpha / A, -2 * cw, 1 - alpha / A]
    else:
        k = 2.0 * math.sqrt(A) * alpha
        s = 1.0 if kind == "low" else -1.0  # the high shelf mirrors the low shelf's cosine terms
        b = [A * ((A + 1) - s * (A - 1) * cw + k), s * 2 * A * ((A - 1) - s * (A + 1) * cw),
             A * ((A + 1) - s * (A - 1) * cw - k)]
        a = [(A + 1) + s * (A - 1) * cw + k, -s * 2 * ((A - 1) + s * (A + 1) * cw), (A + 1) + s * (A - 1) * cw - k]
    return [b[0] / a[0], b[1] / a[0], b[2] / a[0], 1.0, a[1] / a[0], a[2] / a[0]]


def eq_sos(gains_db: list[float], qs: list[float], sr: int = 16000) -> np.ndarray:
    """(10, 6) second-order sections of SPIN's equaliser for the given band gains (dB) and Q factors."""
    if len(gains_db) != EQ_BANDS or len(qs) != EQ_BANDS:
        raise PerturbError(f"the equaliser has {EQ_BANDS} bands; got {len(gains_db)} gains and {len(qs)} Q factors")
    fcs = np.exp(np.linspace(math.log(EQ_LOW_HZ), math.log(EQ_HIGH_HZ), EQ_BANDS))
    kinds = ["low"] + ["peak"] * (EQ_BANDS - 2) + ["high"]
    return np.array([_biquad(k, g, f, q, sr) for k, g, f, q in zip(kinds, gains_db, fcs, qs)])


def median_f0(wav: np.ndarray, sr: int, floor: float = 75.0, ceiling: float = 600.0) -> float:
    """Median F0 (Hz) of the voiced frames by Praat's autocorrelation pitch (time step 0.8 / floor).

    Raises:
        PerturbError: no voiced frame.
    """
    import parselmouth

    pitch = parselmouth.Sound(np.asarray(wav, dtype=np.float64), sampling_frequency=sr).to_pitch_ac(
        time_step=0.8 / floor, pitch_floor=floor, pitch_ceiling=ceiling)
    f0 = pitch.selected_array["frequency"]
    if not (f0 > 0).any():
        raise PerturbError("no voiced frame to measure F0 on")
    return float(np.median(f0[f0 > 0]))


def change_gender(wav: np.ndarray, sr: int, formant_ratio: float, f0_ratio: float, range_ratio: float,
                  floor: float = 75.0, ceiling: float = 600.0, seed: int | None = None) -> np.ndarray:
    """Praat's ``Change gender``: formants x ``formant_ratio``, median F0 x ``f0_ratio``, pitch range x
    ``range_ratio``, duration kept; returns exactly ``len(wav)`` samples (float64).

    ``seed`` seeds Praat's process-wide random generator first (None: Praat's own state, not reproducible).

    Raises:
        PerturbError: no voiced frame, or Praat refused the input.
    """
    import parselmouth

    x = np.asarray(wav, dtype=np.float64)
    sound = parselmouth.Sound(x, sampling_frequency=sr)
    pitch = sound.to_pitch_ac(time_step=0.8 / floor, pitch_floor=floor, pitch_ceiling=ceiling)
    f0 = pitch.selected_array["frequency"]
    if not (f0 > 0).any():
        raise PerturbError("no voiced frame to measure F0 on")
    target = float(np.median(f0[f0 > 0])) * f0_ratio
    if seed is not None:
        parselmouth.praat.run(f"random_initializeWithSeedUnsafelyButPredictably ({int(seed)})")
    try:
        out = parselmouth.praat.call([sound, pitch], "Change gender", formant_ratio, target, range_ratio, 1.0)
    except parselmouth.PraatError as e:
        raise PerturbError(f"Praat's Change gender failed: {str(e).strip().splitlines()[0]}") from None
    y = out.values[0]
    if out.sampling_frequency != sr:  # never seen, but the rest of the pipeline assumes sr
        raise PerturbError(f"Praat returned {out.sampling_frequency} Hz, expected {sr} Hz")
    return y[: len(x)] if len(y) >= len(x) else np.pad(y, (0, len(x) - len(y)))


@dataclass
class SpeakerView:
    """A speaker-perturbed view: ``wav`` (T,) float32, the ``draw`` that made it; the student (the first
    view) always gets the original, as SPIN's view order."""

    wav: Tensor
    draw: dict
    student_gets_perturbed: bool = False


@dataclass
class SpeakerPerturbation:
    """SPIN's speaker perturbation settings; calling it draws and applies one perturbation.

    Args:
        formant_ratio_max, f0_ratio_max, range_ratio_max: each ratio r ~ U(1, max), then r or 1/r 50/50.
        pitch_floor, pitch_ceiling: F0 search range in Hz.
        eq_gain_db: band gains ~ U(-g, g) dB (0 switches the equaliser off).
        sr: sample rate in Hz.
    """

    formant_ratio_max: float = 1.4
    f0_ratio_max: float = 2.0
    range_ratio_max: float = 1.5
    pitch_floor: float = 75.0
    pitch_ceiling: float = 600.0
    eq_gain_db: float = 12.0
    sr: int = 16000

    def draw(self, generator: torch.Generator) -> dict:
        """Ratios (each kept or inverted 50/50) and the equaliser's gains and Q factors, as plain floats."""
        def uniform(n: int = 1) -> list[float]:
            return torch.rand(n, generator=generator, dtype=torch.float64).tolist()

        def ratio(high: float) -> float:
            r = 1.0 + (high - 1.0) * uniform()[0]
            return r if uniform()[0] < 0.5 else 1.0 / r

        d = {"formant_ratio": ratio(self.formant_ratio_max), "f0_ratio": ratio(self.f0_ratio_max),
             "range_ratio": ratio(self.range_ratio_max)}
        d["eq_gains_db"] = [(2.0 * u - 1.0) * self.eq_gain_db for u in uniform(EQ_BANDS)]
        d["eq_qs"] = [EQ_Q_MIN * (EQ_Q_MAX / EQ_Q_MIN) ** u for u in uniform(EQ_BANDS)]
        d["praat_seed"] = int(torch.randint(2 ** 31 - 1, (1,), generator=generator))
        return d

    def apply(self, wav: Tensor, draw: dict) -> tuple[Tensor, bool]:
        """Apply a draw to a (T,) waveform: ``(view (T,) float32, whether the formant/F0 step ran)``."""
        from scipy.signal import sosfilt

        x = wav.detach().cpu().double().numpy()
        try:
            y = change_gender(x, self.sr, draw["formant_ratio"], draw["f0_ratio"], draw["range_ratio"],
                              self.pitch_floor, self.pitch_ceiling, draw["praat_seed"])
            changed = True
        except PerturbError:
            y, changed = x.copy(), False
        if self.eq_gain_db > 0:
            y = sosfilt(eq_sos(draw["eq_gains_db"], draw["eq_qs"], self.sr), y)
        return torch.from_numpy(np.clip(y, -1.0, 1.0).astype(np.float32)), changed

    def __call__(self, wav: Tensor, generator: torch.Generator) -> SpeakerView:
        """Perturb one (T,) waveform; the result depends only on ``wav`` and the generator state."""
        if not isinstance(wav, Tensor) or wav.dim() != 1 or not wav.dtype.is_floating_point:
            raise PerturbError(f"wav must be a 1-D float waveform (T,), got {type(wav).__name__} "
                               f"{tuple(getattr(wav, 'shape', ()))}")
        d = self.draw(generator)
        out, d["formant_f0_applied"] = self.apply(wav, d)
        return SpeakerView(out, d)
