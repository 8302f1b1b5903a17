"""Band-limited resampling with torchaudio's windowed-sinc kernel, evaluated only where it is non-zero.

``torchaudio.functional.resample`` reduces ``orig/new`` by their gcd and runs one strided ``conv1d``
whose kernel has ``new`` phases of ``orig + 2 * width`` taps each. For the pitch shift of the SCORE
recipe the ratio does not reduce (+2 semitones at 16 kHz resamples 17,959 -> 16,000 Hz), so that kernel
is 16,000 x 17,973 floats (1.15 GB) although each phase has at most ``2 * width + 1`` = 15 non-zero taps:
the rest lie beyond the filter's ``lowpass_filter_width`` zero crossings, where the window is zero.

:class:`SincResampler` evaluates the same kernel formula at the same points, in the same dtype, for
those taps only, and applies them with a gather: the same output as torchaudio's up to float summation
order (~1e-7 of the signal's scale), with ~1/1000 of the memory and arithmetic for such ratios.

Usage::

    resampler = SincResampler(17959, 16000)      # built once, reused for every call
    y = resampler(x)                             # x (..., T) -> (..., ceil(T * 16000 / 17959))
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SincResampler"]


class SincResampler:
    """Resample (..., T) signals from ``orig_freq`` to ``new_freq`` like ``torchaudio.functional.resample``
    with its default ``sinc_interp_hann`` method.

    Args:
        orig_freq, new_freq: positive integer rates (only their ratio matters).
        lowpass_filter_width: zero crossings of the sinc kept on each side (torchaudio's default 6).
        rolloff: cut-off as a fraction of the lower Nyquist frequency (torchaudio's default 0.99).
        dtype, device: of the kernel; inputs must match them.
        chunk: output samples computed per gather (bounds the temporary memory).
    """

    def __init__(self, orig_freq: int, new_freq: int, lowpass_filter_width: int = 6, rolloff: float = 0.99,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", chunk: int = 1 << 16):
        if int(orig_freq) != orig_freq or int(new_freq) != new_freq or orig_freq <= 0 or new_freq <= 0:
            raise ValueError(f"rates must be positive integers, got {orig_freq} -> {new_freq}")
        if lowpass_filter_width <= 0:
            raise ValueError(f"lowpass_filter_width must be positive, got {lowpass_filter_width}")
        g = math.gcd(int(orig_freq), int(new_freq))
        o, n = int(orig_freq) // g, int(new_freq) // g
        base = min(o, n) * rolloff
        width = math.ceil(lowpass_filter_width * o / base)
        self.orig, self.new, self.width, self.chunk = o, n, width, int(chunk)
        self.taps = 2 * width + 1
        # Output phase p needs input offsets j with |(j - width) / o - p / n| * base < lowpass_filter_width,
        # all inside [floor(p * o / n), floor(p * o / n) + 2 * width] of its frame's window.
        phase = torch.arange(n, device=device)
        self.start = (phase * o) // n  # (n,) exact integer arithmetic
        j = self.start[:, None] + torch.arange(self.taps, device=device)[None, :]  # (n, taps)
        # torchaudio's formula, term by term and in the kernel dtype, at those offsets only.
        t = (-phase).to(dtype)[:, None] / n + (j - width).to(dtype) / o
        t *= base
        t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
        window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
        t *= math.pi
        kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
        kernel *= window * (base / o)
        self.kernel = kernel  # (n, taps)
        self.dtype, self.device = dtype, kernel.device  # an indexed device: 'cuda' becomes cuda:0

    @property
    def nbytes(self) -> int:
        """Memory held by the kernel and its offsets."""
        return self.kernel.numel() * self.kernel.element_size() + self.start.numel() * self.start.element_size()

    def output_length(self, length: int) -> int:
        """Samples out for ``length`` samples in: ``ceil(length * new / orig)``, as torchaudio."""
        return -(-length * self.new // self.orig)

    def __call__(self, x: Tensor) -> Tensor:
        if not x.is_floating_point() or x.dim() == 0:
            raise ValueError(f"expected a float tensor (..., T), got {x.dtype} {tuple(x.shape)}")
        if x.dtype != self.dtype or x.device != self.device:
            raise ValueError(f"input is {x.dtype} on {x.device}; this resampler holds {self.dtype} on {self.device}")
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        length = x.shape[-1]
        out_len = self.output_length(length)
        # Frame f of output phase p reads padded input [f * orig + start[p], ... + taps).
        windows = F.pad(x, (self.width, self.width + self.orig)).unfold(-1, self.taps, 1)  # (R, L + orig, taps) view
        out = x.new_empty(x.shape[0], out_len)
        for s in range(0, out_len, self.chunk):
            k = torch.arange(s, min(out_len, s + self.chunk), device=x.device)
            frame, p = k // self.new, k % self.new
            out[:, s : s + len(k)] = (windows[:, frame * self.orig + self.start[p]] * self.kernel[p]).sum(-1)
        return out.reshape(*shape[:-1], out_len)
