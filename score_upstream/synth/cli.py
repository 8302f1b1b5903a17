"""``score-synth``: write synthetic LibriSpeech- and QUESST14-layout corpora with espeak-ng.

Usage::

    score-synth --out data/synth --size tiny            # seconds; what the tests use
    score-synth --out data/demo --size demo --seed 0 --jobs 2
    score-synth --out data/pretrain --size pretrain --seed 1 --disjoint-from demo:0   # no demo voice

Needs the ``espeak-ng`` program (``apt-get install espeak-ng``). Exit status 2 with a one-line message
on any error (espeak-ng missing, unknown size, output directory holding another corpus).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from score_upstream.synth import SIZES, SynthError, generate


def build_parser() -> argparse.ArgumentParser:
    from score_upstream.cliparse import ScoreArgumentParser

    p = ScoreArgumentParser(prog="score-synth", description=__doc__.split("\n\n")[0], examples=[
        "score-synth --out data/tiny --size tiny",
        "score-synth --out data/demo --size demo --seed 0 --overwrite"])
    p.add_argument("--out", required=True, help="output root: LibriSpeech/, quesst14Database/, lexicon, manifest")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    p.add_argument("--size", default="tiny", choices=sorted(SIZES), help="corpus size")
    p.add_argument("--jobs", type=int, default=None, help="parallel espeak-ng processes; empty = the CPU count")
    p.add_argument("--overwrite", action="store_true", help="replace a corpus made with another seed/size")
    p.add_argument("--disjoint-from", action="append", default=[], metavar="SIZE:SEED",
                   help="use none of the voices of that corpus (repeatable), e.g. demo:0")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``score-synth``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.jobs is not None and args.jobs < 1:
        print(f"score-synth: error: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    disjoint = []
    for spec in args.disjoint_from:
        size, _, seed = spec.partition(":")
        if size not in SIZES or not seed.lstrip("-").isdigit():
            print(f"score-synth: error: --disjoint-from {spec!r}: expected SIZE:SEED with SIZE in {sorted(SIZES)}",
                  file=sys.stderr)
            return 2
        disjoint.append((size, int(seed)))
    t0 = time.perf_counter()
    try:
        corpus = generate(args.out, seed=args.seed, size=args.size, jobs=args.jobs, overwrite=args.overwrite,
                          disjoint_from=disjoint)
    except (SynthError, OSError) as e:
        print(f"score-synth: error: {e}", file=sys.stderr)
        return 2
    c, h = corpus.counts, corpus.hours
    print(
        f"{corpus.size} corpus, seed {corpus.seed}, in {time.perf_counter() - t0:.1f} s -> {corpus.root}\n"
        f"  LibriSpeech: train {c['train-clean-100']} utts / {h['train-clean-100'] * 60:.1f} min, "
        f"dev {c['dev-clean']} / {h['dev-clean'] * 60:.1f} min, "
        f"test {c['test-clean']} / {h['test-clean'] * 60:.1f} min\n"
        f"  QUESST14: {c['documents']} documents / {h['documents'] * 60:.1f} min, "
        f"{c['dev_queries']} dev + {c['eval_queries']} eval queries\n"
        f"  lexicon: {c['lexicon_words']} words; voices: {len(corpus.voices)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
