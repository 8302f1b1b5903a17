"""CPU cost of the processes a SUPERB evaluation starts: importing s3prl.hub, and hidden states that several
processes need (downstream seeds, test runs, QbE dev and eval) with and without the shared disk cache.

Run::

    python benchmarks/bench_eval_overheads.py                     # shipped small HuBERT, 60 utterances, 3 processes
    python benchmarks/bench_eval_overheads.py --ckpt exp/hubert_base.pt --utterances 20

Every measurement is the CPU time (user + system) of fresh child processes on one thread, median of
``--repeats``, so the two columns of a row come from the same run on the same machine:

- ``import s3prl.hub``: as our commands do it (``score_upstream.register()``: the compatibility layer defers
  the ``hf_hubert`` / ``hf_wav2vec2`` experts, and with them transformers) vs eager (those experts imported
  first, as s3prl alone does);
- hidden states of the same utterances in ``--processes`` processes one after the other (batch 1, eval,
  no grad, as ``score-qbe`` and s3prl's evaluation call the upstream): each computing them vs sharing them
  through ``SCORE_UPSTREAM_CACHE_DIR``. The child's start-up is included in both columns.
Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CKPT = REPO / "score_upstream" / "pretrained" / "hubert_small_synth.pt"

IMPORT_HUB = "import score_upstream; score_upstream.register(); import s3prl.hub"
IMPORT_HUB_EAGER = ("import s3prl.upstream.hf_hubert.expert, s3prl.upstream.hf_wav2vec2.expert; "
                    "import score_upstream; score_upstream.register(); import s3prl.hub")  # nothing left to defer
EXTRACT = """
import sys, torch
from score_upstream.s3prl.upstream.expert import UpstreamExpert
ckpt, n = sys.argv[1], int(sys.argv[2])
gen = torch.Generator().manual_seed(0)
wavs = [0.1 * torch.randn(int(16000 * (2 + 4 * torch.rand(1, generator=gen))), generator=gen) for _ in range(n)]
up = UpstreamExpert(ckpt, cache_mb=0).eval()
with torch.no_grad():
    for w in wavs:
        up([w])
"""


def child_cpu(args: list[str], env: dict) -> float:
    """User + system seconds of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", default=str(DEFAULT_CKPT), help="HuBERT or WavLM checkpoint [shipped small HuBERT]")
    p.add_argument("--utterances", type=int, default=60, help="utterances of 2-6 s of noise")
    p.add_argument("--processes", type=int, default=3, help="processes that need the same hidden states")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SCORE_UPSTREAM_CACHE_MB": "0"}
    env.pop("SCORE_UPSTREAM_CACHE_DIR", None)
    py = sys.executable

    def median(fn) -> float:
        return statistics.median(fn() for _ in range(args.repeats))

    rows = []
    eager = median(lambda: child_cpu([py, "-c", IMPORT_HUB_EAGER], env))
    ours = median(lambda: child_cpu([py, "-c", IMPORT_HUB], env))
    rows.append(("import s3prl.hub, 1 process", eager, ours))

    extract = [py, "-c", EXTRACT, args.ckpt, str(args.utterances)]
    alone = median(lambda: sum(child_cpu(extract, env) for _ in range(args.processes)))

    def shared() -> float:
        with tempfile.TemporaryDirectory() as d:
            return sum(child_cpu(extract, {**env, "SCORE_UPSTREAM_CACHE_DIR": d}) for _ in range(args.processes))

    rows.append((f"hidden states of {args.utterances} utterances, {args.processes} processes", alone, median(shared)))

    print(f"CPU seconds (user + system), median of {args.repeats}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS=1; checkpoint {args.ckpt}\n")
    print("| work | without (s3prl's way / each process computes) | ours | ratio |")
    print("|---|---|---|---|")
    for name, before, after in rows:
        print(f"| {name} | {before:.2f} | {after:.2f} | {before / after:.2f}x |")


if __name__ == "__main__":
    main()
