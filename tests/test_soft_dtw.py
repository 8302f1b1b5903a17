"""Soft-DTW and its divergence against slow float64 references (loops, brute force over paths)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from score_upstream.sdtw import cpu as soft_dtw_cpu
from sdtw_reference import naive_sdtw
from score_upstream.sdtw.divergence import SoftDTWError, soft_dtw, soft_dtw_cost, soft_dtw_divergence

pytestmark = pytest.mark.compat_env  # also run in the oldest supported environment (README)

BACKENDS = ["torch"] + (["cpp"] if soft_dtw_cpu.load() is not None else [])


def naive_divergence(x, y, gamma, normalize=True):
    sq = lambda a, b: ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)  # noqa: E731
    d = naive_sdtw(sq(x, y), gamma) - 0.5 * (naive_sdtw(sq(x, x), gamma) + naive_sdtw(sq(y, y), gamma))
    return d / (x.shape[0] + y.shape[0]) if normalize else d


def all_paths(n, m):
    """Every monotone alignment path from (0,0) to (n-1,m-1) with steps (1,0), (0,1), (1,1)."""
    def walk(i, j):
        if (i, j) == (n - 1, m - 1):
            yield [(i, j)]
            return
        for di, dj in ((1, 0), (0, 1), (1, 1)):
            if i + di < n and j + dj < m:
                for rest in walk(i + di, j + dj):
                    yield [(i, j)] + rest
    return list(walk(0, 0))


def padded_batch(gen, B=3, N=7, M=6, D=4, dtype=torch.float64):
    x = torch.randn(B, N, D, generator=gen, dtype=dtype)
    y = torch.randn(B, M, D, generator=gen, dtype=dtype)
    xl = torch.tensor([N, 3, 5])[:B]
    yl = torch.tensor([2, M, 4])[:B]
    return x, y, xl, yl


@pytest.mark.parametrize("backend", BACKENDS)
def test_value_equals_brute_force_over_paths(backend):
    gen = torch.Generator().manual_seed(1)
    C = torch.rand(3, 4, generator=gen, dtype=torch.float64) * 3
    for gamma in (0.1, 1.0):
        costs = torch.stack([sum(C[i, j] for i, j in path) for path in all_paths(3, 4)])
        expected = -gamma * torch.logsumexp(-costs / gamma, 0)
        got = soft_dtw_cost(C[None], gamma=gamma, backend=backend)[0]
        assert torch.allclose(got, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cost_values_and_grads_match_naive_on_padded_batch(backend):
    gen = torch.Generator().manual_seed(2)
    C = torch.rand(4, 6, 5, generator=gen, dtype=torch.float64) * 2
    C[:, 4:, :] = 1e6  # padding content must not matter
    n, m = torch.tensor([4, 2, 4, 1]), torch.tensor([5, 3, 1, 4])
    Cg = C.clone().requires_grad_()
    vals = soft_dtw_cost(Cg, n, m, gamma=0.1, backend=backend)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    (vals * w).sum().backward()
    for p in range(4):
        Cp = C[p, : n[p], : m[p]].clone().requires_grad_()
        ref = naive_sdtw(Cp, 0.1)
        ref.backward()
        assert torch.allclose(vals[p], ref, rtol=1e-10)
        assert torch.allclose(Cg.grad[p, : n[p], : m[p]], w[p] * Cp.grad, rtol=1e-8, atol=1e-12)
    mask = (torch.arange(6)[None, :, None] < n[:, None, None]) & (torch.arange(5)[None, None, :] < m[:, None, None])
    assert Cg.grad[~mask].abs().max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_divergence_values_and_grads_match_naive(backend):
    gen = torch.Generator().manual_seed(3)
    x, y, xl, yl = padded_batch(gen)
    x[1, 3:] = float("nan")  # NaN in padding must neither reach values nor gradients
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    div = soft_dtw_divergence(xg, yg, xl, yl, gamma=0.1, backend=backend)
    div.sum().backward()
    for b in range(3):
        xb = x[b, : xl[b]].clone().requires_grad_()
        yb = y[b, : yl[b]].clone().requires_grad_()
        ref = naive_divergence(xb, yb, 0.1)
        ref.backward()
        assert torch.allclose(div[b], ref, rtol=1e-5, atol=1e-12)
        assert torch.allclose(xg.grad[b, : xl[b]], xb.grad, rtol=1e-5, atol=1e-10)
        assert torch.allclose(yg.grad[b, : yl[b]], yb.grad, rtol=1e-5, atol=1e-10)
        assert xg.grad[b, xl[b]:].abs().sum() == 0 and yg.grad[b, yl[b]:].abs().sum() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_batch_equals_each_pair_alone_and_batch_sizes_agree(backend):
    gen = torch.Generator().manual_seed(4)
    x, y, xl, yl = padded_batch(gen, dtype=torch.float32)
    x = torch.nn.functional.normalize(x, dim=-1)
    y = torch.nn.functional.normalize(y, dim=-1)
    batch = soft_dtw_divergence(x, y, xl, yl, backend=backend)
    for b in range(3):
        alone = soft_dtw_divergence(x[b : b + 1, : xl[b]], y[b : b + 1, : yl[b]], backend=backend)
        one = soft_dtw_divergence(x[b : b + 1], y[b : b + 1], xl[b : b + 1], yl[b : b + 1], backend=backend)
        assert torch.allclose(batch[b], alone[0], rtol=1e-5, atol=1e-7)
        assert torch.allclose(batch[b], one[0], rtol=1e-5, atol=1e-7)


def test_backends_agree_and_float32_matches_float64_on_normalised_features():
    gen = torch.Generator().manual_seed(5)
    x = torch.nn.functional.normalize(torch.randn(2, 40, 16, generator=gen), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(2, 33, 16, generator=gen), dim=-1)
    xl, yl = torch.tensor([40, 25]), torch.tensor([30, 33])
    ref = soft_dtw_divergence(x.double(), y.double(), xl, yl, backend="torch")
    for backend in BACKENDS:
        got = soft_dtw_divergence(x, y, xl, yl, backend=backend)
        assert got.dtype == torch.float32
        assert torch.allclose(got.double(), ref, rtol=1e-4, atol=1e-6)
        got64 = soft_dtw_divergence(x, y, xl, yl, dp_dtype=torch.float64, backend=backend)
        assert got64.dtype == torch.float64 and torch.allclose(got64, ref, rtol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    xl, yl = torch.tensor([4, 3]), torch.tensor([2, 5])
    assert torch.autograd.gradcheck(
        lambda a, b: soft_dtw_divergence(a, b, xl, yl, gamma=0.5, backend=backend), (x, y), eps=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_gamma_approaches_hard_dtw(backend):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 9, 3, generator=gen, dtype=torch.float64)
    y = torch.randn(1, 7, 3, generator=gen, dtype=torch.float64)
    C = ((x[0, :, None] - y[0, None]) ** 2).sum(-1).numpy()
    D = np.full((10, 8), np.inf)
    D[0, 0] = 0
    for i, j in itertools.product(range(1, 10), range(1, 8)):
        D[i, j] = C[i - 1, j - 1] + min(D[i - 1, j - 1], D[i - 1, j], D[i, j - 1])
    gaps = [abs(soft_dtw(x, y, gamma=g, backend=backend).item() - D[9, 7]) for g in (1.0, 0.1, 1e-3)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-2


def test_divergence_of_a_sequence_with_itself_is_zero_and_unnormalised_scale():
    gen = torch.Generator().manual_seed(8)
    x, y, xl, yl = padded_batch(gen)
    assert torch.allclose(soft_dtw_divergence(x, x, xl, xl), torch.zeros(3, dtype=torch.float64), atol=1e-10)
    raw = soft_dtw_divergence(x, y, xl, yl, normalize=False)
    assert torch.allclose(soft_dtw_divergence(x, y, xl, yl), raw / (xl + yl), rtol=1e-12)


def test_package_level_export():
    import score_upstream

    assert score_upstream.soft_dtw_divergence is soft_dtw_divergence


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x_lengths=torch.tensor([0, 2, 2])), "x_lengths must lie in"),
        (dict(y_lengths=torch.tensor([2, 9, 2])), "y_lengths must lie in"),
        (dict(x_lengths=torch.tensor([1.0, 2.0, 2.0])), "integer tensor"),
        (dict(gamma=0.0), "gamma must be > 0"),
        (dict(backend="cuda-magic"), "backend 'cuda-magic' is unknown"),
    ],
)
def test_bad_input_fails_with_a_clear_message(kwargs, match):
    gen = torch.Generator().manual_seed(9)
    x, y, _, _ = padded_batch(gen)
    with pytest.raises(SoftDTWError, match=match):
        soft_dtw_divergence(x, y, **kwargs)
    with pytest.raises(SoftDTWError, match="share batch size"):
        soft_dtw_divergence(x, y[:2])


def test_divergence_costs_equal_three_pairwise_costs_with_the_same_gradients():
    from score_upstream.sdtw.divergence import divergence_costs, pairwise_sq_euclidean

    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 9, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 9, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    G = torch.randn(9, 9, 9, generator=gen, dtype=torch.float64)  # not symmetric
    got = divergence_costs(x, y)
    want = torch.cat((pairwise_sq_euclidean(x, y), pairwise_sq_euclidean(x, x), pairwise_sq_euclidean(y, y)))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g_got = torch.autograd.grad((got * G).sum(), (x, y))
    g_want = torch.autograd.grad((want * G).sum(), (x, y))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
