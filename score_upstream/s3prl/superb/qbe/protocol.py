"""SUPERB QbE layer protocol: pick the hidden layer by dev MTWV, report it on eval.

Run it as (stages 2 and 4 of ``recipes/qbe.sh``)::

    python -m score_upstream.s3prl.superb.qbe.protocol score exp/m/qbe/dev data/quesst14Database/scoring/groundtruth_quesst14_dev
    python -m score_upstream.s3prl.superb.qbe.protocol select exp/m/qbe/dev
    # -> 7          (the layer whose dev/layer7/score.out has the largest maxTWV)
    python -m score_upstream.s3prl.superb.qbe.protocol report exp/m/qbe --layer 7 --protocol best-dev-layer \\
        --quesst-root data/quesst14Database
    # -> writes exp/m/qbe/qbe_result.json (add --last-layer 12 to report the last layer beside it)

Layout read: ``QBE_DIR/{dev,eval}/layer<L>/score.out`` (the line ``actTWV: X maxTWV: Y Threshold: Z``
that ``score-twv`` writes next to each ``benchmark.stdlist.xml``). SUPERB selects the layer with the
best dev MTWV (the first one on ties, lowest layer first) and reports that layer's eval MTWV; the SCORE
authors report a fixed layer (the last one), which ``--layer`` reproduces. The report gives the last
layer's eval MTWV beside the chosen one, and each eval MTWV a bootstrap interval over queries
(``score_upstream.qbe.bootstrap``: 1000 resamples, seed 0, 2.5th-97.5th percentiles).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from score_upstream.atomic import atomic_write_bytes
from score_upstream.qbe.bootstrap import N_RESAMPLES, SEED, bootstrap_stdlist
from score_upstream.qbe.twv import STDLIST_NAME, TWVError, parse_score_out, read_ground_truth, score_twv, write_score_out

RESULT_NAME = "qbe_result.json"
PROTOCOLS = ("best-dev-layer", "fixed-layer")  # spellings of score_upstream.report.results
_LAYER_DIR = re.compile(r"^layer(\d+)$")  # score-qbe writes OUT/layer<k>/


class QbeProtocolError(ValueError):
    """Missing or unreadable per-layer QbE scores."""


def layer_scores(split_dir: str | Path) -> dict[int, float]:
    """MTWV (maxTWV) per layer from ``split_dir/layer<L>/score.out``, sorted by layer.

    ``layer<L>/official/score.out`` (the official QUESST 2014 tool's output) wins when present.

    Raises:
        QbeProtocolError: the folder is missing, holds no scored layer, or a score file is unreadable.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise QbeProtocolError(f"{split_dir}: no per-layer QbE output; run the search stage first")
    scores: dict[int, float] = {}
    for sub in sorted(split_dir.iterdir()):
        m = _LAYER_DIR.match(sub.name)
        if not m:
            continue
        # the QUESST Java tool's numbers when it ran (recipes/qbe.sh --official), else score-twv's
        score_file = sub / "official" / "score.out"
        if not score_file.is_file():
            score_file = sub / "score.out"
        if not score_file.is_file():
            raise QbeProtocolError(f"{score_file}: missing; score the layer with score-twv {sub} GROUNDTRUTH_DIR")
        try:
            scores[int(m.group(1))] = parse_score_out(score_file)["maxTWV"]
        except TWVError as e:
            raise QbeProtocolError(str(e)) from None
    if not scores:
        raise QbeProtocolError(f"{split_dir}: no layer<L>/score.out found; run the search and scoring stages first")
    return dict(sorted(scores.items()))


def score_layers(split_dir: str | Path, groundtruth_dir: str | Path) -> dict[int, str]:
    """Score every ``split_dir/layer<L>/benchmark.stdlist.xml`` as ``score-twv`` does, in one process.

    Writes each layer's ``score.out`` and returns {layer: the ``actTWV: .. maxTWV: .. Threshold: ..`` line}.
    """
    split_dir = Path(split_dir)
    lines = {}
    for sub in sorted(split_dir.iterdir()) if split_dir.is_dir() else []:
        m = _LAYER_DIR.match(sub.name)
        if m and (sub / STDLIST_NAME).is_file():
            result = score_twv(sub, groundtruth_dir)
            write_score_out(result, sub)
            lines[int(m.group(1))] = result.line()
    if not lines:
        raise QbeProtocolError(f"{split_dir}: no layer<L>/{STDLIST_NAME}; the search stage did not finish")
    return dict(sorted(lines.items()))


def select_layer(dev_dir: str | Path) -> tuple[int, float]:
    """The layer with the largest dev MTWV (the lowest such layer on ties) and that MTWV."""
    scores = layer_scores(dev_dir)
    best = max(scores.values())
    layer = next(k for k, v in scores.items() if v == best)
    return layer, best


def last_layer(ckpt: str | Path) -> int:
    """Index of the last hidden state of a HuBERT or WavLM checkpoint (= its transformer layer count).

    s3prl's HuBERT and WavLM experts (``hubert_local``, ``wavlm_local``, ``score_hubert``, ``score_wavlm``)
    return the CNN output projected (index 0) and each layer's output, so the last one is ``encoder_layers``
    (12 for Base). Read through the family-aware loader, from any format it reads, without building the network.
    """
    from score_upstream.models.loader import read_shape

    return read_shape(ckpt).last_hidden_state


def ground_truth_scope(quesst_root: str | Path, split: str = "eval") -> str:
    """``"english-only"`` when the ground truth holds only the English queries, else ``"all-queries"``.

    s3prl searches only the ``nnenglish`` queries; the official QUESST 2014 key also counts the
    queries of the other languages, which caps SUPERB's MTWV well below 1. The two are not comparable.
    """
    from score_upstream.s3prl.superb.qbe.prepare import english_entries, groundtruth_dir

    root = Path(quesst_root)
    gt = read_ground_truth(groundtruth_dir(root, split))
    english = {p.stem for p in english_entries(root, f"language_key_{split}.lst")}
    n_queries = len(gt.queries) + gt.n_dropped_queries
    return "english-only" if n_queries <= len(english) and set(gt.queries) <= english else "all-queries"


def eval_interval(qbe_dir: str | Path, layer: int, groundtruth_dir: str | Path, resamples: int = N_RESAMPLES,
                  seed: int = SEED) -> dict:
    """Bootstrap interval over queries of the eval MTWV of ``layer`` (``qbe_dir/eval/layer<L>``).

    Returns:
        ``{"eval_mtwv_interval": [low, high], "eval_mtwv_sd", "bootstrap": {"resamples", "seed", "level",
        "unit", "n_queries"}}``, computed with score-twv's scoring of the layer's ``benchmark.stdlist.xml``.
    """
    stdlist = Path(qbe_dir) / "eval" / f"layer{layer}" / STDLIST_NAME
    if not stdlist.is_file():
        raise QbeProtocolError(f"{stdlist}: missing; the eval search of layer {layer} did not run")
    ci = bootstrap_stdlist(stdlist, groundtruth_dir, resamples, seed)
    return {
        "eval_mtwv_interval": [ci.low, ci.high],
        "eval_mtwv_sd": ci.sd,
        "bootstrap": {"resamples": ci.resamples, "seed": ci.seed, "level": ci.level, "unit": "query",
                      "n_queries": ci.n_queries},
    }


def report(qbe_dir: str | Path, layer: int, protocol: str, scope: str, groundtruth_dir: str | Path | None = None,
           last: int | None = None, resamples: int = N_RESAMPLES, seed: int = SEED) -> dict:
    """Write ``qbe_dir/qbe_result.json`` from the dev and eval scores of ``layer`` (and of the last layer).

    Args:
        groundtruth_dir: the eval ground truth; given, each reported eval MTWV gets its bootstrap interval
            over queries (:func:`eval_interval`).
        last: index of the model's last hidden state; given, its eval MTWV is reported beside ``layer``
            (SCORE moves only the last layers, which the best-dev-layer protocol may not pick).

    Returns:
        ``{"layer", "dev_mtwv", "eval_mtwv", "protocol", "scope", "dev_mtwv_per_layer", "scorer"}``
        (``scorer``: ``official`` when the QUESST Java tool's score.out was used, else ``score-twv``), plus
        ``eval_mtwv_interval`` ([low, high]), ``eval_mtwv_sd`` and ``bootstrap`` with ``groundtruth_dir``, and
        ``last_layer`` (``{"layer", "dev_mtwv", "eval_mtwv", "scorer"}`` + the same interval keys; ``dev_mtwv``
        null when dev did not search it) with ``last``.
    """
    if protocol not in PROTOCOLS:
        raise QbeProtocolError(f"protocol {protocol!r} unknown; expected one of {PROTOCOLS}")
    qbe_dir = Path(qbe_dir)
    dev = layer_scores(qbe_dir / "dev")
    evals = layer_scores(qbe_dir / "eval")
    for split, scores in (("dev", dev), ("eval", evals)):
        if layer not in scores:
            raise QbeProtocolError(
                f"{qbe_dir / split}: no score for layer {layer} (have {sorted(scores)}); run its search and scoring"
            )
    if last is not None and last not in evals:
        raise QbeProtocolError(f"{qbe_dir / 'eval'}: no score for the last layer {last} (have {sorted(evals)}); run its search")

    def scorer(k: int) -> str:
        return "official" if (qbe_dir / "eval" / f"layer{k}" / "official" / "score.out").is_file() else "score-twv"

    result = {
        "layer": layer,
        "dev_mtwv": dev[layer],
        "eval_mtwv": evals[layer],
        "protocol": protocol,
        "scope": scope,
        "dev_mtwv_per_layer": {str(k): v for k, v in dev.items()},
        "scorer": scorer(layer),
    }
    if groundtruth_dir is not None:
        result.update(eval_interval(qbe_dir, layer, groundtruth_dir, resamples, seed))
    if last is not None:
        result["last_layer"] = {"layer": last, "dev_mtwv": dev.get(last), "eval_mtwv": evals[last], "scorer": scorer(last)}
        if groundtruth_dir is not None:
            interval = eval_interval(qbe_dir, last, groundtruth_dir, resamples, seed)
            interval.pop("bootstrap")  # the same settings as the selected layer's
            result["last_layer"].update(interval)
    atomic_write_bytes((json.dumps(result, indent=2) + "\n").encode(), qbe_dir / RESULT_NAME)
    return result


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_sel = sub.add_parser("select", help="print the layer with the best dev MTWV")
    p_sel.add_argument("dev_dir", help="folder holding layer<L>/score.out of the dev queries")
    p_rep = sub.add_parser("report", help=f"write QBE_DIR/{RESULT_NAME}")
    p_rep.add_argument("qbe_dir", help="folder holding dev/ and eval/ layer<L>/score.out")
    p_rep.add_argument("--layer", type=int, required=True, help="the reported layer")
    p_rep.add_argument("--protocol", choices=PROTOCOLS, required=True, help="how the layer was chosen")
    p_rep.add_argument("--quesst-root", required=True, help="quesst14Database folder (its eval ground truth: scope, intervals)")
    p_rep.add_argument("--last-layer", type=int, default=None, help="also report this layer (the model's last)")
    p_rep.add_argument("--resamples", type=int, default=N_RESAMPLES, help="bootstrap resamples over queries")
    p_rep.add_argument("--seed", type=int, default=SEED, help="seed of the bootstrap resampling")
    p_score = sub.add_parser("score", help="score-twv on every layer<L>/ of a split folder, in one process")
    p_score.add_argument("split_dir", help="folder holding layer<L>/benchmark.stdlist.xml")
    p_score.add_argument("groundtruth_dir", help="scoring/groundtruth_quesst14_<split> of the database")
    p_last = sub.add_parser("last-layer", help="print the index of a checkpoint's last hidden state")
    p_last.add_argument("ckpt", help="HuBERT or WavLM checkpoint (any format score_upstream.models.loader reads)")
    args = parser.parse_args(argv)
    try:
        if args.command == "score":
            for layer, line in score_layers(args.split_dir, args.groundtruth_dir).items():
                print(f"layer {layer}: {line}")
        elif args.command == "last-layer":
            try:
                print(last_layer(args.ckpt))
            except (OSError, ValueError, RuntimeError, KeyError) as e:  # any unreadable checkpoint
                raise QbeProtocolError(f"{args.ckpt}: cannot read its layer count ({e})") from None
        elif args.command == "select":
            layer, mtwv = select_layer(args.dev_dir)
            print(f"best dev layer {layer} (MTWV {mtwv:.4f}) of {len(layer_scores(args.dev_dir))}", file=sys.stderr)
            print(layer)
        else:
            from score_upstream.s3prl.superb.qbe.prepare import groundtruth_dir

            scope = ground_truth_scope(args.quesst_root)
            gt = groundtruth_dir(Path(args.quesst_root), "eval")
            result = report(args.qbe_dir, args.layer, args.protocol, scope, gt, args.last_layer, args.resamples, args.seed)
            for name, entry in (("", result), ("last ", result.get("last_layer"))):
                if entry is None:
                    continue
                low, high = entry["eval_mtwv_interval"]
                dev = "n/a" if entry["dev_mtwv"] is None else f"{entry['dev_mtwv']:.4f}"
                print(f"QbE {name}layer {entry['layer']} ({result['protocol']}): dev MTWV {dev}, eval MTWV "
                      f"{entry['eval_mtwv']:.4f} [{low:.4f}, {high:.4f}] ({scope} ground truth)")
            print(f"-> {Path(args.qbe_dir) / RESULT_NAME}")
    except (QbeProtocolError, TWVError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
