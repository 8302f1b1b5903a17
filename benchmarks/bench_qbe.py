"""QbE search time: our batched search vs s3prl's ``quesst14_dtw`` path (dtw-python per pair).

Run::

    python benchmarks/bench_qbe.py                       # 50 queries x 200 documents, D=768
    python benchmarks/bench_qbe.py --queries 10 --docs 40 --s3prl-queries 2   # quick
    SCORE_QBE_BACKEND=torch python benchmarks/bench_qbe.py   # our torch-only path
    git worktree add /tmp/base 70c7b3d && python benchmarks/bench_qbe.py --baseline-src /tmp/base  # old beside new

On CPU ours uses the compiled kernel of :mod:`score_upstream.qbe.cpu` when it builds (then the
torch-only path is timed too, for comparison); the table names the backend of each row.

Random features with realistic shapes (queries 30-100 frames, documents 100-500 frames). s3prl's path
is s3prl's own ``DownstreamExpert.log_records`` (its process pool over all CPUs, as its config does)
timed on the first ``--s3prl-queries`` queries against all documents and extrapolated linearly in the
number of queries (each pair costs the same on average; the table says so). Its XML is compared with
ours on that same subset; the unrounded scores of one query are compared through s3prl's ``match``.
Every row also reads as "x floor": its time over the **floor** measured in the same run, the bare
float32 GEMM of the same shapes (all query frames packed, no padding, times all document frames
packed, block by block into one reused buffer: the fastest of the blockings in ``FLOOR_BLOCKS``)
plus one read+write sweep over the distances: what any implementation of this search must pay on
this machine. ``--baseline-src PATH``
adds the rows of the checkout at PATH (see ``benchmarks/baseline.py``), timed in the same run on the
same features. Times are the minimum of ``--repeats`` rounds, each round running every row once. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import torch

from baseline import commit_of, import_baseline

from score_upstream.qbe import search as qbe
from score_upstream.qbe import quesst
from score_upstream.qbe.stdlist import read_stdlist


# The clock of every timing: wall time, or with --cpu-time this process's CPU time (all threads), which on a
# shared machine counts the work done instead of the time spent waiting for a core (use it with --threads 1:
# with more, idle threads spinning at a barrier count too).
_clock = time.perf_counter


def _features(gen, count, lo, hi, dim):
    return [torch.randn(int(torch.randint(lo, hi + 1, (1,), generator=gen)), dim, generator=gen) for _ in range(count)]


def _timed(fn, sync=None, repeats=1):
    """(minimum seconds over ``repeats`` calls, the last output)."""
    best = float("inf")
    for _ in range(repeats):
        start = _clock()
        out = fn()
        if sync:
            sync()
        best = min(best, _clock() - start)
    return best, out


def _floor(queries, docs, device, rows, cols):
    """The floor's work: the bare GEMM of all query frames x all document frames, packed, in blocks of
    ``rows`` x ``cols`` (``None``: all) into one reused buffer, and one read+write sweep of each block.
    Returns a function doing it once."""
    unit = lambda feats: torch.nn.functional.normalize(torch.cat(feats), dim=1).to(device)  # noqa: E731
    q, d = unit(queries), unit(docs)
    rows, cols = min(rows or len(q), len(q)), min(cols or len(d), len(d))
    buf = torch.empty(rows * cols, device=device)

    def run():
        for c0 in range(0, len(d), cols):
            d_t = d[c0 : c0 + cols].T
            for r0 in range(0, len(q), rows):
                out = buf[: min(rows, len(q) - r0) * d_t.shape[1]].view(-1, d_t.shape[1])
                torch.mm(q[r0 : r0 + rows], d_t, out=out)
                out.neg_()
    return run


# Blockings tried for the floor (rows x columns of the distance matrix per GEMM; None = all): whole rows
# of 512 query frames, blocks that stay in a core's L2, blocks of the search's tile size; the floor is
# the fastest.
FLOOR_BLOCKS = ((512, None), (256, 2048), (1024, 4096))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=50)
    p.add_argument("--docs", type=int, default=200)
    p.add_argument("--query-frames", default="30,100", help="min,max query length")
    p.add_argument("--doc-frames", default="100,500", help="min,max document length")
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--s3prl-queries", type=int, default=4, help="queries timed on s3prl's path (then extrapolated)")
    p.add_argument("--workers", type=int, default=None, help="s3prl's dtw-python processes (default: all CPUs)")
    p.add_argument("--batch-docs", type=int, default=32)
    p.add_argument("--batch-queries", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2, help="runs per row of ours and the floor; the minimum is shown")
    p.add_argument("--baseline-src", default=None, help="a checkout of another commit whose rows are timed beside ours")
    p.add_argument("--threads", type=int, default=None, help="torch and kernel threads (default: torch's, all cores)")
    p.add_argument("--cpu-time", action="store_true",
                   help="time with this process's CPU time instead of wall time (shared machines; with --threads 1)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    global _clock
    if args.cpu_time:
        _clock = time.process_time
    if args.threads:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(args.seed)
    qlo, qhi = (int(x) for x in args.query_frames.split(","))
    dlo, dhi = (int(x) for x in args.doc_frames.split(","))
    queries = _features(gen, args.queries, qlo, qhi, args.dim)
    docs = _features(gen, args.docs, dlo, dhi, args.dim)
    qnames = [f"q{k:04d}" for k in range(len(queries))]
    dnames = [f"d{k:05d}" for k in range(len(docs))]
    sub = max(1, min(args.s3prl_queries, len(queries)))
    cells = sum(len(q) for q in queries) * sum(len(d) for d in docs)
    kw = {"batch_docs": args.batch_docs, "batch_queries": args.batch_queries}
    threads = f"{torch.get_num_threads()} threads"
    rows = []  # (implementation, resources, seconds, how, device of its floor)

    # Every case runs once per round, round after round, and keeps its fastest run: on a shared machine
    # each case then meets the same quiet and busy spells as the floor it is divided by.
    cases = []  # (implementation, resources, fn, sync, device); floors first, "floor <device> <blocking>"
    gpu = torch.cuda.is_available()
    devices = [("cpu", threads, None)] + ([("cuda", torch.cuda.get_device_name(), torch.cuda.synchronize)] if gpu else [])
    for dev, res, sync in devices:
        for r, c in FLOOR_BLOCKS:
            cases.append((f"floor {dev} {r} x {c or 'all'}", res, _floor(queries, docs, dev, r, c), sync, dev))
    impls = [("ours", qbe)]
    if args.baseline_src:
        (base,) = import_baseline(args.baseline_src, "score_upstream.qbe.search")
        impls.insert(0, (f"baseline {commit_of(args.baseline_src)}", base))
    for who, mod in impls:
        backend = mod.resolve_backend("cpu")
        if backend == "cpp" and os.environ.get("SCORE_QBE_BACKEND", "auto") == "auto":
            cases.append((f"{who}, torch GEMM + torch DP, CPU float32", threads,
                          lambda mod=mod: mod.qbe_scores(queries, docs, backend="torch", **kw), None, "cpu"))
        label = "torch GEMM + C++ fused min-max/DP" if backend == "cpp" else "torch GEMM + torch DP"
        cases.append((f"{who}, {label}, CPU float32 (backend {backend})", threads,
                      lambda mod=mod: mod.qbe_scores(queries, docs, **kw), None, "cpu"))
        if gpu:
            mod.qbe_scores(queries[:2], docs[:4], device="cuda")  # warm-up
            cases.append((f"{who}, torch GPU float32", torch.cuda.get_device_name(),
                          lambda mod=mod: mod.qbe_scores(queries, docs, device="cuda", **kw), torch.cuda.synchronize, "cuda"))
    best, outputs = {}, {}
    for _ in range(max(1, args.repeats)):
        for name, _res, fn, sync, _dev in cases:
            t, outputs[name] = _timed(fn, sync)
            best[name] = min(best.get(name, float("inf")), t)
    scores = {name.split(",")[0]: out for name, out in outputs.items() if "C++" in name or ("torch DP" in name and "backend torch" in name)}
    rows, floors = [], {}  # rows: (implementation, resources, seconds, how, device of its floor)
    for dev, res, _ in devices:
        t_floor, blocks = min((best[n], n.split(" ", 2)[2]) for n, *_ in cases if n.startswith(f"floor {dev} "))
        floors[dev] = t_floor
        what = "floor: bare float32 GEMM, packed, + one read/write sweep" if dev == "cpu" else "floor on the GPU (as above)"
        rows.append((what, res, t_floor, f"measured, blocks {blocks}", dev))
    t_floor = floors["cpu"]
    rows += [(n, res, best[n], "measured", dev) for n, res, _fn, _sync, dev in cases if not n.startswith("floor ")]

    with tempfile.TemporaryDirectory() as tmp:
        workers = args.workers or os.cpu_count()
        if args.cpu_time:  # s3prl's work runs in child processes: count theirs
            start = sum(os.times()[:4])
            xml = quesst.run_s3prl_expert(queries[:sub], docs, qnames[:sub], dnames, tmp, workers)
            t_sub = sum(os.times()[:4]) - start
        else:
            t_sub, xml = _timed(lambda: quesst.run_s3prl_expert(queries[:sub], docs, qnames[:sub], dnames, tmp, workers))
        theirs = read_stdlist(xml).as_dict()
    t_s3prl = t_sub * len(queries) / sub
    how = "measured" if sub == len(queries) else f"extrapolated from {sub} queries ({t_sub:.1f} s)"
    rows.append(("s3prl quesst14_dtw (dtw-python per pair)", f"{workers} processes", t_s3prl, how, "cpu"))

    ours_sub = qbe.qbe_scores(queries[:sub], docs, **kw)
    diff_xml = max(abs(ours_sub[a, b].item() - theirs[q][d][0]) for a, q in enumerate(qnames[:sub]) for b, d in enumerate(dnames))
    one_q = [queries[0], queries[1]] if sub >= 2 else queries[:1]
    diff_raw = (qbe.qbe_scores(one_q, docs, **kw) - quesst.s3prl_qbe_scores(one_q, docs)).abs().max().item()

    print(f"QbE search, {len(queries)} queries ({qlo}-{qhi} frames) x {len(docs)} documents ({dlo}-{dhi} frames), "
          f"D={args.dim}, {cells / 1e6:.0f} M distance cells, {2 * args.dim * cells / 1e9:.0f} GFLOP of GEMM; "
          f"times: minimum of {args.repeats} rounds, {'CPU time' if args.cpu_time else 'wall time'}")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"torch {torch.__version__}\n")
    print("| implementation | resources | time (s) | x floor | speed-up vs s3prl | how |")
    print("|---|---|---:|---:|---:|---|")
    for name, res, t, how_, dev in rows:
        print(f"| {name} | {res} | {t:.2f} | {t / floors[dev]:.2f} | {t_s3prl / t:.1f}x | {how_} |")
    print(f"\nfloor: {2 * args.dim * cells / t_floor / 1e9:.0f} GFLOP/s on the CPU; "
          f"max |ours - s3prl| on the {sub}-query subset: {diff_xml:.2e} in benchmark.stdlist.xml (s3prl writes 4 decimals); "
          f"{diff_raw:.2e} unrounded (queries 0-{len(one_q) - 1}, s3prl's match per pair)")
    for who in scores:
        if who != "ours":
            print(f"max |ours - {who}| over all scores: {np.abs((scores['ours'] - scores[who]).numpy()).max():.2e}")


if __name__ == "__main__":
    main()
