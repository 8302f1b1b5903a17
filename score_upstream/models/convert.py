"""Convert a HuBERT or WavLM checkpoint between formats; the source format is detected from its content.

How to run::

    score-convert hubert_base_ls960.pt exp/hubert_base.pt --to s3prl     # fairseq -> s3prl (hubert_local)
    score-convert exp/score/score_hubert.pt exp/score_hf --to hf          # s3prl/SCORE -> transformers dir
    score-convert exp/score_hf exp/back.pt --to s3prl                     # transformers dir -> s3prl
    score-convert spin.ckpt exp/spin.pt --to s3prl --base hubert_base_ls960.pt   # SPIN Lightning ckpt
    score-convert WavLM-Base+.pt exp/wavlm_hf --to hf                     # unilm WavLM -> transformers WavLMModel
    score-convert exp/wavlm_hf exp/wavlm.pt --to s3prl                    # -> {cfg, model} for wavlm_local
    python -m score_upstream.models.convert ...                                  # the same

Exit status 0 on success, 2 on bad input (one-line message, no traceback).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

TARGETS = ("s3prl", "hf")


def convert(src: str | Path, dst: str | Path, to: str, base: str | Path | None = None) -> dict:
    """Read ``src`` in any supported format and write ``dst`` as ``to`` (``"s3prl"`` or ``"hf"``).

    ``base`` is the HuBERT a SPIN checkpoint started from (SPIN stores weights only); other formats
    ignore it. Without it, SPIN's own recorded base path is used when that file exists.

    Returns:
        A summary dict (source format, target, layers, parameters).

    Raises:
        CheckpointError: unreadable/unsafe source, or a target that cannot hold it.
    """
    from score_upstream.models.formats import CheckpointError, detect_format
    from score_upstream.models.loader import describe, load_model, save_hf, save_s3prl

    if to not in TARGETS:
        raise CheckpointError(f"--to {to!r}: expected one of {', '.join(TARGETS)}")
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise CheckpointError(f"{dst}: destination is the source; choose another path")
    if base is not None and detect_format(src) == "spin":
        from score_upstream.models.formats.spin import load_spin

        bundle = load_spin(src, base)
    else:
        bundle = load_model(src)
    if to == "s3prl":
        if dst.is_dir():
            raise CheckpointError(f"{dst}: is a directory; --to s3prl writes a .pt file")
        save_s3prl(bundle, dst)
    else:
        save_hf(bundle, dst)
    summary = describe(bundle)
    summary.update(source=str(src), destination=str(dst), to=to)
    return summary


def main(argv: list[str] | None = None) -> int:
    from score_upstream.cliparse import ScoreArgumentParser

    parser = ScoreArgumentParser(prog="score-convert", description=__doc__.split("\n\n")[0], examples=[
        "score-convert hubert_base_ls960.pt exp/hubert_base.pt --to s3prl",
        "score-convert exp/score/score_hubert.pt exp/score_hf --to hf",
        "score-convert spin_hubert_2048.ckpt exp/spin_s3prl.pt --to s3prl --base hubert_base_ls960.pt"])
    parser.add_argument("src", help="fairseq .pt, s3prl converted .pt (SCORE checkpoint), WavLM .pt or transformers directory")
    parser.add_argument("dst", help="output .pt file (--to s3prl) or directory (--to hf)")
    parser.add_argument("--to", required=True, choices=TARGETS, help="target format")
    parser.add_argument("--base", help="SPIN only: the HuBERT checkpoint SPIN was trained from (any format)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from score_upstream.models.formats import CheckpointError

    try:
        summary = convert(args.src, args.dst, args.to, base=args.base)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
