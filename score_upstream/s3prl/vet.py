"""A checkpoint checked by our safe readers before any s3prl upstream builds a network from it.

How to run::

    python -m score_upstream.s3prl.vet --upstream hubert_local exp/hubert_base.pt
    # stdout: "hubert_local hubert vanilla" (UPSTREAM FAMILY score|vanilla); stderr: one error line, exit 2

s3prl's own upstreams trust the file: ``hubert_local`` and ``wavlm_local`` call ``torch.load`` (which, before
torch 2.6, unpickles whatever globals the file names) and then ``eval(cfg.conv_feature_layers)``, a string
taken from the checkpoint. Here the file is read by the project's readers (weights-only, or an allowlist
unpickler for fairseq and WavLM releases), the front-end string is parsed by ``ast`` with bounds
(:func:`score_upstream.models.formats.hf.parse_conv_layers`), the layer count is bounded and must match the
weights, and the format must be the one the upstream reads. Anything else is one line naming the file and
the key. The recipes (``recipes/lib/common.sh: vet_ckpt``), ``run_superb.sh``, ``score-s3prl`` and
``score-qbe`` call :func:`vet` before s3prl sees the file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from score_upstream.models.formats import CheckpointError
from score_upstream.models.loader import check_depth

# upstream -> (family it reads, formats it reads; None = every format our readers know)
KNOWN_UPSTREAMS = {
    "hubert_local": ("hubert", ("s3prl",)),
    "wavlm_local": ("wavlm", ("wavlm",)),
    "score_hubert": ("hubert", None),
    "score_local": ("hubert", None),
    "score_wavlm": ("wavlm", None),
    "spin": ("hubert", ("spin",)),  # run_superb.sh: a SPIN Lightning checkpoint, converted by score-convert
    "auto": (None, None),  # run_superb.sh: score_hubert or score_wavlm, from the content
}
BASE_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
_HINTS = {
    "s3prl": "convert it with `score-convert CKPT OUT.pt --to s3prl`, or use --upstream score_hubert, which reads any format",
    "wavlm": "use --upstream score_wavlm, which reads any WavLM format",
    "spin": "pass a SPIN Lightning .ckpt",
}


@dataclass(frozen=True)
class Vetted:
    """What a checked checkpoint is.

    Attributes:
        upstream: the upstream to use (``auto`` resolved to ``score_hubert`` or ``score_wavlm``).
        family: ``"hubert"`` or ``"wavlm"``.
        trained: ``"score"`` when the file carries SCORE's training record, else ``"vanilla"``.
        source_format: the reader that read it.
    """

    upstream: str
    family: str
    trained: str
    source_format: str


def _with_path(path: Path, message: str) -> str:
    return message if str(path) in message else f"{path}: {message}"


def _check_config(path: Path, cfg: dict, section: str, state_dict: dict) -> None:
    from score_upstream.models.formats.hf import parse_conv_layers

    try:
        parse_conv_layers(cfg.get("conv_feature_layers", BASE_CONV_LAYERS))
    except CheckpointError as e:
        raise CheckpointError(_with_path(path, str(e).replace("model_cfg.", f"{section}.", 1))) from None
    check_depth(path, cfg, state_dict, section)


def _check_plain(path: Path) -> None:
    """For an upstream we do not know: the file must load weights-only, and any front-end string must parse."""
    import torch

    from score_upstream.models.formats.hf import parse_conv_layers

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file needs more than tensors and plain data
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise CheckpointError(f"{path}: does not load with torch.load(weights_only=True) ({first}); "
                              "a file that needs code to load is not handed to s3prl") from None

    def walk(node, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                name = f"{where}.{key}" if where else str(key)
                if key == "conv_feature_layers":
                    try:
                        parse_conv_layers(value)
                    except CheckpointError as e:
                        raise CheckpointError(_with_path(path, str(e).replace("model_cfg.conv_feature_layers", name, 1))) from None
                elif isinstance(value, (dict, list, tuple)):
                    walk(value, name)
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(state, "")


def vet(path: str | Path, upstream: str = "score_hubert", base: str | Path | None = None) -> Vetted:
    """Check ``path`` for ``upstream`` before s3prl reads it.

    Args:
        path: the checkpoint file (or transformers directory for our upstreams).
        upstream: the s3prl upstream it is for; ``auto`` and ``spin`` as run_superb.sh uses them. An upstream
            outside :data:`KNOWN_UPSTREAMS` only gets the weights-only load and the front-end check.
        base: for ``spin``, the HuBERT the SPIN model started from (SPIN stores only its own weights); None =
            the base path recorded in the SPIN checkpoint.

    Raises:
        CheckpointError: one line naming the file and, for a bad config, the key.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found; expected a HuBERT or WavLM checkpoint file")
    if upstream not in KNOWN_UPSTREAMS:
        if path.is_dir():
            raise CheckpointError(f"{path}: a directory; upstream {upstream} reads a checkpoint file")
        _check_plain(path)
        return Vetted(upstream, "other", "vanilla", "other")
    from score_upstream.models.formats import read_checkpoint

    want_family, want_formats = KNOWN_UPSTREAMS[upstream]
    try:
        if upstream == "spin":
            from score_upstream.models.formats.spin import read_spin

            raw = read_spin(path, base=base)
        else:
            raw = read_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(_with_path(path, str(e))) from None
    family = getattr(raw, "family", "hubert")
    if want_family is not None and family != want_family:
        raise CheckpointError(f"{path}: a {family} checkpoint; upstream {upstream} reads {want_family} ones "
                              f"(use score_{family})")
    if want_formats is not None and raw.source_format not in want_formats:
        raise CheckpointError(f"{path}: a {family} checkpoint in {raw.source_format} format; upstream {upstream} "
                              f"reads the {want_formats[0]} format only; {_HINTS[want_formats[0]]}")
    if family == "wavlm":
        _check_config(path, raw.cfg, "cfg", raw.state_dict)
    else:
        _check_config(path, raw.model_cfg, "model_cfg", raw.state_dict)
    resolved = f"score_{family}" if upstream == "auto" else upstream
    trained = "score" if "score" in (raw.extra or {}) else "vanilla"
    return Vetted(resolved, family, trained, raw.source_format)


def main(argv: list[str] | None = None) -> int:
    """``python -m score_upstream.s3prl.vet [--upstream NAME] CKPT``: prints ``UPSTREAM FAMILY score|vanilla``."""
    from score_upstream.cliparse import ScoreArgumentParser

    p = ScoreArgumentParser(
        prog="python -m score_upstream.s3prl.vet",
        description="Check a checkpoint with the project's safe readers before an s3prl upstream loads it; "
                    "prints UPSTREAM FAMILY score|vanilla.",
        examples=["python -m score_upstream.s3prl.vet --upstream hubert_local exp/hubert_base.pt"],
    )
    p.add_argument("ckpt", help="checkpoint file")
    p.add_argument("--upstream", default="score_hubert", help="the s3prl upstream it is for (auto: from the content)")
    p.add_argument("--base", default=None,
                   help="with --upstream spin: the HuBERT checkpoint the SPIN model started from (default: the one it records)")
    args = p.parse_args(argv)
    try:
        v = vet(args.ckpt, args.upstream, args.base)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(v.upstream, v.family, v.trained)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
