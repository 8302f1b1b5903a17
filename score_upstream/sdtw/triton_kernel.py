"""Persistent Triton soft-DTW kernels: one program per pair, the whole anti-diagonal DP inside one launch.

Used by :mod:`score_upstream.sdtw.divergence` on CUDA (``backend="triton"``, the default there when triton
imports). Same contract as the C++ kernel (:mod:`score_upstream.sdtw.cpu`): :func:`forward`
returns the values ``R[n_p, m_p]`` and the softmin part ``Q`` of every cell, :func:`backward` turns them
into ``grad_out[p] * dvalue_p / dC[p]``.

Why persistent: the DP has ``n + m - 1`` dependent anti-diagonals, so on a GPU it is bound by latency,
not arithmetic. One launch per diagonal pays a launch (~3-5 us) per step; here each program loops over
its pair's diagonals and pays one global-memory round trip plus a block barrier per step.

Memory: ``C``, ``Q`` and the gradient are ``(P, L1, L2)`` row-major, cell ``(i, j)`` (1-based) at
``[i-1, j-1]``; those accesses along a diagonal are strided but nothing waits on them. The recursion
itself goes through a small per-pair ring of three anti-diagonals indexed by ``i`` (contiguous, so the
dependent loads are coalesced and stay in cache), slot rotation instead of ``d % 3``. Predecessor and
successor validity is computed from ``(i, j, n_p, m_p)``, so cells outside a pair are never read and
the ring needs no initialisation. A diagonal longer than ``BLOCK`` is processed in chunks.
Launches use ``num_stages=1``: software pipelining would prefetch the next diagonal's ring loads
across the barrier, i.e. read values not yet written.

Testing without a GPU: set ``TRITON_INTERPRET=1`` before this module is imported; the kernels then run
in Triton's interpreter on CPU tensors (slow, tiny shapes only). :data:`INTERPRET` records the mode.
"""

from __future__ import annotations

import logging
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

logger = logging.getLogger(__name__)

#: True when the kernels were built for Triton's CPU interpreter (``TRITON_INTERPRET=1`` at import).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")

MAX_BLOCK = 2048  # longest diagonal chunk held in registers at once; longer diagonals loop over chunks


def _interpreter_index_shim() -> None:
    """Let the interpreter use loaded scalars as ``range`` bounds under numpy >= 2.4.

    Triton's interpreter holds scalars as 1-element arrays and converts them with ``int(array)``,
    which numpy 2.4 rejects ("only 0-dimensional arrays can be converted"); the per-pair loop bounds
    here are such scalars. Re-register ``__index__`` through ``.item()`` after the interpreter's own patch
    (Triton 3.6 registers it through a ``scope`` argument, Triton 3.1 sets it on the class). Older numpy
    needs nothing, so nothing is patched there.
    """
    import numpy as np
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_score_index_shim", False) or np.lib.NumpyVersion(np.__version__) < "2.4.0":
        return

    def index(self):
        return int(self.handle.data.reshape(-1)[0])

    def patched(tensor, *scope):
        original(tensor, *scope)
        if scope:
            scope[0].set_attr(tensor, "__index__", index)
        else:
            tensor.__index__ = index

    patched._score_index_shim = True
    interpreter._patch_lang_tensor = patched


if INTERPRET:
    _interpreter_index_shim()


@triton.jit
def _forward_kernel(C, Q, RING, OUT, NL, ML, GAM, L1, L2, BIG: tl.constexpr, BLOCK: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)
    n = tl.load(NL + p).to(tl.int32)
    m = tl.load(ML + p).to(tl.int32)
    gamma = tl.load(GAM)
    inv_g = 1.0 / gamma
    c_pair = C + p * L1 * L2
    q_pair = Q + p * L1 * L2
    ring = RING + p * 3 * (L1 + 2)
    k = tl.arange(0, BLOCK)
    w = L1 + 2
    cur_o = 2 * w  # slot offsets of diagonals d, d - 1, d - 2 in the ring
    p1_o = 1 * w
    p2_o = 0 * w
    for d in range(2, n + m + 1):
        ilo = tl.maximum(1, d - m)
        ihi = tl.minimum(n, d - 1)
        for i0 in range(ilo, ihi + 1, BLOCK):
            i = i0 + k
            on = i <= ihi
            j = d - i
            # Predecessors (i-1, j-1) on d-2, (i-1, j) and (i, j-1) on d-1; borders are +inf but R[0,0] = 0.
            a = tl.load(ring + p2_o + i - 1, mask=on & (i > 1) & (j > 1), other=BIG)
            a = tl.where((i == 1) & (j == 1), 0.0, a)
            b = tl.load(ring + p1_o + i - 1, mask=on & (i > 1), other=BIG)
            c = tl.load(ring + p1_o + i, mask=on & (j > 1), other=BIG)
            mn = tl.minimum(a, tl.minimum(b, c))
            s = tl.exp((mn - a) * inv_g) + tl.exp((mn - b) * inv_g) + tl.exp((mn - c) * inv_g)
            q = mn - gamma * tl.log(s)
            off = (i - 1) * L2 + (j - 1)
            cost = tl.load(c_pair + off, mask=on, other=0.0)
            tl.store(q_pair + off, q, mask=on)
            tl.store(ring + cur_o + i, cost + q, mask=on)
        # Every thread's stores of diagonal d must be visible before anyone reads them at d + 1 (and
        # every read of the slot about to be reused must be done).
        tl.debug_barrier()
        cur_o, p1_o, p2_o = p2_o, cur_o, p1_o
    tl.store(OUT + p, tl.load(ring + p1_o + n))


