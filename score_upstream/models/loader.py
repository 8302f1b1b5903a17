"""One entry point over the model families (HuBERT, WavLM): load any supported checkpoint, write it back.

Usage::

    from score_upstream.models.loader import load_model, save_s3prl

    bundle = load_model("WavLM-Base+.pt")      # HubertBundle or WavLMBundle, by content
    bundle.family                               # "hubert" | "wavlm"
    save_s3prl(bundle, "exp/wavlm.pt")          # the s3prl input of that family (hubert_local / wavlm_local)

Both bundles hold s3prl's own network (``bundle.model``) with the same attribute layout
(``feature_extractor``, ``layer_norm``, ``post_extract_proj``, ``encoder.layers``), which is what the
trainer and the s3prl upstream rely on.
"""

from __future__ import annotations

import os
from pathlib import Path

from score_upstream.models.formats import CheckpointError, read_checkpoint

FAMILIES = ("hubert", "wavlm")


def load_model(path: str | os.PathLike, family: str | None = None):
    """Read a checkpoint of any supported format; ``family`` (if given) must match what the file holds.

    Raises:
        CheckpointError: one line naming the file, what was expected and what was found.
    """
    raw = read_checkpoint(path)
    found = getattr(raw, "family", "hubert")
    if family is not None and found != family:
        raise CheckpointError(f"{path}: a {found} checkpoint ({raw.source_format} format); expected a {family} one")
    if found == "wavlm":
        from score_upstream.models.wavlm import bundle_from_raw
    else:
        from score_upstream.models.hubert import bundle_from_raw
    return bundle_from_raw(raw)


def _module(bundle):
    if bundle.family == "wavlm":
        from score_upstream.models import wavlm as mod
    else:
        from score_upstream.models import hubert as mod
    return mod


def save_s3prl(bundle, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """The family's s3prl input: ``hubert_local``'s converted format or ``wavlm_local``'s ``{cfg, model}``."""
    return _module(bundle).save_s3prl(bundle, path, extra=extra)


def save_hf(bundle, directory: str | os.PathLike) -> Path:
    """A transformers ``HubertModel`` or ``WavLMModel`` directory."""
    return _module(bundle).save_hf(bundle, directory)


def describe(bundle) -> dict:
    summary = _module(bundle).describe(bundle)
    summary.setdefault("family", bundle.family)
    return summary


def upstream_for(path: str | os.PathLike) -> str:
    """The s3prl upstream of this project that reads ``path``: ``score_wavlm`` or ``score_hubert`` (by content)."""
    from score_upstream.models.formats import detect_format

    return "score_wavlm" if detect_format(path) in ("wavlm", "wavlm_hf") else "score_hubert"


def main(argv: list[str] | None = None) -> int:
    """``python -m score_upstream.models.loader CKPT``: print ``UPSTREAM FAMILY score|vanilla`` for a checkpoint
    (run_superb.sh): our upstream that reads it, its family, and whether it carries SCORE's training record."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m score_upstream.models.loader CKPT", file=sys.stderr)
        return 2
    try:
        upstream = upstream_for(args[0])
        trained = "score" if "score" in read_checkpoint(args[0]).extra else "vanilla"
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(upstream, upstream.split("_", 1)[1], trained)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
