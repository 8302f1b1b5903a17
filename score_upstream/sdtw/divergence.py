"""Soft-DTW and the soft-DTW divergence for padded batches, with an analytic backward.

Usage::

    from score_upstream.sdtw.divergence import soft_dtw_divergence
    loss = soft_dtw_divergence(x, y, x_lengths, y_lengths, gamma=0.1).mean()   # x (B,N,D), y (B,M,D)

Soft-DTW (Cuturi & Blondel, "Soft-DTW: a Differentiable Loss Function for Time-Series", ICML 2017):
``R[i,j] = C[i,j] + softmin_gamma(R[i-1,j-1], R[i-1,j], R[i,j-1])`` with
``softmin_gamma(a) = -gamma log sum exp(-a / gamma)``, ``R[0,0] = 0`` and ``+inf`` on the other borders;
the value is ``R[n, m]`` at each pair's own lengths. The gradient w.r.t. the cost matrix is the
"E matrix" of the paper's backward recursion (expected alignment), computed here by a dedicated
backward pass, never by autograd through the DP loop. The divergence (Blondel, Mensch & Vert,
AISTATS 2021) is ``sdtw(x, y) - (sdtw(x, x) + sdtw(y, y)) / 2``; SCORE divides it by ``n + m``.

All three divergence terms of a batch run as one DP over ``3B`` stacked pairs. Backends, chosen by
device (``backend="auto"``, or ``SCORE_SOFTDTW_BACKEND=cpp|torch|triton``): on CPU a compiled C++ kernel
(:mod:`score_upstream.sdtw.cpu`, built on first use, OpenMP over pairs, SIMD along
anti-diagonals); on CUDA a persistent Triton kernel, one launch for the whole DP
(:mod:`score_upstream.sdtw.triton_kernel`, when triton imports); otherwise one torch step per
anti-diagonal (:mod:`score_upstream.sdtw.torch_dp`). Padding never enters values or gradients.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import Tensor

from score_upstream.native import resolve_backend as choose_backend
from score_upstream.sdtw import cpu as soft_dtw_cpu
from score_upstream.sdtw import torch_dp as soft_dtw_torch

logger = logging.getLogger(__name__)

__all__ = [
    "SoftDTWError",
    "pairwise_sq_euclidean",
    "divergence_costs",
    "soft_dtw_cost",
    "soft_dtw",
    "soft_dtw_divergence",
    "resolve_backend",
    "triton_self_check",
]

_triton_state: dict = {}


class SoftDTWError(ValueError):
    """Invalid input to a soft-DTW function (shape, length, gamma or backend)."""


def _triton_kernels():
    """:mod:`score_upstream.sdtw.triton_kernel`, imported on first use; ``None`` when triton does not import."""
    if "module" not in _triton_state:
        try:
            from score_upstream.sdtw import triton_kernel as soft_dtw_triton
        except Exception as e:  # triton absent or broken: the torch path serves CUDA
            logger.info("Triton soft-DTW kernel unavailable (%s); CUDA uses the torch path", e)
            soft_dtw_triton = None
        _triton_state["module"] = soft_dtw_triton
    return _triton_state["module"]


def _cpp_check(device: torch.device, auto: bool) -> str | None:
    if device.type != "cpu":
        return f"runs on CPU tensors only, got device {device}"
    return None if soft_dtw_cpu.load() is not None else "could not be built (no C++ compiler?)"


def _triton_check(device: torch.device, auto: bool) -> str | None:
    kernels = _triton_kernels() if (device.type == "cuda" or not auto) else None
    if kernels is None:
        return "needs CUDA and the triton package" if auto else "needs the triton package, which does not import"
    if auto:  # never the interpreter, and only once the kernel agreed with the torch path on this device
        return None if not kernels.INTERPRET and _triton_checked(kernels, device) else "failed its self-check"
    where = "cpu" if kernels.INTERPRET else "cuda"
    if device.type != where:
        return f"runs on {'CPU (interpreter)' if kernels.INTERPRET else 'CUDA'} tensors in this process, got device {device}"
    return None


_CHECKS = {"cpp": _cpp_check, "triton": _triton_check, "torch": lambda device, auto: None}


def resolve_backend(device: torch.device, backend: str = "auto") -> str:
    """The backend that runs on ``device``: ``"cpp"`` (CPU kernel), ``"triton"`` (CUDA kernel) or ``"torch"``.

    ``"auto"`` honours ``SCORE_SOFTDTW_BACKEND`` and otherwise picks the compiled kernel on CPU when it
    builds, the Triton kernel on CUDA when triton imports and the kernel passes its self-check on that
    device (:func:`triton_self_check`, once per process and device), else torch. Asking for ``"cpp"`` on a non-CPU
    device or without a compiler is an error, so is ``"triton"`` without triton or off CUDA (unless the
    kernels were imported under ``TRITON_INTERPRET=1``, which runs them on CPU for testing).
    Chosen by :func:`score_upstream.native.resolve_backend`, as the QbE search's backend is.
    """
    return choose_backend(backend, torch.device(device), _CHECKS, "SCORE_SOFTDTW_BACKEND", "soft-DTW", SoftDTWError)


def triton_self_check(kernels, device: torch.device, gamma: float = 0.1) -> tuple[bool, str]:
    """Run the Triton kernels on ``device`` against the torch path (float64) on a small padded batch.

    Covers length-1 sides, mixed lengths, junk in the padding, diagonals split into chunks, and the
    launch configuration of the longest real utterances (:func:`_long_launch_check`). Returns
    ``(ok, message)``; compilation or launch errors count as a failure (the message names them).
    """
    gen = torch.Generator().manual_seed(0)
    n = torch.tensor([40, 1, 23, 40, 7])
    m = torch.tensor([29, 25, 1, 11, 29])
    P, L1, L2 = len(n), int(n.max()), int(m.max())
    C = torch.rand(P, L1, L2, generator=gen, dtype=torch.float64) * 2
    valid = (torch.arange(L1)[None, :, None] < n[:, None, None]) & (torch.arange(L2)[None, None, :] < m[:, None, None])
    C = torch.where(valid, C, torch.tensor(1e6, dtype=torch.float64))
    grad_out = torch.randn(P, generator=gen, dtype=torch.float64)
    ref_values, state = soft_dtw_torch.forward(C, n, m, gamma)
    ref_grad = soft_dtw_torch.backward(state, n, m, gamma, grad_out, C.shape)
    worst = 0.0
    try:
        Cd, nd, md = C.to(device=device, dtype=torch.float32), n.to(device), m.to(device)
        gd = grad_out.to(device, torch.float32)
        for block in (None, 8):  # one chunk per diagonal, then up to 4
            values, Q = kernels.forward(Cd, nd, md, gamma, block=block)
            grad = kernels.backward(Cd, Q, nd, md, gamma, gd, block=block)
            values, grad = values.double().cpu(), grad.double().cpu()
            if not (torch.isfinite(values).all() and torch.isfinite(grad).all()):
                return False, f"non-finite output (block={block})"
            if grad[~valid].abs().max() != 0:
                return False, f"non-zero gradient on padding (block={block})"
            dv = ((values - ref_values).abs() / ref_values.abs().clamp_min(1.0)).max().item()
            # Per cell, relative to the cell itself, floored at 1e-3 of the pair's largest gradient
            # (float32 rounding measured here stays below 1e-4 at gamma 0.1 and 3e-4 at 0.01).
            floor = 1e-3 * ref_grad.abs().amax(dim=(1, 2), keepdim=True)
            dg = ((grad - ref_grad).abs() / (ref_grad.abs() + floor)).max().item()
            worst = max(worst, dv, dg)
            if dv > 1e-4 or dg > 1e-2:
                return False, f"differs from the torch path (block={block}): values {dv:.2e}, gradients {dg:.2e} relative"
        ok, message = _long_launch_check(kernels, device, gamma)
        if not ok:
            return False, message
    except Exception as e:  # a kernel that does not compile or launch here must not stop training
        return False, f"{type(e).__name__}: {e}"
    return True, f"agrees with the torch path within {worst:.1e}; {message}"


LONG_FRAMES = 1900  # the longest LibriSpeech utterance after 0.9x speed, in 50 Hz frames


def _long_launch_check(kernels, device: torch.device, gamma: float) -> tuple[bool, str]:
    """The launch of the longest real utterances (BLOCK 2048, 16 warps) against the same pair in chunks of 64.

    The small batch of :func:`triton_self_check` runs in one warp, blind to a missing barrier or a
    stale global read between warps; a diagonal of ~1,900 cells spreads over all 16. The chunked launch
    (one warp, 64 lanes) is the one the torch path has just vouched for; per cell both do the same
    arithmetic, so they agree to rounding. On CPU (Triton's interpreter, no warps) the pair is 40 x 33
    frames, with the same launch configuration.
    """
    block, warps = kernels.launch_config(LONG_FRAMES, LONG_FRAMES)
    n_frames = 40 if device.type == "cpu" else LONG_FRAMES
    gen = torch.Generator().manual_seed(1)
    C = (torch.rand(1, n_frames, n_frames - 7, generator=gen) * 2).to(device)
    n, m = torch.tensor([n_frames], device=device), torch.tensor([n_frames - 7], device=device)
    g = torch.ones(1, device=device)
    out = {}
    for name, kw in (("wide", {"block": block, "num_warps": warps}), ("chunked", {"block": 64, "num_warps": 1})):
        values, Q = kernels.forward(C, n, m, gamma, **kw)
        out[name] = (values.double().cpu(), kernels.backward(C, Q, n, m, gamma, g, **kw).double().cpu())
    (v1, g1), (v2, g2) = out["wide"], out["chunked"]
    dv = ((v1 - v2).abs() / v2.abs().clamp_min(1.0)).max().item()
    dg = ((g1 - g2).abs() / (g2.abs() + 1e-3 * g2.abs().max())).max().item()
    if not (dv <= 1e-5 and dg <= 1e-3):  # also catches NaN
        return False, (f"the {n_frames}-frame launch with BLOCK {block} and {warps} warps differs from chunks of 64: "
                       f"values {dv:.2e}, gradients {dg:.2e} relative")
    return True, f"{n_frames}-frame pair with BLOCK {block}, {warps} warps within {max(dv, dg):.1e}"


def _triton_checked(kernels, device: torch.device) -> bool:
    """Whether ``auto`` may use the Triton kernels on ``device``: :func:`triton_self_check`, cached per device.

    ``SCORE_SOFTDTW_SELFCHECK=0`` skips the check (the kernels are then trusted as they are).
    """
    cache = _triton_state.setdefault("checked", {})
    key = str(device)
    if key not in cache:
        if os.environ.get("SCORE_SOFTDTW_SELFCHECK", "1") == "0":
            cache[key] = True
        else:
            ok, message = triton_self_check(kernels, device)
            if ok:
                logger.info("Triton soft-DTW kernel on %s: %s", device, message)
            else:
                logger.warning(
                    "Triton soft-DTW kernel failed its self-check on %s (%s); using the torch path. "
                    "SCORE_SOFTDTW_BACKEND=triton forces the kernel.", device, message,
                )
            cache[key] = ok
    return cache[key]


def _cpp_forward(C: Tensor, n: Tensor, m: Tensor, gamma: float) -> tuple[Tensor, Tensor]:
    lib = soft_dtw_cpu.load()
    P, L1, L2 = C.shape
    Q = torch.empty_like(C)
    values = torch.empty(P, dtype=C.dtype)
    fn = lib.sdtw_forward_f64 if C.dtype == torch.float64 else lib.sdtw_forward_f32
    fn(C.data_ptr(), Q.data_ptr(), values.data_ptr(), n.data_ptr(), m.data_ptr(), P, L1, L2, gamma,
       torch.get_num_threads())
    return values, Q


def _cpp_backward(C: Tensor, Q: Tensor, n: Tensor, m: Tensor, gamma: float, grad_out: Tensor) -> Tensor:
    lib = soft_dtw_cpu.load()
    P, L1, L2 = C.shape
    G = torch.empty_like(C)
    fn = lib.sdtw_backward_f64 if C.dtype == torch.float64 else lib.sdtw_backward_f32
    fn(C.data_ptr(), Q.data_ptr(), G.data_ptr(), grad_out.data_ptr(), n.data_ptr(), m.data_ptr(), P, L1, L2,
       gamma, torch.get_num_threads())
    return G


class _SoftDTWCost(torch.autograd.Function):
    """values[p] = soft-DTW of C[p, :n[p], :m[p]]; backward gives grad_out[p] * E_p on those cells."""

    @staticmethod
    def forward(ctx, C: Tensor, n: Tensor, m: Tensor, gamma: float, backend: str) -> Tensor:
        C = C.detach().contiguous()
        if backend in ("cpp", "triton"):
            fwd = _cpp_forward if backend == "cpp" else _triton_kernels().forward
            values, Q = fwd(C, n, m, gamma)
            ctx.state = None
            ctx.save_for_backward(C, Q, n, m)
        else:
            values, state = soft_dtw_torch.forward(C, n, m, gamma)
            ctx.state = state
            ctx.save_for_backward(n, m)
        ctx.gamma, ctx.backend, ctx.shape = gamma, backend, C.shape
        return values

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        grad_out = grad_out.contiguous()
        if ctx.backend in ("cpp", "triton"):
            C, Q, n, m = ctx.saved_tensors
            bwd = _cpp_backward if ctx.backend == "cpp" else _triton_kernels().backward
            G = bwd(C, Q, n, m, ctx.gamma, grad_out.to(C.dtype))
        else:
            n, m = ctx.saved_tensors
            G = soft_dtw_torch.backward(ctx.state, n, m, ctx.gamma, grad_out, ctx.shape)
        return G, None, None, None, None


def _lengths(lengths: Tensor | None, B: int, full: int, name: str, device: torch.device) -> Tensor:
    if lengths is None:
        return torch.full((B,), full, dtype=torch.long, device=device)
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.shape != (B,) or lengths.dtype.is_floating_point:
        raise SoftDTWError(f"{name} must be an integer tensor of shape ({B},), got {tuple(lengths.shape)} {lengths.dtype}")
    lengths = lengths.long()
    if B and (int(lengths.min()) < 1 or int(lengths.max()) > full):
        raise SoftDTWError(
            f"{name} must lie in [1, {full}] (the padded size), got min {int(lengths.min())} max {int(lengths.max())}"
        )
    return lengths


def _check_gamma(gamma: float) -> float:
    gamma = float(gamma)
    if not gamma > 0:
        raise SoftDTWError(f"gamma must be > 0, got {gamma}")
    return gamma


def soft_dtw_cost(
    C: Tensor, n_lengths: Tensor | None = None, m_lengths: Tensor | None = None, gamma: float = 0.1,
    backend: str = "auto",
) -> Tensor:
    """Soft-DTW value of each cost matrix in a padded batch; differentiable w.r.t. ``C``.

    Args:
        C: (P, L1, L2) float cost matrices (any finite values in the padding; they are ignored).
        n_lengths, m_lengths: (P,) valid rows / columns per pair (default: full size).
        gamma: softmin temperature, > 0.
        backend: ``"auto"``, ``"cpp"``, ``"torch"`` or ``"triton"`` (see :func:`resolve_backend`).

    Returns:
        (P,) values ``R[n_p, m_p]`` in ``C``'s dtype. The DP runs in that dtype; pass float64 costs for
        float64 accumulation.
    """
    if C.dim() != 3 or not C.dtype.is_floating_point:
        raise SoftDTWError(f"cost matrices must be a float tensor of shape (P, L1, L2), got {tuple(C.shape)} {C.dtype}")
    P, L1, L2 = C.shape
    if L1 == 0 or L2 == 0:
        raise SoftDTWError(f"cost matrices must be non-empty, got shape {tuple(C.shape)}")
    gamma = _check_gamma(gamma)
    n = _lengths(n_lengths, P, L1, "n_lengths", C.device)
    m = _lengths(m_lengths, P, L2, "m_lengths", C.device)
    backend = resolve_backend(C.device, backend)
    if backend in ("cpp", "triton"):
        n, m = n.contiguous(), m.contiguous()
    return _SoftDTWCost.apply(C, n, m, gamma, backend)


def pairwise_sq_euclidean(x: Tensor, y: Tensor) -> Tensor:
    """Squared Euclidean distances ``|x_i - y_j|^2`` for batches x (B,N,D), y (B,M,D) -> (B,N,M).

    Uses the ``|x|^2 + |y|^2 - 2 x.y`` expansion (one batched matmul). For raw, large-magnitude
    features compute in float64 (cancellation); on L2-normalised features float32 is exact to ~1e-7.
    """
    return torch.baddbmm(
        x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1).unsqueeze(-2), x, y.transpose(1, 2), alpha=-2.0
    )


class _DivergenceCosts(torch.autograd.Function):
    """The three terms' squared-Euclidean costs stacked as ``(xy, xx, yy)``, (3B, L, L) for x, y (B, L, D).

    Same values as three :func:`pairwise_sq_euclidean` calls; the backward uses the symmetry of the
    xx and yy terms, ``d/dx sum(G * cost(x, x)) = 2 (rowsum(S) x - S x)`` with ``S = G + G^T``: one
    batched GEMM per symmetric term instead of two, 4 instead of 6 in all.
    """

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:
        ctx.save_for_backward(x, y)
        return torch.cat((pairwise_sq_euclidean(x, y), pairwise_sq_euclidean(x, x), pairwise_sq_euclidean(y, y)))

    @staticmethod
    def backward(ctx, G: Tensor):
        x, y = ctx.saved_tensors
        B = x.shape[0]
        g_xy, g_xx, g_yy = G[:B], G[B : 2 * B], G[2 * B :]
        s_xx = g_xx + g_xx.transpose(1, 2)
        s_yy = g_yy + g_yy.transpose(1, 2)
        # d/dx_i of sum_j G_ij (|x_i|^2 + |y_j|^2 - 2 x_i.y_j) = 2 (x_i sum_j G_ij - (G y)_i); likewise for y.
        dx = torch.baddbmm(x * (g_xy.sum(2) + s_xx.sum(2)).unsqueeze(-1), g_xy, y, alpha=-1.0)
        dx = torch.baddbmm(dx, s_xx, x, alpha=-1.0)
        dy = torch.baddbmm(y * (g_xy.sum(1) + s_yy.sum(2)).unsqueeze(-1), g_xy.transpose(1, 2), x, alpha=-1.0)
        dy = torch.baddbmm(dy, s_yy, y, alpha=-1.0)
        return 2.0 * dx, 2.0 * dy


def divergence_costs(x: Tensor, y: Tensor) -> Tensor:
    """Cost matrices of the divergence's three terms for x, y (B, L, D): (3B, L, L) as ``(xy, xx, yy)``.

    Differentiable; its backward takes 4 batched GEMMs instead of the 6 of three independent
    :func:`pairwise_sq_euclidean` calls (see :class:`_DivergenceCosts`).
    """
    return _DivergenceCosts.apply(x, y)


def _prepare(x: Tensor, y: Tensor, x_lengths, y_lengths, dp_dtype):
    if x.dim() != 3 or y.dim() != 3:
        raise SoftDTWError(f"x and y must be (B, N, D) and (B, M, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise SoftDTWError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must share batch size and feature dimension")
    if x.shape[1] == 0 or y.shape[1] == 0:
        raise SoftDTWError(f"sequences must be non-empty, got x {tuple(x.shape)} and y {tuple(y.shape)}")
    B, N, _ = x.shape
    M = y.shape[1]
    xl = _lengths(x_lengths, B, N, "x_lengths", x.device)
    yl = _lengths(y_lengths, B, M, "y_lengths", x.device)
    if dp_dtype is None:
        dp_dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    # Zero the padding frames so that NaN/inf there can neither reach the DP nor the gradient.
    x = torch.where((torch.arange(N, device=x.device)[None, :] < xl[:, None])[..., None], x.to(dp_dtype), 0.0)
    y = torch.where((torch.arange(M, device=y.device)[None, :] < yl[:, None])[..., None], y.to(dp_dtype), 0.0)
    return x, y, xl, yl


def soft_dtw(
    x: Tensor, y: Tensor, x_lengths: Tensor | None = None, y_lengths: Tensor | None = None,
    gamma: float = 0.1, dp_dtype: torch.dtype | None = None, backend: str = "auto",
) -> Tensor:
    """Soft-DTW value with squared-Euclidean cost for each pair of a padded batch.

    Args:
        x: (B, N, D) first sequences, frames past ``x_lengths[b]`` are padding.
        y: (B, M, D) second sequences, frames past ``y_lengths[b]`` are padding.
        x_lengths, y_lengths: (B,) integer lengths (default: N and M).
        gamma: softmin temperature (> 0), default 0.1.
        dp_dtype: dtype of the cost and the DP; default float32 (float64 if an input is float64).
            Use ``torch.float64`` for raw, large-magnitude costs.
        backend: ``"auto"``, ``"cpp"``, ``"torch"`` or ``"triton"``.

    Returns:
        (B,) values in ``dp_dtype``.
    """
    gamma = _check_gamma(gamma)
    x, y, xl, yl = _prepare(x, y, x_lengths, y_lengths, dp_dtype)
    return soft_dtw_cost(pairwise_sq_euclidean(x, y), xl, yl, gamma, backend)


def soft_dtw_divergence(
    x: Tensor, y: Tensor, x_lengths: Tensor | None = None, y_lengths: Tensor | None = None,
    gamma: float = 0.1, normalize: bool = True, dp_dtype: torch.dtype | None = None, backend: str = "auto",
) -> Tensor:
    """Soft-DTW divergence ``sdtw(x,y) - (sdtw(x,x) + sdtw(y,y)) / 2`` per pair, SCORE's loss.

    Args:
        x: (B, N, D) first sequences (SCORE: L2-normalised head outputs of the student).
        y: (B, M, D) second sequences (SCORE: those of the target model).
        x_lengths, y_lengths: (B,) integer lengths (default: N and M); padding never affects results.
        gamma: softmin temperature (> 0), default 0.1 as in the paper.
        normalize: divide each pair's divergence by its ``n_b + m_b`` (SCORE's recipe), default True.
        dp_dtype: dtype of the cost and the DP (see :func:`soft_dtw`).
        backend: ``"auto"``, ``"cpp"``, ``"torch"`` or ``"triton"``.

    Returns:
        (B,) divergences in ``dp_dtype``, differentiable w.r.t. ``x`` and ``y``.
    """
    gamma = _check_gamma(gamma)
    x, y, xl, yl = _prepare(x, y, x_lengths, y_lengths, dp_dtype)
    B, N, D = x.shape
    M = y.shape[1]
    L = max(N, M)
    # One DP over 3B stacked pairs (xy, xx, yy), padded to a common size L.
    xp = torch.nn.functional.pad(x, (0, 0, 0, L - N))
    yp = torch.nn.functional.pad(y, (0, 0, 0, L - M))
    n = torch.cat((xl, xl, yl))
    m = torch.cat((yl, xl, yl))
    values = soft_dtw_cost(divergence_costs(xp, yp), n, m, gamma, backend)
    xy, xx, yy = values.view(3, B)
    div = xy - 0.5 * (xx + yy)
    if normalize:
        div = div / (xl + yl).to(div.dtype)
    return div
