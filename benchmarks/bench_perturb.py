"""Pitch-shift throughput: the reference recipe's torchaudio PitchShift vs our two paths, per core.

Run::

    python benchmarks/bench_perturb.py                    # 4 s clips, 5 repeats, 1 thread
    python benchmarks/bench_perturb.py --seconds 10 --repeats 3

Prints one table: audio-seconds processed per second of one CPU core (``torch.set_num_threads(1)``),
for +2 and -2 semitones, plus the speed perturbation alone. The first call of each setting (filter
construction) is timed separately as "setup". Rows: torchaudio's ``PitchShift`` transform as the
reference recipe holds it (dense resampling kernel, built once), our ``reference`` method (the same
numbers, sparse kernel) and our ``fast`` method; the last columns compare each with torchaudio's output.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from score_upstream.augment.perturb import log_mel_distance, pitch_shift, speed_perturb


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=4.0, help="clip length in seconds")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sr = 16000
    wav = torch.randn(int(args.seconds * sr), generator=torch.Generator().manual_seed(0)) * 0.1
    print(f"# perturbation throughput, one CPU thread, {args.seconds:g} s clip, median of {args.repeats}, "
          f"torch {torch.__version__}")
    print("| operation | setup s | audio-s per s | ms per audio-s | x torchaudio | max abs diff vs torchaudio "
          "| log-mel dB vs torchaudio |")
    print("|---|---|---|---|---|---|---|")
    import torchaudio

    for semis in (2.0, -2.0):
        transform = torchaudio.transforms.PitchShift(sr, semis, n_fft=512, hop_length=128)
        rows = [("torchaudio PitchShift (reference recipe)", lambda: transform(wav)),
                ("ours, reference", lambda: pitch_shift(wav, semis, sr, "reference")),
                ("ours, fast", lambda: pitch_shift(wav, semis, sr, "fast"))]
        ref_out, ref_t = None, None
        for name, fn in rows:
            with torch.no_grad():
                setup, out = _timed(fn)
                t = statistics.median(_timed(fn)[0] for _ in range(args.repeats))
            if ref_out is None:
                ref_out, ref_t, cmp = out, t, ("1.0", "-", "-")
            else:
                cmp = (f"{ref_t / t:.1f}", f"{(out - ref_out).abs().max().item():.1e}",
                       f"{log_mel_distance(out, ref_out, sr):.2f}")
            print(f"| pitch {semis:+g} st, {name} | {setup:.3f} | {args.seconds / t:.1f} | {1000 * t / args.seconds:.2f} "
                  f"| {' | '.join(cmp)} |", flush=True)
    for f in (0.9, 1.1):
        setup, _ = _timed(lambda: speed_perturb(wav, f, sr))
        t = statistics.median(_timed(lambda: speed_perturb(wav, f, sr))[0] for _ in range(args.repeats))
        print(f"| speed x{f} | {setup:.3f} | {args.seconds / t:.1f} | {1000 * t / args.seconds:.2f} | - | - | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
