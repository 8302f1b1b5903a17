"""Length tables s3prl's ``asr`` dataset buckets by (s3prl's ``preprocess/generate_len_for_bucket.py``
is not in its package).

How to run::

    python -m score_upstream.s3prl.superb.lengths --librispeech /data/LibriSpeech --out exp/asr/data/len \
        --splits train-clean-100 dev-clean test-clean

For each split it writes ``OUT/<split>.csv``, read by ``s3prl/downstream/asr/dataset.py``::

    ,file_path,length,label
    0,train-clean-100/103/1240/103-1240-0000.flac,225360,
    1,...

``file_path`` is relative to the LibriSpeech root (the ``libri_root`` of the asr config), ``length``
is the number of samples from the audio header, rows are sorted longest first, ``label`` is empty.
Each file is written atomically; a split whose table is newer than every audio file is skipped.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
from pathlib import Path

import pandas as pd

from score_upstream.audio import AudioError, audio_info
from score_upstream.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".flac", ".wav")


class LengthsError(ValueError):
    """A LibriSpeech split that is missing, empty or unreadable."""


def split_table(librispeech: str | os.PathLike, split: str) -> pd.DataFrame:
    """``file_path``/``length``/``label`` rows of one split, longest first.

    Raises:
        LengthsError: the split directory is missing or holds no audio; an audio header is unreadable.
    """
    root = Path(librispeech)
    split_dir = root / split
    if not split_dir.is_dir():
        raise LengthsError(f"{split_dir}: split directory not found; expected LibriSpeech layout ROOT/{split}/SPK/CHAPTER/*.flac")
    files = sorted(p for p in split_dir.rglob("*") if p.suffix in AUDIO_SUFFIXES and p.is_file())
    if not files:
        raise LengthsError(f"{split_dir}: no .flac or .wav files found; expected LibriSpeech layout")
    rows = []
    for path in files:
        try:
            frames, _, _ = audio_info(path)
        except AudioError as e:
            raise LengthsError(str(e)) from None
        rows.append((path.relative_to(root).as_posix(), frames))
    # Stable sort keeps the path order among equal lengths, so the table is reproducible.
    df = pd.DataFrame(rows, columns=["file_path", "length"]).sort_values("length", ascending=False, kind="stable")
    df = df.reset_index(drop=True)
    df["label"] = None
    return df


def write_lengths(librispeech: str | os.PathLike, out_dir: str | os.PathLike, splits: list[str], force: bool = False) -> list[Path]:
    """Write ``out_dir/<split>.csv`` for each split; returns the paths (skipped ones included)."""
    root, out_dir = Path(librispeech), Path(out_dir)
    written = []
    for split in splits:
        target = out_dir / f"{split}.csv"
        split_dir = root / split
        if not force and target.is_file() and split_dir.is_dir():
            newest = max((p.stat().st_mtime for p in split_dir.rglob("*") if p.suffix in AUDIO_SUFFIXES), default=0.0)
            if target.stat().st_mtime >= newest:
                logger.info("%s is up to date; skipping", target)
                written.append(target)
                continue
        df = split_table(root, split)
        buf = io.StringIO()
        df.to_csv(buf)
        atomic_write_bytes(buf.getvalue().encode(), target)
        logger.info("%s: %d utterances, %.1f h", target, len(df), df["length"].sum() / 16000 / 3600)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m score_upstream.s3prl.superb.lengths", description=__doc__.split("\n\n")[0])
    parser.add_argument("--librispeech", required=True, help="LibriSpeech root holding the split directories")
    parser.add_argument("--out", required=True, help="output directory (the asr config's bucket_file)")
    parser.add_argument("--splits", nargs="+", default=["train-clean-100", "dev-clean", "test-clean"])
    parser.add_argument("--force", action="store_true", help="rewrite tables that look up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        write_lengths(args.librispeech, args.out, args.splits, force=args.force)
    except LengthsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
