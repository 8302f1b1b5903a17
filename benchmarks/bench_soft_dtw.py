"""Soft-DTW divergence forward+backward: ours vs the reference recipe's per-pair DP vs public libraries.

Run::

    python benchmarks/bench_soft_dtw.py                          # B=8, D=256, four sizes, CPU
    python benchmarks/bench_soft_dtw.py --sizes 200x180,800x720 --max-seconds 30 --device cpu

Prints one table: seconds per fwd+bwd of the whole batch (median of ``--repeats``), and each method's
time divided by ours. Methods:

* ``ours``: :func:`score_upstream.sdtw.divergence.soft_dtw_divergence`, backend chosen by device (3B pairs in
  one DP, analytic backward).
* ``ours-torch``: the same with the one-torch-step-per-anti-diagonal backend.
* ``ref-recipe``: the reference recipe's way, re-implemented: batch 1 (forward and backward one pair at a
  time, as gradient accumulation does), three soft-DTW calls per pair,
  cost as a broadcast ``(1, N, M, D)`` squared difference, forward and backward DP as per-pair loops in
  float64 (numba-jitted when numba is installed, else plain Python loops, which is far slower; the table
  says which), costs moved to NumPy and back.
* ``ref-dp+mm``: the same per-pair float64 loops, but with our matmul cost, isolating the DP.
* ``pysdtw`` / ``tslearn``: public libraries, if installed (benchmark extras only). pysdtw returns wrong
  gradients for padded pairs, so it is timed on whole (unpadded) pairs, one call per term.

Inputs are L2-normalised random features (SCORE's head output), lengths 90-100 % of the padded size.

Every size also gets its **floor**, measured in the same run: the bare float32 batched GEMMs of the
cost matrices (3 forward, 4 backward, as ``ours`` does them, into preallocated outputs) plus one
read+write sweep of the DP's cells for the forward and one for the backward. Each method's cell reads
``seconds (x floor)``. ``--breakdown`` splits ``ours`` into GEMMs and DP and sets the DP beside the
sweeps alone (and beside a numba DP fed the same cost matrices, when numba is installed).
``--baseline-src PATH`` adds ``baseline``: ``ours`` as the checkout at PATH holds it (see
``benchmarks/baseline.py``), timed in the same run on the same inputs::

    git worktree add /tmp/base 70c7b3d
    python benchmarks/bench_soft_dtw.py --sizes 800x720 --methods ours,ref-dp+mm --baseline-src /tmp/base
    python benchmarks/bench_soft_dtw.py --sizes 800x720 --breakdown --baseline-src /tmp/base

On CUDA ``ours`` is the persistent Triton kernel and ``ours-torch`` one launch per anti-diagonal; the
table adds ``bound``, the latency bound ``2 (N + M - 1)`` dependent steps (forward and backward) times
the per-step cost of this design measured by a probe kernel (same loop, ring buffer and barrier, trivial
arithmetic), and a second table for the issue-6 target: B=16, N=M=1000 (< 2 ms fwd+bwd on an H100),
with kernel-only forward/backward times per ``num_warps``::

    python benchmarks/bench_soft_dtw.py --device cuda --repeats 20
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import numpy as np
import torch

from baseline import commit_of, import_baseline
from score_upstream.sdtw.divergence import divergence_costs, pairwise_sq_euclidean, resolve_backend, soft_dtw_divergence

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only tables need no triton
    triton = None

try:
    import numba

    _jit = numba.njit(cache=False, fastmath=False)
except ImportError:  # the reference loops still run, as plain Python
    numba = None

    def _jit(f):
        return f


# The clock of every timing: wall time, or with --cpu-time this process's CPU time (all threads), which on a
# shared machine counts the work done instead of the time spent waiting for a core (use it with --threads 1:
# with more, idle threads spinning at a barrier count too).
_clock = time.perf_counter


@_jit
def _ref_forward(C, gamma):
    n, m = C.shape
    R = np.full((n + 2, m + 2), np.inf)
    R[0, 0] = 0.0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            r0 = -R[i - 1, j - 1] / gamma
            r1 = -R[i - 1, j] / gamma
            r2 = -R[i, j - 1] / gamma
            rmax = max(max(r0, r1), r2)
            s = np.exp(r0 - rmax) + np.exp(r1 - rmax) + np.exp(r2 - rmax)
            R[i, j] = C[i - 1, j - 1] - gamma * (np.log(s) + rmax)
    return R


@_jit
def _ref_backward(C_, R, gamma):
    n, m = C_.shape
    C = np.zeros((n + 2, m + 2))
    C[1 : n + 1, 1 : m + 1] = C_
    E = np.zeros((n + 2, m + 2))
    E[n + 1, m + 1] = 1.0
    R[:, m + 1] = -np.inf
    R[n + 1, :] = -np.inf
    R[n + 1, m + 1] = R[n, m]
    for j in range(m, 0, -1):
        for i in range(n, 0, -1):
            a = np.exp((R[i + 1, j] - R[i, j] - C[i + 1, j]) / gamma)
            b = np.exp((R[i, j + 1] - R[i, j] - C[i, j + 1]) / gamma)
            c = np.exp((R[i + 1, j + 1] - R[i, j] - C[i + 1, j + 1]) / gamma)
            E[i, j] = E[i + 1, j] * a + E[i, j + 1] * b + E[i + 1, j + 1] * c
    return E[1 : n + 1, 1 : m + 1]


class _RefSoftDTW(torch.autograd.Function):
    @staticmethod
    def forward(ctx, C, gamma):
        C64 = C.detach().double().numpy()
        R = _ref_forward(C64, gamma)
        ctx.save_for_backward(C)
        ctx.R, ctx.C64, ctx.gamma = R, C64, gamma
        return torch.tensor(R[-2, -2], dtype=C.dtype)

    @staticmethod
    def backward(ctx, g):
        E = _ref_backward(ctx.C64, ctx.R.copy(), ctx.gamma)
        return torch.from_numpy(E).to(g.dtype) * g, None


def _broadcast_cost(a, b):
    n, m, d = a.shape[1], b.shape[1], a.shape[2]
    return (a.unsqueeze(2).expand(-1, n, m, d) - b.unsqueeze(1).expand(-1, n, m, d)).pow(2).sum(3)


def _per_pair(x, y, xl, yl, pair_loss):
    """Forward and backward one pair at a time (batch 1 with gradient accumulation, as the reference
    recipe trains): only one pair's graph, e.g. its broadcast costs, is alive at once."""
    xl, yl = xl.tolist(), yl.tolist()
    for b in range(x.shape[0]):
        pair_loss(x[b : b + 1, : xl[b]], y[b : b + 1, : yl[b]], xl[b] + yl[b]).backward()


