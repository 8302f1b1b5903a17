"""Data preparation for SUPERB QbE: check a QUESST 2014 tree before any feature is extracted.

Run it as (stage 1 of ``recipes/qbe.sh``)::

    python -m score_upstream.s3prl.superb.qbe.prepare data/quesst14Database
    # -> QUESST 2014 ok: 12 English documents; dev 4 English queries (4 with hits in the ground truth); ...

It checks what s3prl's ``quesst14_dtw`` dataset and our scorer read: ``scoring/language_key_{utterances,
dev,eval}.lst`` (``Audio/quesst14_00001.wav nnenglish`` per line), the English audio files they list,
and, per split, the ground truth ``scoring/groundtruth_quesst14_<split>/`` (``*.ecf.xml``, ``*.rttm``,
``*.tlist.xml``). Anything missing stops it with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from score_upstream.qbe.twv import TWVError, read_ground_truth
from score_upstream.textio import read_utf8

LANGUAGE = "nnenglish"  # s3prl's QUESST14Dataset keeps only these entries
SPLITS = ("dev", "eval")


class QuesstTreeError(ValueError):
    """The QUESST 2014 tree lacks a file the QbE recipe needs."""


def english_entries(root: Path, lst_name: str) -> list[Path]:
    """Audio paths of the ``nnenglish`` lines of ``scoring/<lst_name>``, resolved as s3prl does.

    Lines read ``quesst14Database/Audio/quesst14_00001.wav nnenglish``; s3prl drops everything up to
    the first ``/`` and joins the rest to the database root, and so do we.
    """
    lst = root / "scoring" / lst_name
    if not lst.is_file():
        raise QuesstTreeError(f"{lst}: QUESST language key list not found; is {root} a quesst14Database folder?")
    paths = []
    for number, line in enumerate(read_utf8(lst, QuesstTreeError).splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2:
            raise QuesstTreeError(f"{lst}:{number}: expected 'AUDIO_PATH LANGUAGE', found {line!r}")
        if fields[1] == LANGUAGE:
            paths.append(root / re.sub(r"^.*?/", "", fields[0]))
    return paths


def groundtruth_dir(root: str | Path, split: str) -> Path:
    """``<root>/scoring/groundtruth_quesst14_<split>``, the folder score-twv reads for ``split``."""
    return Path(root) / "scoring" / f"groundtruth_quesst14_{split}"


def check_tree(root: str | Path, splits: tuple[str, ...] = SPLITS) -> dict:
    """Check a QUESST 2014 tree for the QbE recipe.

    Args:
        root: the ``quesst14Database`` folder.
        splits: query sets to check (``dev``, ``eval``).

    Returns:
        ``{"documents": n, "<split>": {"queries": n_english, "scored": n_with_hits, "dropped": n}}``.

    Raises:
        QuesstTreeError: a missing folder, list, audio file or ground truth.
    """
    root = Path(root)
    if not root.is_dir():
        raise QuesstTreeError(f"{root}: QUESST 2014 database folder not found; pass the quesst14Database folder")
    docs = english_entries(root, "language_key_utterances.lst")
    if not docs:
        raise QuesstTreeError(f"{root}/scoring/language_key_utterances.lst: no '{LANGUAGE}' document listed")
    summary: dict = {"documents": len(docs)}
    for split in splits:
        queries = english_entries(root, f"language_key_{split}.lst")
        if not queries:
            raise QuesstTreeError(f"{root}/scoring/language_key_{split}.lst: no '{LANGUAGE}' query listed")
        for path in docs + queries:
            if not path.is_file():
                raise QuesstTreeError(f"{path}: audio file listed in {root}/scoring is missing")
        gt_dir = groundtruth_dir(root, split)
        if not gt_dir.is_dir():
            raise QuesstTreeError(
                f"{gt_dir}: ground truth for '{split}' not found; the QUESST tree needs "
                f"scoring/groundtruth_quesst14_{split}/ with its .ecf.xml, .rttm and .tlist.xml"
            )
        try:
            gt = read_ground_truth(gt_dir)
        except TWVError as e:
            raise QuesstTreeError(str(e)) from None
        summary[split] = {"queries": len(queries), "scored": len(gt.queries), "dropped": gt.n_dropped_queries}
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="quesst14Database folder")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="query sets to check")
    args = parser.parse_args(argv)
    try:
        summary = check_tree(args.root, tuple(args.splits))
    except QuesstTreeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    parts = [
        f"{s} {summary[s]['queries']} English queries ({summary[s]['scored']} with hits in the ground truth)"
        for s in args.splits
    ]
    print(f"QUESST 2014 ok: {summary['documents']} English documents; " + "; ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
