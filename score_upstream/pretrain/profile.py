"""The layer profile of a pre-trained model on dev: which hidden state carries what is said.

A HuBERT whose pre-training worked keeps phone identity in its upper transformer layers: SUPERB's
query-by-example picks one of them, and a phone probe on one of them beats one on the CNN output. This
module reads two per-layer measurements made by ``recipes/pretrain/profile.sh`` on a dev split:

* **QbE**: maxTWV of every layer's subsequence-DTW scores on the dev queries
  (``EXPDIR/qbe/dev/layer<L>/benchmark.stdlist.xml``), each layer's difference from layer 0 (the CNN
  output) with a paired bootstrap interval over the dev queries;
* **PR probe**: the best dev PER of a phone recogniser trained on one hidden state only
  (``EXPDIR/probe/layer<L>/pr/seed<S>/train.log``, ``recipes/pr.sh --layer L``), mean over the downstream
  seeds and each layer's difference from layer 0 paired by seed (Student-t interval).

A profile is *HuBERT-like* when, for both measurements, the best layer is a transformer layer in the
upper half (L > n_layers / 2) and its interval against layer 0 lies wholly on the improving side.

Run it as::

    python -m score_upstream.pretrain.profile EXPDIR --groundtruth QUESST/scoring/groundtruth_quesst14_dev

Writes ``EXPDIR/profile.json`` (what ``python -m score_upstream.pretrained attach-profile`` stores in a
packaged model) and ``EXPDIR/profile.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

from score_upstream.atomic import atomic_write_bytes
from score_upstream.qbe.stdlist import STDLIST_NAME
from score_upstream.qbe.twv import TWVError, max_twv, read_ground_truth, read_stdlist
from score_upstream.report.paired import bootstrap_difference, seed_difference
from score_upstream.report.render import markdown_table, write_text
from score_upstream.runs import best_dev

logger = logging.getLogger(__name__)

_LAYER = re.compile(r"layer(\d+)$")
_SEED = re.compile(r"seed(-?\d+)$")


class ProfileError(ValueError):
    """The experiment folder holds no per-layer measurement to profile."""


def _layer_dirs(root: Path) -> dict[int, Path]:
    if not root.is_dir():
        return {}
    return {int(m[1]): p for p in root.iterdir() if p.is_dir() and (m := _LAYER.match(p.name))}


def qbe_profile(expdir: Path, groundtruth: Path) -> dict | None:
    """Per-layer dev maxTWV and its paired bootstrap difference from layer 0; None without QbE dev scores."""
    layers = {L: d / STDLIST_NAME for L, d in _layer_dirs(expdir / "qbe" / "dev").items() if (d / STDLIST_NAME).is_file()}
    if not layers:
        return None
    gt = read_ground_truth(groundtruth)
    scores = {L: read_stdlist(path, gt).scores for L, path in sorted(layers.items())}
    rows = {}
    for L, s in scores.items():
        row = {"value": float(max_twv(s, gt.targets)[0])}
        if L != 0 and 0 in scores:
            d = bootstrap_difference("mtwv", scores[0], s, gt.targets)
            row.update(diff=d.diff, low=d.low, high=d.high, better=d.better)
        rows[L] = row
    return {"metric": "maxTWV", "higher_is_better": True, "split": "dev queries",
            "n": len(gt.targets), "interval": "paired bootstrap over queries, 95 %", "layers": rows}


def pr_profile(expdir: Path, layers: list[int] | None = None, seeds: list[int] | None = None) -> dict | None:
    """Per-layer best dev PER (%) over the seeds and its paired-by-seed difference from layer 0; None without
    probe runs.

    With ``layers`` and ``seeds`` (what recipes/pretrain/profile.sh ran), exactly those runs are read and a
    missing one is an error: a layer or seed folder an earlier run left (another checkpoint, other seeds) is
    never mixed in. Without them, every ``probe/layer<L>/pr/seed<S>/`` found is read.
    """
    if layers is not None and seeds is not None:
        found = {L: {s: expdir / "probe" / f"layer{L}" / "pr" / f"seed{s}" for s in seeds} for L in layers}
    else:
        found = {L: {int(m[1]): run for run in sorted((d / "pr").iterdir()) if (m := _SEED.match(run.name))}
                 for L, d in _layer_dirs(expdir / "probe").items() if (d / "pr").is_dir()}
    runs: dict[int, dict[int, float]] = {}
    for L, by_seed in sorted(found.items()):
        for seed, run in sorted(by_seed.items()):
            v = best_dev(run / "train.log", "pr")
            if v is not None:
                runs.setdefault(L, {})[seed] = 100.0 * v
            elif layers is not None:
                raise ProfileError(f"{run / 'train.log'}: no 'dev per' line; rerun recipes/pretrain/profile.sh")
    if not runs:
        return None
    rows = {}
    for L, per in runs.items():
        row = {"value": sum(per.values()) / len(per), "seeds": {str(s): v for s, v in sorted(per.items())}}
        if L != 0 and 0 in runs and (d := seed_difference("per", runs[0], per)) is not None:
            row.update(diff=d.diff, low=d.low, high=d.high, better=d.better)
        rows[L] = row
    return {"metric": "PER %", "higher_is_better": False, "split": "dev",
            "n": max(len(v) for v in runs.values()), "interval": "paired by seed, Student t, 95 %", "layers": rows}


def verdict(measure: dict, n_layers: int) -> dict:
    """The best layer of one measurement and whether it is an upper-half transformer layer that beats layer
    0 by more than its interval."""
    layers = measure["layers"]
    sign = 1 if measure["higher_is_better"] else -1
    best = max(layers, key=lambda L: (sign * layers[L]["value"], -L))
    upper = best > n_layers / 2
    beats = layers[best].get("better") == "yes"
    return {"best_layer": best, "upper_half": upper, "beats_cnn_output": beats, "hubert_like": upper and beats}


def checkpoint_identity(ckpt: str | Path) -> dict:
    """What the profile measured: the checkpoint's path, its SHA-256 and, for a converted (s3prl) checkpoint,
    the digest of its weights alone (:func:`score_upstream.pretrained.weights_digest`), which stays valid when
    the profile is stored in the file."""
    import torch

    from score_upstream.pretrained import weights_digest
    from score_upstream.stages import file_sha256

    ckpt = Path(ckpt)
    out = {"ckpt": str(ckpt), "ckpt_sha256": file_sha256(ckpt)}
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model_weight"), dict):
        out["weights_sha256"] = weights_digest(state)
    return out


def profile(expdir: str | Path, groundtruth: str | Path | None, n_layers: int | None = None,
            ckpt: str | Path | None = None, probe_layers: list[int] | None = None,
            seeds: list[int] | None = None) -> dict:
    """Both measurements of ``expdir`` (either may be absent, not both) and their verdicts; with ``ckpt``, the
    identity of the checkpoint measured (:func:`checkpoint_identity`); with ``probe_layers`` and ``seeds``,
    only those probe runs (:func:`pr_profile`)."""
    expdir = Path(expdir)
    out: dict = {"expdir": str(expdir)}
    if ckpt is not None:
        out.update(checkpoint_identity(ckpt))
    qbe = qbe_profile(expdir, Path(groundtruth)) if groundtruth is not None else None
    pr = pr_profile(expdir, probe_layers, seeds)
    if qbe is None and pr is None:
        raise ProfileError(f"{expdir}: no QbE dev scores (qbe/dev/layer<L>/) and no probe runs (probe/layer<L>/pr/seed<S>/); "
                           "run recipes/pretrain/profile.sh first")
    seen = set((qbe or {"layers": {}})["layers"]) | set((pr or {"layers": {}})["layers"])
    n_layers = n_layers if n_layers is not None else max(seen)
    out["n_layers"] = n_layers
    for name, m in (("qbe", qbe), ("pr", pr)):
        if m is not None:
            m.update(verdict(m, n_layers))
            out[name] = m
    out["hubert_like"] = all(out[k]["hubert_like"] for k in ("qbe", "pr") if k in out)
    return out


def _cell(row: dict, digits: int) -> str:
    if "diff" not in row:
        return "(reference)"
    mark = {"yes": " better", "worse": " worse"}.get(row["better"], "")
    return f"{row['diff']:+.{digits}f} [{row['low']:+.{digits}f}, {row['high']:+.{digits}f}]{mark}"


def render(prof: dict, title: str = "Layer profile on dev") -> str:
    """The profile as Markdown: one row per layer, each measurement with its difference from layer 0."""
    lines = [f"# {title}", ""]
    cols, keys = ["layer"], []
    for key, label, digits in (("qbe", "QbE dev maxTWV", 3), ("pr", "PR probe dev PER %", 2)):
        if key in prof:
            cols += [label, "vs layer 0"]
            keys.append((key, digits))
    layers = sorted(set().union(*(map(int, prof[k]["layers"]) for k, _ in keys)))
    rows = []
    for L in layers:
        row = ["0 (CNN output)" if L == 0 else str(L)]
        for key, digits in keys:
            r = prof[key]["layers"].get(L) or prof[key]["layers"].get(str(L))
            row += ["" if r is None else f"{r['value']:.{digits}f}", "" if r is None else _cell(r, digits)]
        rows.append(row)
    lines += markdown_table(cols, rows)
    lines.append("")
    for key, _ in keys:
        m = prof[key]
        lines.append(f"- {key.upper()}: best layer {m['best_layer']} of {prof['n_layers']}"
                     f"{' (upper half)' if m['upper_half'] else ''}; "
                     f"{'beats' if m['beats_cnn_output'] else 'does not beat'} the CNN output beyond its interval "
                     f"({m['interval']}, n={m['n']}).")
    lines.append(f"- HuBERT-like (both best layers in the upper half and beyond layer 0's interval): "
                 f"{'yes' if prof['hubert_like'] else 'no'}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m score_upstream.pretrain.profile", description=__doc__.split("\n\n")[0])
    ap.add_argument("expdir", help="the folder recipes/pretrain/profile.sh wrote (qbe/dev/layer<L>/, probe/layer<L>/)")
    ap.add_argument("--groundtruth", help="QUESST dev ground truth folder (scoring/groundtruth_quesst14_dev)")
    ap.add_argument("--ckpt", help="the checkpoint measured (its identity is recorded)")
    ap.add_argument("--n-layers", type=int, help="transformer layers of the model (default: the highest profiled)")
    ap.add_argument("--probe-layers", help='the probed layers to read, e.g. "0 1 2" (default: every probe/layer<L>/)')
    ap.add_argument("--seeds", help='the probe seeds to read, e.g. "0 1 2 3" (with --probe-layers)')
    ap.add_argument("--title", default="Layer profile on dev")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        prof = profile(args.expdir, args.groundtruth, args.n_layers, args.ckpt,
                       [int(x) for x in args.probe_layers.split()] if args.probe_layers else None,
                       [int(x) for x in args.seeds.split()] if args.seeds else None)
    except (ProfileError, TWVError, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    expdir = Path(args.expdir)
    atomic_write_bytes((json.dumps(prof, indent=1, sort_keys=True) + "\n").encode(), expdir / "profile.json")
    text = render(prof, args.title)
    write_text(text, expdir / "profile.md")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