def _ref_divergence(x, y, xl, yl, gamma, cost):
    def pair_loss(xb, yb, norm):
        sd = lambda u, v: _RefSoftDTW.apply(cost(u, v)[0], gamma)  # noqa: E731
        return (sd(xb, yb) - 0.5 * (sd(xb, xb) + sd(yb, yb))) / norm

    _per_pair(x, y, xl, yl, pair_loss)


def _method_fns(device, baseline=None):
    """{name: fn(x, y, xl, yl, gamma)} each running the forward and the backward of the batch's loss.

    ``baseline``: another checkout's ``score_upstream.sdtw.divergence`` module, timed as ``baseline``.
    """
    fns = {
        "ours": lambda x, y, xl, yl, g: soft_dtw_divergence(x, y, xl, yl, g).sum().backward(),
        "ours-torch": lambda x, y, xl, yl, g: soft_dtw_divergence(x, y, xl, yl, g, backend="torch").sum().backward(),
    }
    if baseline is not None:
        fns["baseline"] = lambda x, y, xl, yl, g: baseline.soft_dtw_divergence(x, y, xl, yl, g).sum().backward()
    if device.type == "cpu":
        fns["ref-recipe"] = lambda x, y, xl, yl, g: _ref_divergence(x, y, xl, yl, g, _broadcast_cost)
        fns["ref-dp+mm"] = lambda x, y, xl, yl, g: _ref_divergence(x, y, xl, yl, g, pairwise_sq_euclidean)
    try:
        from pysdtw import SoftDTW

        sdtw = SoftDTW(gamma=0.1, use_cuda=device.type == "cuda")

        def _pysdtw(x, y, xl, yl, g):
            _per_pair(x, y, xl, yl, lambda xb, yb, norm: (sdtw(xb, yb) - 0.5 * (sdtw(xb, xb) + sdtw(yb, yb))).sum() / norm)

        fns["pysdtw"] = _pysdtw
    except Exception:  # optional extra, absent or broken
        pass
    try:
        from tslearn.metrics import SoftDTWLossPyTorch

        loss = SoftDTWLossPyTorch(gamma=0.1, normalize=True)

        def _tslearn(x, y, xl, yl, g):
            _per_pair(x, y, xl, yl, lambda xb, yb, norm: loss(xb, yb).sum() / norm)

        fns["tslearn"] = _tslearn
    except Exception:
        pass
    return fns