@triton.jit
def _backward_kernel(C, Q, G, GOUT, EB, QB, NL, ML, GAM, L1, L2, BLOCK: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)
    n = tl.load(NL + p).to(tl.int32)
    m = tl.load(ML + p).to(tl.int32)
    gamma = tl.load(GAM)
    inv_g = 1.0 / gamma
    gout = tl.load(GOUT + p)
    c_pair = C + p * L1 * L2
    q_pair = Q + p * L1 * L2
    g_pair = G + p * L1 * L2
    eb = EB + p * 3 * (L1 + 2)
    qb = QB + p * 3 * (L1 + 2)
    k = tl.arange(0, BLOCK)
    zero = tl.full([BLOCK], 0.0, dtype=G.dtype.element_ty)  # builtins only: see _interpreter_index_shim
    # The gradient is zero on padding: columns >= m of the valid rows, then every row >= n.
    for row in range(0, n):
        for c0 in range(m, L2, BLOCK):
            col = c0 + k
            tl.store(g_pair + row * L2 + col, zero, mask=col < L2)
    for f0 in range(n * L2, L1 * L2, BLOCK):
        f = f0 + k
        tl.store(g_pair + f, zero, mask=f < L1 * L2)
    w = L1 + 2
    cur_o = 0 * w  # slot offsets of diagonals d, d + 1, d + 2 in the E and Q rings
    s1_o = 1 * w
    s2_o = 2 * w
    for dd in range(0, n + m - 1):
        d = n + m - dd
        ilo = tl.maximum(1, d - m)
        ihi = tl.minimum(n, d - 1)
        for i0 in range(ilo, ihi + 1, BLOCK):
            i = i0 + k
            on = i <= ihi
            j = d - i
            off = (i - 1) * L2 + (j - 1)
            q = tl.load(q_pair + off, mask=on, other=0.0)
            r = tl.load(c_pair + off, mask=on, other=0.0) + q
            # Successors (i+1, j), (i, j+1) on d+1 and (i+1, j+1) on d+2. A successor's soft-argmin weight
            # for this cell is exp((Q_succ - R)/gamma) <= 1 (Cuturi & Blondel 2017, Alg. 2); the clamp
            # only bounds the masked lanes, whose E is 0.
            sa = on & (i < n)
            sb = on & (j < m)
            sc = sa & (j < m)
            ea = tl.load(eb + s1_o + i + 1, mask=sa, other=0.0)
            qa = tl.load(qb + s1_o + i + 1, mask=sa, other=0.0)
            e_b = tl.load(eb + s1_o + i, mask=sb, other=0.0)
            q_b = tl.load(qb + s1_o + i, mask=sb, other=0.0)
            ec = tl.load(eb + s2_o + i + 1, mask=sc, other=0.0)
            qc = tl.load(qb + s2_o + i + 1, mask=sc, other=0.0)
            e = (ea * tl.exp(tl.minimum((qa - r) * inv_g, 0.0))
                 + e_b * tl.exp(tl.minimum((q_b - r) * inv_g, 0.0))
                 + ec * tl.exp(tl.minimum((qc - r) * inv_g, 0.0)))
            e = tl.where((i == n) & (j == m), 1.0, e)
            tl.store(eb + cur_o + i, e, mask=on)
            tl.store(qb + cur_o + i, q, mask=on)
            tl.store(g_pair + off, e * gout, mask=on)
        tl.debug_barrier()
        cur_o, s1_o, s2_o = s2_o, cur_o, s1_o


