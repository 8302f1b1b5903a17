"""Soft-DTW forward/backward in plain torch ops, one step per anti-diagonal, vectorised over pairs.

Runs on any device (the CUDA path until a persistent GPU kernel exists, and the CPU fallback when no
C++ compiler is available). Same contract as :mod:`score_upstream.sdtw.cpu`: forward
returns the per-pair value ``R[n_p, m_p]`` and a saved state; backward returns ``dvalue/dC`` scaled by
the incoming gradient, zero on padding.

Internally everything lives in a skewed layout ``S[p, d, i] = M[p, i, d - i]`` (1-based cells,
``d = i + j``), so each anti-diagonal is one contiguous slice.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _big(dtype: torch.dtype) -> float:
    # Finite stand-in for +inf: keeps every exponent finite so no inf - inf NaN reaches the backward.
    return 1e30 if dtype != torch.float64 else 1e300


def _skew_index(L1: int, L2: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row-major flat index into ``(L1, L2)`` for every skewed slot ``(d, i)``, and whether it is a cell."""
    d = torch.arange(L1 + L2 + 1, device=device)[:, None]
    i = torch.arange(L1 + 2, device=device)[None, :]
    j = d - i
    inside = (i >= 1) & (i <= L1) & (j >= 1) & (j <= L2)
    flat = ((i - 1) * L2 + (j - 1)).clamp(0, L1 * L2 - 1)
    return flat, inside


def forward(C: Tensor, n: Tensor, m: Tensor, gamma: float) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Soft-DTW values of a padded batch of cost matrices.

    Args:
        C: (P, L1, L2) cost matrices; pair ``p`` uses ``C[p, :n[p], :m[p]]``.
        n, m: (P,) int64 lengths, ``1 <= n <= L1``, ``1 <= m <= L2``.
        gamma: softmin temperature (> 0).

    Returns:
        ``(values (P,), state)``; ``state`` is passed unchanged to :func:`backward`.
    """
    P, L1, L2 = C.shape
    big = _big(C.dtype)
    flat, inside = _skew_index(L1, L2, C.device)
    i_idx = torch.arange(L1 + 2, device=C.device)
    d_idx = torch.arange(L1 + L2 + 1, device=C.device)
    valid = (
        inside[None]
        & (i_idx[None, None, :] <= n[:, None, None])
        & ((d_idx[None, :, None] - i_idx[None, None, :]) <= m[:, None, None])
    )  # (P, D, L1+2)
    Cs = torch.where(valid, C.reshape(P, -1)[:, flat], torch.zeros((), dtype=C.dtype, device=C.device))
    Rs = torch.full_like(Cs, big)
    Rs[:, 0, 0] = 0.0
    for d in range(2, L1 + L2 + 1):
        lo, hi = max(1, d - L2), min(L1, d - 1)
        prev2, prev1 = Rs[:, d - 2], Rs[:, d - 1]
        cand = torch.stack((prev2[:, lo - 1 : hi], prev1[:, lo - 1 : hi], prev1[:, lo : hi + 1]), dim=-1)
        q = torch.logsumexp(cand / -gamma, dim=-1) * -gamma
        Rs[:, d, lo : hi + 1] = torch.where(valid[:, d, lo : hi + 1], Cs[:, d, lo : hi + 1] + q, big)
    values = Rs[torch.arange(P, device=C.device), n + m, n]
    return values, (Rs, Cs, valid)


def backward(state, n: Tensor, m: Tensor, gamma: float, grad_out: Tensor, shape: torch.Size) -> Tensor:
    """``grad_out[p] * dvalue_p / dC[p]`` as a (P, L1, L2) tensor, zero outside each pair's lengths."""
    Rs, Cs, valid = state
    P, L1, L2 = shape
    D = L1 + L2 + 1
    Es = torch.zeros((P, D + 2, L1 + 2), dtype=Rs.dtype, device=Rs.device)
    # Successor slots beyond the last diagonal: R = big there, E = 0, so they contribute nothing.
    big = _big(Rs.dtype)
    Rp = torch.cat((Rs, torch.full((P, 2, L1 + 2), big, dtype=Rs.dtype, device=Rs.device)), dim=1)
    Cp = torch.cat((Cs, torch.zeros((P, 2, L1 + 2), dtype=Cs.dtype, device=Cs.device)), dim=1)
    Qp = Rp - Cp  # softmin part of each cell
    i_idx = torch.arange(L1 + 2, device=Rs.device)
    seed_d, seed_i = n + m, n
    for d in range(L1 + L2, 1, -1):
        lo, hi = max(1, d - L2), min(L1, d - 1)
        r = Rp[:, d, lo : hi + 1]
        wa = torch.exp(((Qp[:, d + 1, lo + 1 : hi + 2] - r) / gamma).clamp(max=0))
        wb = torch.exp(((Qp[:, d + 1, lo : hi + 1] - r) / gamma).clamp(max=0))
        wc = torch.exp(((Qp[:, d + 2, lo + 1 : hi + 2] - r) / gamma).clamp(max=0))
        e = Es[:, d + 1, lo + 1 : hi + 2] * wa + Es[:, d + 1, lo : hi + 1] * wb + Es[:, d + 2, lo + 1 : hi + 2] * wc
        seed = (seed_d[:, None] == d) & (seed_i[:, None] == i_idx[None, lo : hi + 1])
        e = torch.where(seed, torch.ones((), dtype=e.dtype, device=e.device), e)
        Es[:, d, lo : hi + 1] = torch.where(valid[:, d, lo : hi + 1], e, torch.zeros((), dtype=e.dtype, device=e.device))
    ii = torch.arange(1, L1 + 1, device=Rs.device)[:, None]
    jj = torch.arange(1, L2 + 1, device=Rs.device)[None, :]
    G = Es[:, ii + jj, ii.expand(L1, L2)]  # (P, L1, L2), zero on padding because E is masked by `valid`
    return G * grad_out[:, None, None]