if triton is not None:

    @triton.jit
    def _step_probe(RING, STEPS, W, BLOCK: tl.constexpr):
        # The forward kernel's skeleton: dependent loads from the two previous ring slots, one store, a barrier.
        ring = RING + tl.program_id(0).to(tl.int64) * 3 * W
        k = tl.arange(0, BLOCK)
        cur_o, p1_o, p2_o = 2 * W, W, 0 * W
        for _ in range(0, STEPS):
            a = tl.load(ring + p2_o + k)
            b = tl.load(ring + p1_o + k)
            c = tl.load(ring + p1_o + k + 1)
            tl.store(ring + cur_o + k, tl.minimum(a, tl.minimum(b, c)) + 1.0)
            tl.debug_barrier()
            cur_o, p1_o, p2_o = p2_o, cur_o, p1_o


def _cuda_ms(fn, repeats: int) -> float:
    """Median milliseconds of ``fn()`` on the current CUDA stream (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _step_us(pairs: int, L: int, repeats: int = 5) -> float:
    """Per-step latency (us) of the persistent-kernel loop for ``pairs`` programs and diagonals up to ``L``."""
    from score_upstream.sdtw.triton_kernel import launch_config

    block, warps = launch_config(L, L)
    steps = 4000
    ring = torch.zeros(pairs, 3, block + 2, device="cuda")
    ms = _cuda_ms(lambda: _step_probe[(pairs,)](ring, steps, block + 2, BLOCK=block, num_warps=warps,
                                                  num_stages=1), repeats)
    return ms * 1e3 / steps


def _gpu_target_table(args) -> None:
    """The issue-6 GPU target: B=16, N=M=1000, D=args.dim, full lengths, fwd+bwd of the divergence."""
    from score_upstream.sdtw import triton_kernel as soft_dtw_triton

    B, N, D = 16, 1000, args.dim
    gen = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(B, N, D, generator=gen), dim=-1).cuda()
    y = torch.nn.functional.normalize(torch.randn(B, N, D, generator=gen), dim=-1).cuda()
    lengths = torch.full((B,), N, device="cuda")

    def step(backend):
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
        soft_dtw_divergence(xg, yg, lengths, lengths, args.gamma, backend=backend).sum().backward()

    step_us = _step_us(3 * B, N)
    bound = 2 * (2 * N - 1) * step_us / 1e3
    print(f"\n# GPU target (issue 6): divergence fwd+bwd, B={B}, N=M={N}, D={D}, {torch.cuda.get_device_name()}, "
          f"triton {triton.__version__}; target < 2 ms on an H100")
    print(f"# bound = 2 x {2 * N - 1} anti-diagonals x {step_us:.3f} us/step (probe kernel, {3 * B} programs)")
    print("| method | ms fwd+bwd | x bound |")
    print("|---|---|---|")
    for name, backend in (("ours (triton, persistent)", "triton"), ("ours-torch (launch per diagonal)", "torch")):
        ms = _cuda_ms(lambda: step(backend), args.repeats)
        print(f"| {name} | {ms:.3f} | {ms / bound:.1f} |", flush=True)
    print(f"| latency bound | {bound:.3f} | 1.0 |")

    def cost_only():  # the 3B cost matrices and their backward, which every backend pays on top of the DP
        divergence_costs(x.clone().requires_grad_(), y.clone().requires_grad_()).sum().backward()

    print(f"| cost matmul fwd+bwd alone (fp32, tf32={torch.backends.cuda.matmul.allow_tf32}) | "
          f"{_cuda_ms(cost_only, args.repeats):.3f} | - |")
    C = divergence_costs(x, y).contiguous()
    n = torch.full((3 * B,), N, device="cuda")
    print("\n# DP kernels alone on the 3B stacked cost matrices (ms, median)")
    print("| num_warps | forward ms | backward ms |")
    print("|---|---|---|")
    for warps in (4, 8, 16):
        values, Q = soft_dtw_triton.forward(C, n, n, args.gamma, num_warps=warps)
        fwd = _cuda_ms(lambda: soft_dtw_triton.forward(C, n, n, args.gamma, num_warps=warps), args.repeats)
        bwd = _cuda_ms(lambda: soft_dtw_triton.backward(C, Q, n, n, args.gamma, torch.ones_like(values),
                                                        num_warps=warps), args.repeats)
        print(f"| {warps} | {fwd:.3f} | {bwd:.3f} |", flush=True)


def _time_once(fn, x, y, xl, yl, gamma, device):
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = _clock()
    fn(xg, yg, xl, yl, gamma)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return _clock() - t0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, device, repeats):
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    _sync(device)
    runs = []
    for _ in range(max(1, repeats)):
        t0 = _clock()
        fn()
        _sync(device)
        runs.append(_clock() - t0)
    return statistics.median(runs)


def _floor(batch, L, dim, device, repeats):
    """(GEMMs s, sweeps s): the bare float32 batched GEMMs of the divergence's cost matrices and their
    backward (3 + 4 products of (B, L, D) x (B, D, L) or (B, L, L) x (B, L, D), outputs preallocated),
    and one read+write sweep of the 3B x L x L DP cells for the forward plus one for the backward."""
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(batch, L, dim, generator=gen).to(device)
    b = torch.randn(batch, L, dim, generator=gen).to(device)
    cost = torch.empty(3 * batch, L, L, device=device)
    grad = torch.empty(batch, L, dim, device=device)

    def gemms():
        for k in range(3):
            torch.bmm(a, b.transpose(1, 2), out=cost[k * batch : (k + 1) * batch])
        for k in range(4):
            torch.bmm(cost[k % 3 * batch : (k % 3 + 1) * batch], b, out=grad)

    other = torch.empty_like(cost)
    return _median_time(gemms, device, repeats), _median_time(lambda: (torch.neg(cost, out=other), torch.neg(other, out=cost)), device, repeats)


def _numba_dp(C, n, m, gamma):
    """The reference recipe's per-pair float64 DP (forward + backward) on each of the stacked cost matrices."""
    for p in range(C.shape[0]):
        c = C[p, : n[p], : m[p]]
        _ref_backward(c, _ref_forward(c, gamma), gamma)