def launch_config(L1: int, L2: int, num_warps: int | None = None, block: int | None = None) -> tuple[int, int]:
    """``(BLOCK, num_warps)`` for padded sizes ``L1 x L2``: BLOCK covers the longest diagonal (<= MAX_BLOCK).

    ``block`` (a power of two) overrides the chunk length, e.g. to exercise chunked diagonals on small inputs.
    """
    if block is None:
        block = min(MAX_BLOCK, max(32, triton.next_power_of_2(min(L1, L2))))
    elif block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    if num_warps is None:
        num_warps = int(os.environ.get("SCORE_SOFTDTW_TRITON_WARPS", 0)) or min(16, max(1, block // 128))
    return block, num_warps


def _check(C: Tensor, n: Tensor, m: Tensor) -> None:
    if not INTERPRET and C.device.type != "cuda":
        raise ValueError(f"the Triton soft-DTW kernel needs CUDA tensors, got device {C.device} "
                         "(set TRITON_INTERPRET=1 before import to run the interpreter on CPU)")
    if C.dtype not in (torch.float32, torch.float64) or not C.is_contiguous():
        raise ValueError(f"the Triton soft-DTW kernel needs contiguous float32/float64 costs, got {C.dtype}")
    if n.dtype != torch.int64 or m.dtype != torch.int64 or n.device != C.device or m.device != C.device:
        raise ValueError(f"lengths must be int64 on {C.device}, got {n.dtype}/{m.dtype} on {n.device}/{m.device}")


def forward(C: Tensor, n: Tensor, m: Tensor, gamma: float, num_warps: int | None = None,
            block: int | None = None) -> tuple[Tensor, Tensor]:
    """Soft-DTW values of a padded batch of cost matrices, one program per pair.

    Args:
        C: (P, L1, L2) contiguous float32/float64 costs; pair ``p`` uses ``C[p, :n[p], :m[p]]``.
        n, m: (P,) int64 lengths on ``C``'s device, ``1 <= n <= L1``, ``1 <= m <= L2``.
        gamma: softmin temperature (> 0).
        num_warps: warps per program (default: from :func:`launch_config`).
        block: diagonal chunk length (default: from :func:`launch_config`).

    Returns:
        ``(values (P,), Q (P, L1, L2))``: ``Q`` holds the softmin of each valid cell's predecessors
        (``R = C + Q``), undefined on padding; pass it to :func:`backward`.
    """
    _check(C, n, m)
    P, L1, L2 = C.shape
    n, m = n.contiguous(), m.contiguous()
    Q = torch.empty_like(C)
    values = torch.empty(P, dtype=C.dtype, device=C.device)
    ring = torch.empty((P, 3, L1 + 2), dtype=C.dtype, device=C.device)
    g = torch.full((1,), gamma, dtype=C.dtype, device=C.device)
    block, warps = launch_config(L1, L2, num_warps, block)
    if P:
        _forward_kernel[(P,)](C, Q, ring, values, n, m, g, L1, L2, BIG=1e30, BLOCK=block, num_warps=warps,
                                  num_stages=1)
    return values, Q


def backward(C: Tensor, Q: Tensor, n: Tensor, m: Tensor, gamma: float, grad_out: Tensor,
             num_warps: int | None = None, block: int | None = None) -> Tensor:
    """``grad_out[p] * dvalue_p / dC[p]`` (the E matrix), (P, L1, L2), zero outside each pair's lengths.

    Args:
        C, n, m, gamma: as given to :func:`forward`.
        Q: (P, L1, L2) the second output of :func:`forward`.
        grad_out: (P,) incoming gradient of the values.
        num_warps, block: as in :func:`forward`.
    """
    _check(C, n, m)
    P, L1, L2 = C.shape
    n, m = n.contiguous(), m.contiguous()
    G = torch.empty_like(C)
    eb = torch.empty((P, 3, L1 + 2), dtype=C.dtype, device=C.device)
    qb = torch.empty_like(eb)
    g = torch.full((1,), gamma, dtype=C.dtype, device=C.device)
    gout = grad_out.to(device=C.device, dtype=C.dtype).contiguous()
    block, warps = launch_config(L1, L2, num_warps, block)
    if P:
        _backward_kernel[(P,)](C, Q, G, gout, eb, qb, n, m, g, L1, L2, BLOCK=block, num_warps=warps,
                                   num_stages=1)
    return G
