"""One entry point over the model families (HuBERT, WavLM): load any supported checkpoint, write it back.

Usage::

    from score_upstream.models.loader import load_model, save_s3prl

    bundle = load_model("WavLM-Base+.pt")      # HubertBundle or WavLMBundle, by content
    bundle.family                               # "hubert" | "wavlm"
    save_s3prl(bundle, "exp/wavlm.pt")          # the s3prl input of that family (hubert_local / wavlm_local)
    read_shape("WavLM-Base+.pt").layers         # 12: family, format and depth without building the network

Both bundles hold s3prl's own network (``bundle.model``) with the same attribute layout
(``feature_extractor``, ``layer_norm``, ``post_extract_proj``, ``encoder.layers``), which is what the
trainer and the s3prl upstream rely on.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from score_upstream.models.formats import CheckpointError, read_checkpoint

FAMILIES = ("hubert", "wavlm")
_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.")
MAX_LAYERS = 256  # transformer layers; released models have 12 or 24


@dataclass(frozen=True)
class CheckpointShape:
    """What a checkpoint's config and weights say about its network, read without building it.

    Attributes:
        family: ``"hubert"`` or ``"wavlm"``.
        source_format: the reader that read it (``s3prl``, ``fairseq``, ``hf``, ``spin``, ``wavlm``, ``wavlm_hf``).
        layers: transformer layers (``encoder_layers``; 12 for Base, 24 for Large).
        embed_dim: transformer width (``encoder_embed_dim``), None where the config does not say.
    """

    family: str
    source_format: str
    layers: int
    embed_dim: int | None

    @property
    def last_hidden_state(self) -> int:
        """Index of the last hidden state s3prl's experts return (the CNN output is 0, layer k's output is k)."""
        return self.layers


def read_shape(path: str | os.PathLike, family: str | None = None) -> CheckpointShape:
    """Family, format, depth and width of a checkpoint of any supported format, from its config and weights.

    The depth is the config's ``encoder_layers`` (fairseq's default 12 when absent) and must agree with the
    ``encoder.layers.<k>.`` weights the file holds, which is what the network loaded from it will have.

    Raises:
        CheckpointError: one line naming the file: unreadable, another family than ``family``, or a config
            whose layer count disagrees with its weights.
    """
    raw = read_checkpoint(path)
    found = getattr(raw, "family", "hubert")
    if family is not None and found != family:
        raise CheckpointError(f"{path}: a {found} checkpoint ({raw.source_format} format); expected a {family} one")
    cfg, section = (raw.cfg, "cfg") if found == "wavlm" else (raw.model_cfg, "model_cfg")
    layers = check_depth(path, cfg, raw.state_dict, section)
    embed = cfg.get("encoder_embed_dim")
    return CheckpointShape(found, raw.source_format, layers, int(embed) if embed is not None else None)


def check_depth(path: str | os.PathLike, cfg: dict, state_dict: dict, section: str = "model_cfg") -> int:
    """The config's ``encoder_layers`` (fairseq's default 12 when absent): an integer 1..MAX_LAYERS that agrees
    with the ``encoder.layers.<k>.`` weights ``state_dict`` holds, which is what a network loaded from it has.

    Raises:
        CheckpointError: one line naming the file and ``section.encoder_layers``.
    """
    layers = cfg.get("encoder_layers", 12)
    if type(layers) is not int or not 1 <= layers <= MAX_LAYERS:
        raise CheckpointError(f"{path}: {section}.encoder_layers={layers!r}; expected an integer 1..{MAX_LAYERS}")
    indices = {int(m.group(1)) for m in map(_LAYER_KEY.match, state_dict) if m}
    if indices != set(range(layers)):
        held = f"layers {min(indices)}..{max(indices)} ({len(indices)})" if indices else "no encoder.layers.* weights"
        raise CheckpointError(f"{path}: {section}.encoder_layers={layers} but its weights hold {held}; "
                              "expected one weight group per layer (a truncated or edited checkpoint?)")
    return layers


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
