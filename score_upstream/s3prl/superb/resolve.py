"""A downstream config with data paths filled in, so that no path travels inside s3prl's ``-o`` string.

Run it as (stage 1 of ``recipes/asr.sh``)::

    python -m score_upstream.s3prl.superb.resolve score_upstream/s3prl/superb/asr/config.yaml \
        exp/m/asr/data/config.yaml --set "downstream_expert.datarc.libri_root=/data/my LibriSpeech"

s3prl splits ``-o`` on ``,,`` and ``=`` and evaluates each value, so a path holding a quote, ``=`` or ``,,``
breaks a run (or runs code). Paths written into the YAML file are read as plain strings.
"""

from __future__ import annotations

import sys

import yaml

from score_upstream.atomic import atomic_write_bytes


class ResolveError(ValueError):
    """A base config or a ``--set`` that cannot be applied; one line."""


def resolve(base: str, out: str, settings: list[str]) -> dict:
    """Read ``base``, set each ``dotted.key=value`` (values kept as strings), write ``out`` atomically.

    Raises:
        ResolveError: unreadable base, a setting without ``=``, or a key under a non-mapping.
    """
    try:
        with open(base, encoding="utf-8") as f:
            config = yaml.safe_load(f) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ResolveError(f"{base}: cannot read the base config ({str(e).splitlines()[0]})") from None
    for item in settings:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ResolveError(f"--set {item!r}: expected dotted.key=value")
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ResolveError(f"{base}: {key}: {part} is not a mapping; expected a section to hold {leaf}")
        node[leaf] = value
    header = f"# written by score_upstream.s3prl.superb.resolve from {base}\n"
    atomic_write_bytes((header + yaml.safe_dump(config, sort_keys=False)).encode(), out)
    return config


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    from score_upstream.cliparse import ScoreArgumentParser

    p = ScoreArgumentParser(prog="python -m score_upstream.s3prl.superb.resolve",
                            description="Write a downstream config with data paths set as plain strings.",
                            examples=["python -m score_upstream.s3prl.superb.resolve BASE.yaml OUT.yaml "
                                      "--set downstream_expert.datarc.libri_root=/data/LibriSpeech"])
    p.add_argument("base", help="config to start from")
    p.add_argument("out", help="config to write")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="dotted key and its value, repeatable")
    args = p.parse_args(argv)
    try:
        resolve(args.base, args.out, args.set)
    except ResolveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
