"""SincResampler against torchaudio.functional.resample: same outputs, irreducible and reducible ratios."""

from __future__ import annotations

import pytest
import torch
import torchaudio.functional as AF

from score_upstream.augment.resample import SincResampler

pytestmark = pytest.mark.compat_env  # also run in the oldest supported environment (README)


F32, F64 = (torch.float32, 1e-6), (torch.float64, 1e-14)
RATIOS = [(17959, 16000, *F32)]  # +2 semitones at 16 kHz: torchaudio's dense kernel takes seconds to build
RATIOS += [(o, n, *d) for o, n in [(14254, 16000), (16000, 17600), (9, 8), (3, 7), (44100, 16000)] for d in (F32, F64)]


@pytest.mark.parametrize("orig, new, dtype, atol", RATIOS)
def test_matches_torchaudio(orig, new, dtype, atol):
    gen = torch.Generator().manual_seed(orig + new)
    x = torch.randn(2, 3, 20011, generator=gen, dtype=dtype) * 0.1
    resampler = SincResampler(orig, new, dtype=dtype, chunk=4096)  # several chunks
    got = resampler(x)
    want = AF.resample(x, orig, new)
    assert got.shape == want.shape == (2, 3, resampler.output_length(20011))
    torch.testing.assert_close(got, want, rtol=0, atol=atol)


def test_short_inputs_and_bad_arguments():
    r = SincResampler(14254, 16000)  # 7127 -> 8000 after the gcd
    for n in (1, 2, 7, 7127, 7128):
        x = torch.randn(n)
        torch.testing.assert_close(r(x), AF.resample(x, 14254, 16000), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="positive integers"):
        SincResampler(16000.5, 16000)
    with pytest.raises(ValueError, match="holds torch.float32"):
        r(torch.randn(100, dtype=torch.float64))


@pytest.mark.gpu
def test_cuda_matches_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from score_upstream.augment.perturb import pitch_shift

    x = torch.randn(3, 40000, generator=torch.Generator().manual_seed(0)) * 0.1
    cpu = SincResampler(17959, 16000)(x)
    cuda = SincResampler(17959, 16000, device="cuda")(x.cuda()).cpu()
    torch.testing.assert_close(cuda, cpu, rtol=0, atol=1e-6)
    for semitones in (2.0, -2.0):  # the whole reference pitch shift, as perturb.on_device runs it
        torch.testing.assert_close(pitch_shift(x.cuda(), semitones).cpu(), pitch_shift(x, semitones), rtol=0, atol=1e-5)
