"""CPU training steps with glibc's default allocator vs the tuned one (score_upstream.native.keep_freed_memory).

Runs the same short ``score-pretrain`` twice in one go, in fresh processes that differ only in
``SCORE_MALLOC`` (``default``: glibc as it is; unset: the entry point tunes it), and prints one table:
seconds per update, minor page faults per update and the share of CPU time spent in the kernel::

    python benchmarks/bench_malloc.py [--config recipes/pretrain/small_v2_iter1.yaml] [--data data/pretrain]
                                      [--updates 40] [--threads 2]

Without ``--data`` a tiny synthetic corpus is made first (``score-synth --size tiny``, ~1 min). The labels
(k-means) are computed once and shared by both runs; only the updates are timed (``train_log.csv``'s
``wall_s`` between the first and the last logged update).
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(config: str, data: Path, out: Path, updates: int, threads: int, malloc: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("SCORE_MALLOC", None)
    if malloc:
        env["SCORE_MALLOC"] = malloc
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [sys.executable, "-m", "score_upstream.pretrain.trainer", config, "--data", str(data), "--out", str(out),
           f"optim.total_steps={updates}", "optim.warmup_steps=0", "log_every=1", f"valid_every={10 * updates}", f"save_every={10 * updates}",
           "progress=false"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    first, last = rows[0], rows[-1]
    steps = int(last["step"]) - int(first["step"])
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"s_per_update": (float(last["wall_s"]) - float(first["wall_s"])) / steps,
            "faults_per_update": (after.ru_minflt - before.ru_minflt) / updates,
            "kernel_share": system / (user + system)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="recipes/pretrain/small_v2_iter1.yaml")
    ap.add_argument("--data", type=Path, help="pre-training corpus (default: a tiny synthetic one, made here)")
    ap.add_argument("--updates", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_malloc_"))
    try:
        data = args.data
        if data is None:
            data = work / "data"
            subprocess.run([sys.executable, "-m", "score_upstream.synth.cli", "--out", str(data), "--size", "tiny"],
                           check=True, capture_output=True, cwd=REPO)
        # one labelling run; both timed runs start from its labels
        first = work / "labels"
        _run(args.config, data, first, 2, args.threads, None)
        results = {}
        for name, malloc in (("glibc default", "default"), ("tuned (keep_freed_memory)", None)):
            out = work / name.split()[0]
            out.mkdir()
            shutil.copy(first / "labels.pt", out / "labels.pt")
            results[name] = _run(args.config, data, out, args.updates, args.threads, malloc)
        base = results["glibc default"]["s_per_update"]
        print(f"score-pretrain {args.config}, {args.updates} updates, {args.threads} threads "
              f"(data: {args.data or 'tiny synthetic corpus'})")
        print("| allocator | s / update | speed-up | minor faults / update | kernel share of CPU time |")
        print("|---|---|---|---|---|")
        for name, r in results.items():
            print(f"| {name} | {r['s_per_update']:.3f} | {base / r['s_per_update']:.2f}x | "
                  f"{r['faults_per_update']:,.0f} | {100 * r['kernel_share']:.0f} % |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
