"""Data preparation for SUPERB PR: check LibriSpeech and the lexicon, write the resolved ``ctc`` config.

Run it as (stage 1 of ``recipes/pr.sh``)::

    python -m score_upstream.s3prl.superb.pr.prepare --librispeech data/LibriSpeech \\
        --lexicon data/librispeech-lexicon.txt [data/g2p-lexicon.txt ...] --out exp/m/pr/config.yaml

Every split must exist and every transcript word must be in one of the lexicons; otherwise it prints
one line naming what is missing and exits 2. The written config is the packaged
``score_upstream/s3prl/superb/pr/config.yaml`` with the data root, the absolute lexicon paths and the phone
vocabulary filled in, so s3prl's runner needs no path overrides.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from score_upstream.atomic import atomic_write_bytes
from score_upstream.s3prl.phones import LexiconError
from score_upstream.s3prl.superb import SuperbAssetError, asset_path
from score_upstream.s3prl.superb.pr.libriphone import (
    LibriPhoneError,
    describe_missing,
    missing_words,
    read_lexicon,
    read_split,
)

logger = logging.getLogger(__name__)


def prepare(
    librispeech: str | Path,
    lexicon: list[str | Path],
    out: str | Path,
    splits: dict[str, list[str]] | None = None,
    base_config: str | Path | None = None,
) -> dict:
    """Check the PR inputs and write the resolved config.

    Args:
        librispeech: LibriSpeech root.
        lexicon: lexicon files in priority order.
        out: where to write the resolved YAML config.
        splits: ``{"train": [...], "dev": [...], "test": [...]}``; default from the base config.
        base_config: config to start from (default: the packaged ``pr/config.yaml``).

    Returns:
        Summary ``{"utterances": {split: n}, "words": n_distinct, "config": str(out)}``.

    Raises:
        LibriPhoneError: missing root, split, lexicon, or words missing from the lexicon.
    """
    root = Path(librispeech).resolve()
    if not root.is_dir():
        raise LibriPhoneError(f"{root}: LibriSpeech root not found; pass the directory holding train-clean-100/ etc.")
    lex_paths = [Path(p).resolve() for p in lexicon]
    lex = read_lexicon(lex_paths)
    with open(base_config or asset_path("pr/config.yaml"), encoding="utf-8") as f:
        config = yaml.safe_load(f)
    corpus = config["downstream_expert"]["corpus"]
    for role, names in (splits or {}).items():
        corpus[role] = list(names)
    counts, words = {}, set()
    for role in ("train", "dev", "test"):
        items = [it for name in corpus[role] for it in read_split(root, name)]
        counts[role] = len(items)
        word_lists = [w for _, _, w in items]
        missing = missing_words(word_lists, lex)
        if missing:
            raise LibriPhoneError(f"{root} {role} {'+'.join(corpus[role])}: " + describe_missing(missing, lex_paths))
        words.update(w for ws in word_lists for w in ws)
        for _, audio, _ in items:
            if not audio.is_file():
                raise LibriPhoneError(f"{audio}: audio file listed in a transcript is missing")
    corpus["path"] = str(root)
    corpus["lexicon"] = [str(p) for p in lex_paths]
    config["downstream_expert"]["text"]["vocab_file"] = str(asset_path("pr/phones.txt"))
    header = f"# written by score_upstream.s3prl.superb.pr.prepare from {base_config or 'the packaged pr/config.yaml'}\n"
    atomic_write_bytes((header + yaml.safe_dump(config, sort_keys=False)).encode(), out)
    return {"utterances": counts, "words": len(words), "config": str(out)}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--librispeech", required=True, help="LibriSpeech root")
    parser.add_argument("--lexicon", nargs="+", required=True, help="lexicon files, earlier ones win")
    parser.add_argument("--out", required=True, help="resolved config to write")
    parser.add_argument("--config", default=None, help="base config (default: packaged pr/config.yaml)")
    parser.add_argument("--train", nargs="+", default=None, help="train split(s), e.g. train-clean-100")
    parser.add_argument("--dev", nargs="+", default=None, help="dev split(s), e.g. dev-clean")
    parser.add_argument("--test", nargs="+", default=None, help="test split(s), e.g. test-clean")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    splits = {k: v for k, v in (("train", args.train), ("dev", args.dev), ("test", args.test)) if v}
    try:
        summary = prepare(args.librispeech, args.lexicon, args.out, splits, args.config)
    except (LibriPhoneError, LexiconError, SuperbAssetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = summary["utterances"]
    print(
        f"PR data ok: train {n['train']}, dev {n['dev']}, test {n['test']} utterances, "
        f"{summary['words']} distinct words covered by the lexicon -> {summary['config']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
