"""The CPU soft-DTW kernel's anti-diagonal storage: lopsided and ragged pairs, reused slots, float32 vs float64."""

from __future__ import annotations

import pytest
import torch

from score_upstream.sdtw import cpu as soft_dtw_cpu
from score_upstream.sdtw.divergence import soft_dtw_cost, soft_dtw_divergence
from sdtw_reference import naive_sdtw

pytestmark = [
    pytest.mark.compat_env,
    pytest.mark.skipif(soft_dtw_cpu.load() is None, reason="no C++ compiler: the soft-DTW CPU kernel cannot be built"),
]


def test_lopsided_and_ragged_pairs_match_naive_values_and_gradients():
    # Diagonals of every shape: one row, one column, n >> m, m >> n, and a slot wider than its pair.
    shapes = [(1, 1), (1, 23), (23, 1), (2, 17), (19, 3), (11, 11), (7, 20)]
    L1, L2 = 24, 25
    gen = torch.Generator().manual_seed(31)
    C = torch.full((len(shapes), L1, L2), 1e6, dtype=torch.float64)
    for p, (n, m) in enumerate(shapes):
        C[p, :n, :m] = torch.rand(n, m, generator=gen, dtype=torch.float64) * 3
    n, m = torch.tensor([s[0] for s in shapes]), torch.tensor([s[1] for s in shapes])
    w = torch.randn(len(shapes), generator=gen, dtype=torch.float64)
    Cg = C.clone().requires_grad_()
    values = soft_dtw_cost(Cg, n, m, gamma=0.3, backend="cpp")
    (values * w).sum().backward()
    for p, (a, b) in enumerate(shapes):
        Cp = C[p, :a, :b].clone().requires_grad_()
        ref = naive_sdtw(Cp, 0.3)
        ref.backward()
        assert torch.allclose(values[p], ref, rtol=1e-12), (a, b)
        assert torch.allclose(Cg.grad[p, :a, :b], w[p] * Cp.grad, rtol=1e-9, atol=1e-13), (a, b)
        assert Cg.grad[p, a:].abs().max() == 0 and Cg.grad[p, :, b:].abs().max() == 0


def test_calls_in_a_row_do_not_leak_between_pairs_or_calls():
    # Per-thread buffers are reused from pair to pair and call to call: results must not depend on order.
    gen = torch.Generator().manual_seed(32)
    C = torch.rand(6, 40, 33, generator=gen, dtype=torch.float64)
    n, m = torch.tensor([40, 3, 25, 40, 1, 9]), torch.tensor([33, 30, 2, 7, 33, 9])
    Cg = C.clone().requires_grad_()
    soft_dtw_cost(Cg, n, m, backend="cpp").sum().backward()
    for p in (5, 0, 3):
        Cp = C[p : p + 1].clone().requires_grad_()
        v = soft_dtw_cost(Cp, n[p : p + 1], m[p : p + 1], backend="cpp")
        v.sum().backward()
        assert torch.equal(Cp.grad[0], Cg.grad[p])


def test_float32_agrees_with_float64_at_training_sizes():
    # SCORE's inputs: L2-normalised head outputs, gamma 0.1, lengths of a few hundred frames.
    gen = torch.Generator().manual_seed(33)
    x = torch.nn.functional.normalize(torch.randn(2, 300, 32, generator=gen), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(2, 270, 32, generator=gen), dim=-1)
    xl, yl = torch.tensor([300, 211]), torch.tensor([270, 263])
    grads = {}
    for dtype in (torch.float32, torch.float64):
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
        div = soft_dtw_divergence(xg, yg, xl, yl, dp_dtype=dtype, backend="cpp")
        div.sum().backward()
        grads[dtype] = (div.double(), xg.grad.double(), yg.grad.double())
    (v32, *g32), (v64, *g64) = grads[torch.float32], grads[torch.float64]
    assert torch.allclose(v32, v64, rtol=1e-5)
    for got, ref in zip(g32, g64):  # float32 R of a few hundred rounds the weights' exponents to ~1e-3 of the largest
        assert (got - ref).abs().max() < 3e-3 * ref.abs().max()
