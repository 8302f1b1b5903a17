"""The small HuBERT this project pre-trains on its own synthetic speech, shipped as the demo's starting model.

No real HuBERT can be downloaded where the demo runs, so ``recipes/pretrain/run.sh`` makes one the way
HuBERT is made (three iterations of masked prediction of k-means units, :mod:`score_upstream.pretrain`)
on a synthetic corpus whose voices the demo never uses, and packages it here in s3prl's converted
format with float16 weights (loaded into float32 models), its provenance under the ``pretrain`` and
``package`` keys and its layer profile on the demo's dev split under ``profile``
(:mod:`score_upstream.pretrain.profile`). Any HuBERT loader of this project, s3prl's stock ``hubert_local`` and, after
``score-convert --to hf``, transformers read it.

Usage::

    from score_upstream.pretrained import SMALL_SYNTH, provenance
    bundle = score_upstream.models.hubert.load_hubert(SMALL_SYNTH)
    provenance()["pretrain"]["valid"]            # held-out masked accuracy at the end

    python -m score_upstream.pretrained package exp/pretrain_small_v2/iter3/hubert.pt OUT.pt --recipe "..."
    python -m score_upstream.pretrained attach-profile OUT.pt EXPDIR/profile.json  # recipes/pretrain/profile.sh
    python -m score_upstream.pretrained show     # the provenance of the shipped model, with its layer profile
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

SMALL_SYNTH = Path(__file__).resolve().parent / "hubert_small_synth.pt"


class PretrainedError(FileNotFoundError):
    """The shipped model is missing (a source checkout without it) or unreadable."""


def provenance(path: str | Path = SMALL_SYNTH) -> dict:
    """The ``pretrain`` and ``package`` entries of a packaged model (plain data)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"{path}: the packaged pre-trained model is missing; make it with recipes/pretrain/run.sh")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: state.get(k, {}) for k in ("pretrain", "package", "profile")}


def weights_digest(state: dict) -> str:
    """SHA-256 over a converted checkpoint's ``model_weight`` (names, dtypes, shapes and bytes, in name order):
    the identity of the weights, unchanged when other entries of the file (its provenance) are rewritten."""
    h = hashlib.sha256()
    for name in sorted(state["model_weight"]):
        t = state["model_weight"][name].detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def package(src: str | Path, dst: str | Path, recipe: str) -> Path:
    """Write ``src`` (s3prl converted format) to ``dst`` with float16 weights and a ``package`` entry.

    The ``package`` entry records the recipe command, the source file's SHA-256, the time and the
    ``score-upstream`` commit; ``pretrain`` (written by ``score-pretrain``) is kept as it is.
    """
    from score_upstream.report.results import provenance as run_provenance

    src, dst = Path(src), Path(dst)
    state = torch.load(src, map_location="cpu", weights_only=True)
    if "model_weight" not in state or "pretrain" not in state:
        raise PretrainedError(f"{src}: expected a score-pretrain hubert.pt (s3prl format with a 'pretrain' entry)")
    state["model_weight"] = {k: v.half() if v.is_floating_point() else v for k, v in state["model_weight"].items()}
    prov = run_provenance([])
    state["package"] = {"recipe": recipe, "source": str(src), "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                        "weights": "float16", "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                        "commit": prov.get("git_commit", "unknown"), "versions": prov.get("versions", "")}
    _write(state, dst)
    return dst


def _write(state: dict, dst: Path) -> None:
    """The packaged model and its ``.json`` summary (provenance without the training config), atomically."""
    from score_upstream.atomic import atomic_save, atomic_write_bytes

    atomic_save(state, dst)
    summary = {k: state[k] for k in ("pretrain", "package", "profile") if k in state}
    summary["pretrain"] = {k: v for k, v in summary["pretrain"].items() if k != "config"}
    text = json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(text.encode(), dst.with_suffix(".json"))


def attach_profile(path: str | Path, profile_json: str | Path) -> dict:
    """Store a layer profile (``recipes/pretrain/profile.sh``'s ``profile.json``) in the packaged model it
    measured, under ``profile``; refuses a profile of other weights (its ``weights_sha256``)."""
    path, profile_json = Path(path), Path(profile_json)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if "model_weight" not in state or "package" not in state:
        raise PretrainedError(f"{path}: expected a packaged model (python -m score_upstream.pretrained package)")
    try:
        prof = json.loads(profile_json.read_text(encoding="utf-8"))
    except ValueError as e:
        raise PretrainedError(f"{profile_json}: not a profile (invalid JSON: {e})") from None
    digest = weights_digest(state)
    if prof.get("weights_sha256") != digest:
        raise PretrainedError(f"{profile_json} measured other weights (weights_sha256 {prof.get('weights_sha256')}, "
                              f"{path}: {digest}); profile this model: recipes/pretrain/profile.sh --ckpt {path}")
    state["profile"] = prof
    _write(state, path)
    return prof


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m score_upstream.pretrained", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("package", help="write a score-pretrain hubert.pt as a packaged float16 model")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--recipe", required=True, help="the command that made src (recorded)")
    a = sub.add_parser("attach-profile", help="store a layer profile (recipes/pretrain/profile.sh) in the packaged model it measured")
    a.add_argument("path")
    a.add_argument("profile_json")
    s = sub.add_parser("show", help="print a packaged model's provenance and layer profile")
    s.add_argument("path", nargs="?", default=str(SMALL_SYNTH))
    args = ap.parse_args(argv)
    try:
        if args.cmd == "package":
            print(package(args.src, args.dst, args.recipe))
        elif args.cmd == "attach-profile":
            prof = attach_profile(args.path, args.profile_json)
            print(f"{args.path}: layer profile attached (HuBERT-like: {'yes' if prof.get('hubert_like') else 'no'})")
        else:
            print(json.dumps(provenance(args.path), indent=1, sort_keys=True, default=str))
    except (PretrainedError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
