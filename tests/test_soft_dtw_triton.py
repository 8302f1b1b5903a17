"""The persistent Triton soft-DTW kernel against a float64 reference and the other backends.

Without a GPU the kernels run in Triton's CPU interpreter: ``TRITON_INTERPRET=1`` is set while this
module's tests run (restored afterwards). Shapes are
tiny because the interpreter is slow. The ``gpu`` test compiles the kernels in a fresh process and
compares them with the torch path at a realistic size.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from score_upstream.sdtw import divergence as sd
from score_upstream.sdtw import cpu as soft_dtw_cpu
from sdtw_reference import naive_sdtw

OTHER_BACKENDS = ["torch"] + (["cpp"] if soft_dtw_cpu.load() is not None else [])


@pytest.fixture(scope="module")
def kernels():
    """:mod:`score_upstream.sdtw.triton_kernel` built for the interpreter (skips if that is impossible).

    ``TRITON_INTERPRET=1`` stays set while this module's tests run (triton reads it again when it imports
    its own submodules lazily) and is restored afterwards.
    """
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    import triton

    if torch.torch_version.TorchVersion(triton.__version__) < (3, 6):
        # Written for Triton 3.6 (torch 2.11); Triton 3.1 (torch 2.5) rejects it ("arange's arguments must
        # be of type tl.constexpr"). Training then falls back to the torch path after the self-check.
        pytest.skip(f"the soft-DTW kernel needs Triton >= 3.6, found {triton.__version__}")
    name = "score_upstream.sdtw.triton_kernel"
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        mod = importlib.import_module(name)
        if not mod.INTERPRET:
            pytest.skip("soft_dtw_triton was already imported with compiled kernels in this process")
        sd._triton_state.pop("module", None)  # let the dispatcher see the interpreted module
        yield mod
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def padded_costs(seed: int, dtype=torch.float64):
    """4 pairs padded to 17 x 13, lengths 3..17 incl. a length-1 side, junk in the padding."""
    gen = torch.Generator().manual_seed(seed)
    n, m = torch.tensor([17, 3, 1, 9]), torch.tensor([13, 11, 7, 1])
    C = torch.rand(4, 17, 13, generator=gen, dtype=torch.float64) * 2
    valid = (torch.arange(17)[None, :, None] < n[:, None, None]) & (torch.arange(13)[None, None, :] < m[:, None, None])
    C = torch.where(valid, C, torch.tensor(1e6, dtype=torch.float64))
    return C.to(dtype), n, m, valid


def run_kernel(kernels, C, n, m, gamma, grad_out):
    values, Q = kernels.forward(C, n, m, gamma)
    return values, kernels.backward(C, Q, n, m, gamma, grad_out)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_values_and_grads_match_naive_float64_reference(kernels, dtype, rtol):
    C, n, m, valid = padded_costs(0, dtype)
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=dtype)
    values, G = run_kernel(kernels, C, n, m, 0.1, w)
    assert values.dtype == dtype and G.shape == C.shape
    for p in range(4):
        Cp = C[p, : n[p], : m[p]].double().clone().requires_grad_()
        ref = naive_sdtw(Cp, 0.1)
        ref.backward()
        assert math.isclose(values[p].item(), ref.item(), rel_tol=rtol), (p, values[p].item(), ref.item())
        torch.testing.assert_close(G[p, : n[p], : m[p]].double(), w[p].double() * Cp.grad, rtol=rtol, atol=rtol * 1e-2)
    assert G[~valid].abs().max() == 0  # padding gets an exact zero gradient


def test_single_cell_pair_and_length_one_sides(kernels):
    gen = torch.Generator().manual_seed(1)
    C = torch.rand(3, 5, 4, generator=gen, dtype=torch.float64)
    n, m = torch.tensor([1, 1, 5]), torch.tensor([1, 4, 1])
    values, G = run_kernel(kernels, C, n, m, 0.5, torch.ones(3, dtype=torch.float64))
    assert values[0].item() == C[0, 0, 0].item()  # R[1,1] = C[1,1] + softmin(0, inf, inf)
    # A single row or column has exactly one path: the sum of its costs, gradient 1 on every cell.
    assert math.isclose(values[1].item(), C[1, 0, :4].sum().item(), rel_tol=1e-12)
    assert math.isclose(values[2].item(), C[2, :5, 0].sum().item(), rel_tol=1e-12)
    expected = torch.zeros_like(G)
    expected[0, 0, 0] = 1
    expected[1, 0, :4] = 1
    expected[2, :5, 0] = 1
    torch.testing.assert_close(G, expected, rtol=1e-12, atol=1e-12)


def test_chunked_diagonals_equal_one_block(kernels, monkeypatch):
    C, n, m, _ = padded_costs(2, torch.float32)
    w = torch.tensor([0.3, 1.0, -1.0, 2.0])
    whole = run_kernel(kernels, C, n, m, 0.1, w)
    monkeypatch.setattr(kernels, "MAX_BLOCK", 4)  # diagonals of up to 13 cells -> 4 chunks each
    assert kernels.launch_config(17, 13)[0] == 4
    chunked = run_kernel(kernels, C, n, m, 0.1, w)
    torch.testing.assert_close(chunked[0], whole[0], rtol=0, atol=0)
    torch.testing.assert_close(chunked[1], whole[1], rtol=0, atol=0)


@pytest.mark.parametrize("other", OTHER_BACKENDS)
def test_divergence_matches_other_backends_in_one_launch(kernels, other):
    gen = torch.Generator().manual_seed(3)
    x = torch.nn.functional.normalize(torch.randn(3, 14, 8, generator=gen), dim=-1)
    y = torch.nn.functional.normalize(torch.randn(3, 11, 8, generator=gen), dim=-1)
    xl, yl = torch.tensor([14, 5, 1]), torch.tensor([3, 11, 9])
    x[1, 5:] = float("nan")  # NaN in padding must reach neither values nor gradients

    def run(backend, dtype):
        xg, yg = x.to(dtype).requires_grad_(), y.to(dtype).requires_grad_()
        div = sd.soft_dtw_divergence(xg, yg, xl, yl, gamma=0.1, backend=backend)
        (div * torch.tensor([1.0, -0.5, 2.0], dtype=dtype)).sum().backward()
        return div.detach(), xg.grad, yg.grad

    ref = run(other, torch.float64)
    for got, want in zip(run("triton", torch.float64), ref):  # same algorithm in float64: agree to rounding
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    got32 = run("triton", torch.float32)
    for got, want in zip(got32, ref):  # float32 DP: 1e-5 relative to each tensor's scale
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    assert got32[1][1, 5:].abs().sum() == 0


def test_backend_selection(kernels, monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("SCORE_SOFTDTW_BACKEND", raising=False)
    assert sd.resolve_backend(cpu) in ("cpp", "torch")  # the interpreter is never picked automatically
    assert sd.resolve_backend(cpu, "triton") == "triton"
    monkeypatch.setenv("SCORE_SOFTDTW_BACKEND", "triton")
    assert sd.resolve_backend(cpu) == "triton"
    monkeypatch.setenv("SCORE_SOFTDTW_BACKEND", "torch")
    assert sd.resolve_backend(cpu) == "torch"
    assert sd.resolve_backend(cpu, "torch") == "torch"
    with pytest.raises(sd.SoftDTWError, match="backend 'triton' runs on CPU"):
        sd.resolve_backend(torch.device("meta"), "triton")


class _Faulty:
    """The interpreted kernels with one injected fault, to show the self-check notices it."""

    def __init__(self, kernels, fault):
        self.kernels, self.fault, self.INTERPRET = kernels, fault, False
        self.launch_config = kernels.launch_config

    def forward(self, C, n, m, gamma, block=None, num_warps=None):
        if self.fault == "raise":
            raise RuntimeError("PTX assembly failed")
        values, Q = self.kernels.forward(C, n, m, gamma, block=block, num_warps=num_warps)
        if self.fault == "values" and block is not None:  # only the chunked launch is wrong
            values = values * (1 + 1e-3)
        return values, Q

    def backward(self, C, Q, n, m, gamma, grad_out, block=None, num_warps=None):
        G = self.kernels.backward(C, Q, n, m, gamma, grad_out, block=block, num_warps=num_warps)
        if self.fault == "wide" and num_warps == 16:  # only the launch of the longest utterances is wrong
            G = G * (1 + (torch.rand_like(G) < 0.01) * 0.05)
        if self.fault == "padding":
            G[1, -1, -1] = 1e-7
        if self.fault == "race":  # a stale read: 2 % off on the strongest interior cell of one pair
            inner = G[0, 1:-1, 1:-1]
            i, j = divmod(int(inner.abs().argmax()), inner.shape[1])
            G[0, i + 1, j + 1] *= 1.02
        return G


def test_self_check_passes_for_the_kernels(kernels):
    ok, message = sd.triton_self_check(kernels, torch.device("cpu"))
    assert ok, message
    assert "agrees with the torch path" in message and "BLOCK 2048, 16 warps" in message
    assert kernels.launch_config(sd.LONG_FRAMES, sd.LONG_FRAMES - 7) == (2048, 16)  # what the real check launches


@pytest.mark.parametrize("fault, expected", [
    ("raise", "RuntimeError: PTX assembly failed"),
    ("values", "block=8"),
    ("padding", "non-zero gradient on padding"),
    ("race", "gradients"),
    ("wide", "BLOCK 2048 and 16 warps"),
])
def test_self_check_reports_each_fault(kernels, fault, expected):
    ok, message = sd.triton_self_check(_Faulty(kernels, fault), torch.device("cpu"))
    assert not ok and expected in message, message


def test_auto_uses_the_kernel_only_after_it_passes(kernels, monkeypatch, caplog):
    monkeypatch.setattr(sd, "_triton_state", {"module": kernels})
    monkeypatch.delenv("SCORE_SOFTDTW_SELFCHECK", raising=False)
    cpu = torch.device("cpu")
    assert sd._triton_checked(kernels, cpu)
    faulty = _Faulty(kernels, "race")
    monkeypatch.setattr(sd, "_triton_state", {"module": faulty})
    with caplog.at_level("WARNING", logger="score_upstream.sdtw.divergence"):
        assert not sd._triton_checked(faulty, cpu)
        assert not sd._triton_checked(faulty, cpu)  # checked once per device, then cached
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "using the torch path" in warnings[0]
    monkeypatch.setattr(sd, "_triton_state", {"module": faulty})
    monkeypatch.setenv("SCORE_SOFTDTW_SELFCHECK", "0")
    assert sd._triton_checked(faulty, cpu)  # trusted as is when the check is switched off


_GPU_SCRIPT = textwrap.dedent(
    """
    import torch
    from score_upstream.sdtw import divergence as sd
    ok, message = sd.triton_self_check(sd._triton_kernels(), torch.device("cuda"))
    assert ok, message
    assert sd.resolve_backend(torch.device("cuda")) == "triton", sd.resolve_backend(torch.device("cuda"))
    gen = torch.Generator().manual_seed(0)
    B, N, M, D = 4, 700, 650, 64
    x = torch.nn.functional.normalize(torch.randn(B, N, D, generator=gen), dim=-1).cuda()
    y = torch.nn.functional.normalize(torch.randn(B, M, D, generator=gen), dim=-1).cuda()
    xl, yl = torch.tensor([700, 612, 1, 350]).cuda(), torch.tensor([650, 1, 640, 300]).cuda()
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-9)):
        out = {}
        for backend in ("triton", "torch"):
            xg, yg = x.to(dtype).requires_grad_(), y.to(dtype).requires_grad_()
            div = sd.soft_dtw_divergence(xg, yg, xl, yl, backend=backend)
            div.sum().backward()
            out[backend] = (div.detach(), xg.grad, yg.grad)
        for a, b in zip(out["triton"], out["torch"]):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol * b.abs().max().item())
    print("ok")
    """
)


@pytest.mark.gpu
def test_compiled_kernel_matches_torch_path_on_cuda():
    pytest.importorskip("triton")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "SCORE_SOFTDTW_BACKEND")}
    proc = subprocess.run([sys.executable, "-c", _GPU_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
