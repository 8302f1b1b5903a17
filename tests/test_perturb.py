"""Speed/pitch perturbations: lengths, determinism, fast-vs-reference closeness, batching, pickling."""

from __future__ import annotations

import math
import pickle
from fractions import Fraction

import pytest
import torch

from score_upstream.augment.perturb import (
    MAX_DENOMINATOR,
    PerturbError,
    ScorePerturbation,
    log_mel_distance,
    pitch_shift,
    speed_perturb,
)

pytestmark = pytest.mark.compat_env  # also run in the oldest supported environment (README)

SR = 16000


def tones(seconds=0.5, freqs=(300.0, 440.0, 1000.0)):
    t = torch.arange(int(seconds * SR)) / SR
    return sum(0.2 * torch.sin(2 * math.pi * f * t) for f in freqs)


def peak_hz(x):
    spec = torch.fft.rfft(x * torch.hann_window(x.shape[-1])).abs()
    return int(spec.argmax()) * SR / x.shape[-1]


def band_peak_hz(x, around):
    """Frequency of the strongest spectral bin within +/-5 % of ``around`` Hz."""
    spec = torch.fft.rfft(x * torch.hann_window(x.shape[-1])).abs()
    hz = torch.arange(spec.shape[-1]) * SR / x.shape[-1]
    spec[(hz < 0.95 * around) | (hz > 1.05 * around)] = 0
    return float(hz[spec.argmax()])


@pytest.fixture(scope="module")
def reference_shifts():
    """The reference (torchaudio) pitch shift is slow to set up: compute it once per module."""
    w = tones()
    return w, {s: pitch_shift(w, s, method="reference") for s in (2.0, -2.0)}


@pytest.mark.parametrize("factor", [0.9, 1.0, 1.1])
def test_speed_factor_changes_length_by_inverse_factor_and_pitch_by_factor(factor):
    w = tones(freqs=(440.0,))
    out = speed_perturb(w, factor)
    assert out.shape[-1] == math.ceil(w.shape[-1] / factor)
    assert abs(peak_hz(out) - 440.0 * factor) <= 2 * SR / out.shape[-1]


def test_pitch_shift_keeps_length_and_moves_a_tone(reference_shifts):
    w, ref = reference_shifts
    pure = tones(freqs=(440.0,))
    for s in (2.0, -2.0):
        assert ref[s].shape == w.shape
        fast = pitch_shift(pure, s, method="fast")
        assert fast.shape == pure.shape
        assert abs(peak_hz(fast) - 440.0 * 2 ** (s / 12)) < 0.01 * 440.0


def test_fast_pitch_is_close_to_reference(reference_shifts):
    w, ref = reference_shifts
    for s in (2.0, -2.0):
        fast = pitch_shift(w, s, method="fast")
        d_fast = log_mel_distance(fast, ref[s])
        # Closeness is measured against the size of the effect itself and against the wrong direction.
        assert d_fast < 0.5 * log_mel_distance(ref[s], w), (s, d_fast)
        assert d_fast < 0.5 * log_mel_distance(pitch_shift(w, -s, method="fast"), ref[s])
        for f in (300.0, 440.0, 1000.0):  # each tone lands at the same place in both, within 1 %
            target = f * 2 ** (s / 12)
            assert abs(band_peak_hz(fast, target) - band_peak_hz(ref[s], target)) <= 0.01 * target + 2 * SR / w.shape[-1]


def harmonic_f0(x, lo=100.0, hi=250.0):
    """f0 of a harmonic signal: the candidate (0.05 Hz grid) whose first 8 harmonics hold the most energy."""
    n = 1 << 18
    spec = torch.fft.rfft(x * torch.hann_window(x.shape[-1]), n=n).abs()
    cands = torch.arange(lo, hi, 0.05)
    idx = torch.round(cands[:, None] * torch.arange(1, 9)[None, :] * n / SR).long()
    return float(cands[spec[idx].sum(1).argmax()])


@pytest.mark.parametrize("method", ["reference", "fast"])
def test_a_harmonic_voice_moves_by_the_shift_ratio(method):
    # A 150 Hz voice with 23 harmonics and an abrupt onset: phase-vocoder phasiness changes its level
    # (see score_upstream.augment.perturb), never its pitch.
    t = torch.arange(int(1.5 * SR)) / SR
    k = torch.arange(1, 24)
    voice = (torch.sin(2 * math.pi * 150.0 * k[:, None] * t[None]) / k[:, None].sqrt()).sum(0) * 0.05
    assert abs(harmonic_f0(voice) - 150.0) < 0.1
    for s in (2.0, -2.0):
        ratio = 2 ** (s / 12)
        if method == "fast":  # the ratio rounded to a small fraction (9/8 for +2, 8/9 for -2)
            ratio = float(Fraction(ratio).limit_denominator(MAX_DENOMINATOR))
        expected = 150.0 * ratio
        got = harmonic_f0(pitch_shift(voice, s, method=method)[2000:-2000])
        assert abs(got - expected) < 0.15, (s, got, expected)


