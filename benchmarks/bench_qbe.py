"""QbE search time: our batched search vs s3prl's ``quesst14_dtw`` path (dtw-python per pair).

Run::

    python benchmarks/bench_qbe.py                       # 50 queries x 200 documents, D=768
    python benchmarks/bench_qbe.py --queries 10 --docs 40 --s3prl-queries 2   # quick
    SCORE_QBE_BACKEND=torch python benchmarks/bench_qbe.py   # our torch-only path

On CPU ours uses the compiled kernel of :mod:`score_upstream.qbe.cpu` when it builds (then the
torch-only path is timed too, for comparison); the table names the backend of each row.

Random features with realistic shapes (queries 30-100 frames, documents 100-500 frames). s3prl's path
is s3prl's own ``DownstreamExpert.log_records`` (its process pool over all CPUs, as its config does)
timed on the first ``--s3prl-queries`` queries against all documents and extrapolated linearly in the
number of queries (each pair costs the same on average; the table says so). Its XML is compared with
ours on that same subset; the unrounded scores of one query are compared through s3prl's ``match``.
Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch

from score_upstream.qbe import search as qbe
from score_upstream.qbe import quesst
from score_upstream.qbe.stdlist import read_stdlist


def _features(gen, count, lo, hi, dim):
    return [torch.randn(int(torch.randint(lo, hi + 1, (1,), generator=gen)), dim, generator=gen) for _ in range(count)]


def _timed(fn, sync=None):
    start = time.perf_counter()
    out = fn()
    if sync:
        sync()
    return time.perf_counter() - start, out


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
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

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

    rows = []
    backend = qbe.resolve_backend("cpu")
    if backend == "cpp" and os.environ.get("SCORE_QBE_BACKEND", "auto") == "auto":
        t_torch, _ = _timed(lambda: qbe.qbe_scores(queries, docs, backend="torch", **kw))
        rows.append(("ours, torch GEMM + torch DP, CPU float32", f"{torch.get_num_threads()} threads", t_torch, "measured"))
    t_cpu, _ = _timed(lambda: qbe.qbe_scores(queries, docs, **kw))
    label = "torch GEMM + C++ fused min-max/DP" if backend == "cpp" else "torch GEMM + torch DP"
    rows.append((f"ours, {label}, CPU float32 (backend {backend})", f"{torch.get_num_threads()} threads", t_cpu, "measured"))
    if torch.cuda.is_available():
        qbe.qbe_scores(queries[:2], docs[:4], device="cuda")  # warm-up
        t_gpu, _ = _timed(lambda: qbe.qbe_scores(queries, docs, device="cuda", **kw), torch.cuda.synchronize)
        rows.append(("ours, torch GPU float32", torch.cuda.get_device_name(), t_gpu, "measured"))

    with tempfile.TemporaryDirectory() as tmp:
        workers = args.workers or os.cpu_count()
        t_sub, xml = _timed(lambda: quesst.run_s3prl_expert(queries[:sub], docs, qnames[:sub], dnames, tmp, workers))
        theirs = read_stdlist(xml).as_dict()
    t_s3prl = t_sub * len(queries) / sub
    how = "measured" if sub == len(queries) else f"extrapolated from {sub} queries ({t_sub:.1f} s)"
    rows.append(("s3prl quesst14_dtw (dtw-python per pair)", f"{workers} processes", t_s3prl, how))

    ours_sub = qbe.qbe_scores(queries[:sub], docs, **kw)
    diff_xml = max(abs(ours_sub[a, b].item() - theirs[q][d][0]) for a, q in enumerate(qnames[:sub]) for b, d in enumerate(dnames))
    one_q = [queries[0], queries[1]] if sub >= 2 else queries[:1]
    diff_raw = (qbe.qbe_scores(one_q, docs, **kw) - quesst.s3prl_qbe_scores(one_q, docs)).abs().max().item()

    print(f"QbE search, {len(queries)} queries ({qlo}-{qhi} frames) x {len(docs)} documents ({dlo}-{dhi} frames), "
          f"D={args.dim}, {cells / 1e6:.0f} M distance cells")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, "
          f"torch {torch.__version__}\n")
    print("| implementation | resources | time (s) | speed-up vs s3prl | how |")
    print("|---|---|---:|---:|---|")
    for name, res, t, how_ in rows:
        print(f"| {name} | {res} | {t:.2f} | {t_s3prl / t:.1f}x | {how_} |")
    print(f"\nmax |ours - s3prl| on the {sub}-query subset: {diff_xml:.2e} in benchmark.stdlist.xml (s3prl writes 4 decimals); "
          f"{diff_raw:.2e} unrounded (queries 0-{len(one_q) - 1}, s3prl's match per pair)")


if __name__ == "__main__":
    main()