def _breakdown(args, sizes, device, baseline=None) -> None:
    """Where ``ours`` spends its time: the 3B cost matrices (GEMM, forward + backward) vs the DP alone,
    each beside its floor; with ``baseline``, that checkout's DP on the same matrices; with numba, the
    reference recipe's DP on them."""
    from score_upstream.sdtw.divergence import soft_dtw_cost

    timed = lambda fn: _median_time(fn, device, args.repeats)  # noqa: E731
    with_numba = numba is not None and device.type == "cpu"
    print(f"# ours, time by part: B={args.batch}, D={args.dim}, full lengths, backend {resolve_backend(device)}, "
          f"median of {args.repeats}, {'CPU' if args.cpu_time else 'wall'} time; floor = bare GEMMs + one read/write sweep of the DP cells per pass; "
          f"numba {'%s' % numba.__version__ if numba else 'absent (no numba DP column)'}")
    cols = ["N x M", "floor GEMMs s", "cost GEMM fwd+bwd s", "GEMM x floor", "floor sweeps s", "DP fwd s", "DP bwd s",
            "DP fwd ns/cell", "DP bwd ns/cell", "DP x floor"]
    cols += ["baseline DP fwd+bwd s", "baseline DP / ours"] if baseline is not None else []
    cols += ["numba DP fwd+bwd s", "numba DP / ours"] if with_numba else []
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    gen = torch.Generator().manual_seed(0)
    for N, M in sizes:
        L = max(N, M)
        x = torch.nn.functional.normalize(torch.randn(args.batch, L, args.dim, generator=gen), dim=-1).to(device)
        y = torch.nn.functional.normalize(torch.randn(args.batch, L, args.dim, generator=gen), dim=-1).to(device)
        n = torch.tensor([N] * (2 * args.batch) + [M] * args.batch, device=device)
        m = torch.tensor([M] * args.batch + [N] * args.batch + [M] * args.batch, device=device)
        cells = int((n * m).sum())

        def gemm():
            divergence_costs(x.clone().requires_grad_(), y.clone().requires_grad_()).sum().backward()

        floor_gemm, floor_sweep = _floor(args.batch, L, args.dim, device, args.repeats)
        C = divergence_costs(x, y).contiguous()

        def dp_parts(cost_fn):
            fwd = timed(lambda: cost_fn(C, n, m, args.gamma))
            Cg = C.clone().requires_grad_()  # autograd.grad: no accumulation into Cg.grad in the timing
            total = cost_fn(Cg, n, m, args.gamma).sum()
            return fwd, timed(lambda: torch.autograd.grad(total, Cg, retain_graph=True))

        fwd, bwd = dp_parts(soft_dtw_cost)
        t_gemm = timed(gemm)
        row = [f"{N}x{M}", f"{floor_gemm:.3f}", f"{t_gemm:.3f}", f"{t_gemm / floor_gemm:.2f}", f"{floor_sweep:.4f}",
               f"{fwd:.3f}", f"{bwd:.3f}", f"{fwd / cells * 1e9:.2f}", f"{bwd / cells * 1e9:.2f}",
               f"{(fwd + bwd) / floor_sweep:.1f}"]
        if baseline is not None:
            b_fwd, b_bwd = dp_parts(baseline.soft_dtw_cost)
            row += [f"{b_fwd + b_bwd:.3f}", f"{(b_fwd + b_bwd) / (fwd + bwd):.2f}"]
        if with_numba:
            C64, nl, ml = C.double().numpy(), n.tolist(), m.tolist()
            t_numba = _median_time(lambda: _numba_dp(C64, nl, ml, args.gamma), device, min(args.repeats, 2))
            row += [f"{t_numba:.3f}", f"{t_numba / (fwd + bwd):.1f}"]
        print("| " + " | ".join(row) + " |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="200x180,400x360,800x720,1600x1500", help="NxM list, comma separated")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="a method whose single run exceeds this skips larger sizes")
    p.add_argument("--repeat-budget", type=float, default=10.0,
                   help="seconds per method and size: repeats stop once their sum exceeds it (at least one run)")
    p.add_argument("--max-ref-gb", type=float, default=12.0,
                   help="skip ref-recipe where one pair's three broadcast costs need more (GB)")
    p.add_argument("--methods", default="", help="comma-separated subset of methods (default: all available)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-target", action="store_true", help="on CUDA, skip the B=16, N=M=1000 target table")
    p.add_argument("--breakdown", action="store_true",
                   help="instead of the comparison: ours' time split into cost GEMM and DP forward/backward")
    p.add_argument("--baseline-src", default=None,
                   help="a checkout of another commit (git worktree add /tmp/base COMMIT) timed as 'baseline'")
    p.add_argument("--threads", type=int, default=None, help="torch and kernel threads (default: torch's, all cores)")
    p.add_argument("--cpu-time", action="store_true",
                   help="time with this process's CPU time instead of wall time (shared machines; with --threads 1)")
    args = p.parse_args(argv)
    global _clock
    if args.cpu_time:
        _clock = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
        assert all(len(s) == 2 and min(s) > 0 for s in sizes)
    except (ValueError, AssertionError):
        print(f"error: --sizes {args.sizes!r}: expected a comma-separated list like 200x180,800x720", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    baseline = None
    if args.baseline_src:
        (baseline,) = import_baseline(args.baseline_src, "score_upstream.sdtw.divergence")
        print(f"# baseline = ours at {commit_of(args.baseline_src)} ({args.baseline_src})")
    if args.breakdown:
        _breakdown(args, sizes, device, baseline)
        return 0
    fns = _method_fns(device, baseline)
    if args.methods:
        unknown = set(args.methods.split(",")) - set(fns)
        if unknown:
            print(f"error: --methods {sorted(unknown)} not available here; choose from {sorted(fns)}", file=sys.stderr)
            return 2
        fns = {k: v for k, v in fns.items() if k in args.methods.split(",")}
    gen = torch.Generator().manual_seed(0)
    print(f"# soft-DTW divergence fwd+bwd, B={args.batch}, D={args.dim}, gamma={args.gamma}, device={device}, "
          f"threads={torch.get_num_threads()}, backend(ours)={resolve_backend(device)}, torch {torch.__version__}, "
          f"numba {'%s' % numba.__version__ if numba else 'absent (reference loops in plain Python)'}")
    print(f"# {'CPU' if args.cpu_time else 'wall'} seconds per call (median of up to {args.repeats}, repeats stop after {args.repeat_budget:g} s per cell) "
          "and (x floor); 'x ours' = method time / ours time; '-' = skipped; floor = bare cost GEMMs + one "
          "read/write sweep of the DP cells per pass")
    with_bound = device.type == "cuda" and resolve_backend(device) == "triton"
    header = ["N x M", "floor s"] + [f"{k} s" for k in fns] + [f"{k} x ours" for k in fns if k != "ours"]
    header += ["bound s", "ours x bound"] if with_bound else []
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    dropped: set[str] = set()
    for N, M in sizes:
        x = torch.nn.functional.normalize(torch.randn(args.batch, N, args.dim, generator=gen), dim=-1).to(device)
        y = torch.nn.functional.normalize(torch.randn(args.batch, M, args.dim, generator=gen), dim=-1).to(device)
        xl = torch.randint(int(0.9 * N), N + 1, (args.batch,), generator=gen).to(device)
        yl = torch.randint(int(0.9 * M), M + 1, (args.batch,), generator=gen).to(device)
        # The floor before and after the methods, the faster kept: on a shared machine it then meets the
        # quiet spells the methods meet.
        floor = sum(_floor(args.batch, max(N, M), args.dim, device, args.repeats))
        times = {}
        for name, fn in fns.items():
            too_big = name == "ref-recipe" and 3 * N * M * args.dim * 4 / 1e9 > args.max_ref_gb
            if name in dropped or too_big:
                continue
            _time_once(fn, x[:1, : min(N, 8)], y[:1, : min(M, 8)], xl[:1].clamp(max=min(N, 8)),
                       yl[:1].clamp(max=min(M, 8)), args.gamma, device)  # warm-up: JIT / kernel build
            if device.type == "cuda":  # Triton compiles per block size: warm up at the timed size too
                _time_once(fn, x, y, xl, yl, args.gamma, device)
            runs = []
            for _ in range(args.repeats):
                runs.append(_time_once(fn, x, y, xl, yl, args.gamma, device))
                if runs[-1] > args.max_seconds:
                    dropped.add(name)
                if sum(runs) > args.repeat_budget:
                    break
            times[name] = statistics.median(runs)
        floor = min(floor, sum(_floor(args.batch, max(N, M), args.dim, device, args.repeats)))
        ours = times.get("ours", math.nan)
        cells = [f"{N}x{M}", f"{floor:.3f}"] + [f"{times[k]:.3f} ({times[k] / floor:.1f}x)" if k in times else "-" for k in fns]
        cells += [f"{times[k] / ours:.1f}" if k in times else "-" for k in fns if k != "ours"]
        if with_bound:
            bound = 2 * (N + M - 1) * _step_us(3 * args.batch, max(N, M)) / 1e6
            cells += [f"{bound:.4f}", f"{ours / bound:.1f}"]
        print("| " + " | ".join(cells) + " |", flush=True)
    if with_bound and not args.skip_target:
        _gpu_target_table(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