def test_log_mel_distance_is_zero_for_identical_and_positive_otherwise():
    w = tones()
    assert log_mel_distance(w, w) == 0.0
    assert log_mel_distance(w, tones(freqs=(350.0,))) > 1.0


def test_call_is_deterministic_per_generator_state_and_reports_its_draw():
    p = ScorePerturbation(pitch_method="fast")
    w = tones(0.3)
    a = p(w, torch.Generator().manual_seed(3))
    b = p(w, torch.Generator().manual_seed(3))
    assert torch.equal(a.wav, b.wav) and (a.speed_factor, a.semitones, a.student_gets_perturbed) == (
        b.speed_factor, b.semitones, b.student_gets_perturbed)
    assert a.wav.shape[-1] == math.ceil(w.shape[-1] / a.speed_factor)
    gen = torch.Generator().manual_seed(0)
    draws = [p.draw(gen) for _ in range(300)]
    assert {d["speed_factor"] for d in draws} == {0.9, 1.0, 1.1}
    assert {d["semitones"] for d in draws} == {-2.0, 2.0}
    share = sum(d["student_gets_perturbed"] for d in draws) / len(draws)
    assert 0.4 < share < 0.6
    assert set(draws[0]) == {"speed_factor", "semitones", "student_gets_perturbed"}  # no noise, no reverb


@pytest.mark.parametrize("method", ["fast", "reference"])
def test_batched_equals_per_item(method):
    p = ScorePerturbation(pitch_method=method, semitones=(2.0,) if method == "reference" else (-2.0, 2.0))
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([4000, 2500, 3300, 1000]) if method == "fast" else torch.tensor([2000, 1500])
    wavs = torch.randn(len(lengths), int(lengths.max()), generator=gen) * 0.1
    out, new_lengths, draws = p.batch(wavs, lengths, torch.Generator().manual_seed(7))
    assert out.shape == (len(lengths), int(new_lengths.max()))
    for b, d in enumerate(draws):
        single = p.apply(wavs[b, : lengths[b]], d)
        assert single.shape[-1] == new_lengths[b]
        assert torch.allclose(out[b, : new_lengths[b]], single, atol=1e-5)
        assert out[b, new_lengths[b]:].abs().sum() == 0
    gen2 = torch.Generator().manual_seed(7)
    assert [p.draw(gen2) for _ in range(len(lengths))] == draws


def test_settings_pickle_for_dataloader_workers():
    p = ScorePerturbation(speed_factors=(0.85, 1.15), pitch_method="fast")
    q = pickle.loads(pickle.dumps(p))
    w = tones(0.2)
    a, b = p(w, torch.Generator().manual_seed(5)), q(w, torch.Generator().manual_seed(5))
    assert torch.equal(a.wav, b.wav) and a.speed_factor in (0.85, 1.15)


class _Views(torch.utils.data.Dataset):
    def __init__(self, perturb):
        self.perturb = perturb

    def __len__(self):
        return 2

    def __getitem__(self, i):
        view = self.perturb(tones(0.1), torch.Generator().manual_seed(i))
        return view.wav.shape[-1], view.speed_factor


def test_runs_in_dataloader_worker_processes():
    loader = torch.utils.data.DataLoader(_Views(ScorePerturbation(pitch_method="fast")), batch_size=None,
                                         num_workers=1)
    for n, f in loader:
        assert n == math.ceil(1600 / f)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pitch_method="rubberband"), "pitch_method 'rubberband' is unknown"),
        (dict(speed_factors=(0.9, -1.0)), "speed_factors must be"),
        (dict(semitones=()), "semitones must be a non-empty"),
    ],
)
def test_bad_settings_fail_with_a_clear_message(kwargs, match):
    with pytest.raises(PerturbError, match=match):
        ScorePerturbation(**kwargs)
    with pytest.raises(PerturbError, match="speed factor must be > 0"):
        speed_perturb(tones(0.1), 0.0)


@pytest.mark.parametrize("semitones", [2.0, -2.0])
def test_reference_pitch_equals_torchaudio_pitchshift_with_a_small_kernel(semitones):
    import torchaudio

    from score_upstream.augment import perturb

    gen = torch.Generator().manual_seed(4)
    wav = torch.cat([torch.randn(2, 9000, generator=gen) * 0.1, tones(seconds=9000 / SR).expand(2, -1)], -1)
    want = torchaudio.transforms.PitchShift(SR, semitones, n_fft=512, hop_length=128)(wav)
    first = pitch_shift(wav, semitones, method="reference")
    shifter = perturb._REFERENCE_SHIFTERS[(SR, semitones, torch.float32, "cpu")]
    again = pitch_shift(wav[1], semitones, method="reference")
    assert first.shape == want.shape and not first.requires_grad
    torch.testing.assert_close(first, want, rtol=0, atol=1e-6)  # float summation order only
    torch.testing.assert_close(again, want[1], rtol=0, atol=1e-6)
    assert perturb._REFERENCE_SHIFTERS[(SR, semitones, torch.float32, "cpu")] is shifter  # built once
    assert shifter.resampler.nbytes < 2e6  # torchaudio's dense kernel for +2 semitones: 1.15 GB
