"""QUESST 2014 with an s3prl upstream: the ``score-qbe`` command, and s3prl's own ``quesst14_dtw`` path.

Run it on a QUESST 2014 tree, one ``benchmark.stdlist.xml`` per layer::

    score-qbe --upstream score_hubert --ckpt exp/score/score_hubert.pt \\
        --quesst-root data/quesst14Database --split dev --layers all --out exp/qbe/dev

Features come from s3prl's ``QUESST14Dataset`` (English queries, then English documents) and the
upstream's hidden states, as s3prl's runner feeds ``quesst14_dtw``. The search is
:func:`score_upstream.qbe.search.qbe_scores` by default; ``--impl s3prl`` runs s3prl's expert instead
(dtw-python per pair), and :func:`s3prl_qbe_scores` gives that path's unrounded scores for comparison.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch

from score_upstream.models.formats import CheckpointError
from score_upstream.qbe.search import QbeError, qbe_scores
from score_upstream.qbe.stdlist import MIN_QUERY_FRAMES, STDLIST_NAME, StdlistError, write_stdlist

log = logging.getLogger(__name__)

S3PRL_DTW_CONFIG = {  # s3prl's quesst14_dtw config.yaml, as shipped with its sources
    "max_workers": None,
    "feature_normalization": True,
    "silence_frame": None,
    "datarc": {"dataset_root": "", "num_workers": 0, "batch_size": 1},
    "dtwrc": {"dist_method": "cosine_exp", "minmax_norm": True, "step_pattern": "asymmetric", "subsequence": True},
}


# --------------------------------------------------------------------------- s3prl's path
def s3prl_expert_module():
    """Import s3prl's ``quesst14_dtw.expert`` through the project's compat layer (it also needs lxml)."""
    from score_upstream.s3prl import compat

    compat.apply()
    try:
        import s3prl.downstream.quesst14_dtw.expert as expert
    except ModuleNotFoundError as e:
        raise QbeError(f"cannot import s3prl's quesst14_dtw expert: {e}; pip install {e.name}") from None
    return expert


def _s3prl_normalise(query_feats, doc_feats):
    feats = torch.cat([f.float() for f in [*query_feats, *doc_feats]])
    mean, std = feats.mean(0), torch.clamp(feats.std(0), 1e-9)
    return [((q.float() - mean) / std).numpy() for q in query_feats], [((d.float() - mean) / std).numpy() for d in doc_feats]


def s3prl_qbe_scores(query_feats: Sequence[torch.Tensor], doc_feats: Sequence[torch.Tensor]) -> torch.Tensor:
    """The same (Q, Ndoc) float64 scores through s3prl's own ``match`` / ``cosine_exp`` (dtw-python per pair).

    Sequential and slow (the reference for tests and benchmarks); normalisation and z-norm are s3prl's
    ``log_records`` steps written out, because that method only writes XML rounded to 4 decimals.
    """
    expert = s3prl_expert_module()
    queries, docs = _s3prl_normalise(query_feats, doc_feats)
    dtwrc = {"step_pattern": "asymmetric", "keep_internals": False, "distance_only": False, "open_begin": True, "open_end": True}
    out = np.zeros((len(queries), len(docs)))
    for a, q in enumerate(queries):
        if len(q) < MIN_QUERY_FRAMES:
            continue
        for b, d in enumerate(docs):
            out[a, b] = expert.match(q, d, a, b, expert.cosine_exp, True, dtwrc)[2]
    out = (out - out.mean(1, keepdims=True)) / np.clip(out.std(1, keepdims=True), 1e-9, np.inf)
    return torch.from_numpy(out)


def run_s3prl_expert(query_feats, doc_feats, query_names, doc_names, out_dir, max_workers: int | None = None) -> Path:
    """Run s3prl's ``DownstreamExpert.log_records`` on features; returns its ``benchmark.stdlist.xml``.

    ``max_workers`` None = one dtw-python process per CPU, s3prl's default config.
    """
    expert = s3prl_expert_module()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = {**S3PRL_DTW_CONFIG, "max_workers": max_workers}
    module = expert.DownstreamExpert(int(query_feats[0].shape[-1]), config, str(out_dir))
    module.test_dataset = SimpleNamespace(n_queries=len(query_feats))
    records = {"features": [f.float() for f in [*query_feats, *doc_feats]], "audio_names": [*query_names, *doc_names]}
    module.log_records("dev", records)
    return out_dir / "benchmark.stdlist.xml"


# --------------------------------------------------------------------------- QUESST + upstream -> XML
def _parse_layers(text: str, n_hidden: int) -> list[int]:
    if text == "all":
        return list(range(n_hidden))
    try:
        layers = [int(x) for x in text.split(",")]
    except ValueError:
        raise QbeError(f"--layers {text!r}: expected 'all' or comma-separated integers such as 0,5,12") from None
    bad = [k for k in layers if not 0 <= k < n_hidden]
    if bad:
        raise QbeError(f"--layers {text!r}: layers {bad} do not exist; the upstream gives hidden states 0..{n_hidden - 1}")
    return layers


def quesst_dataset(root, split: str):
    """s3prl's own ``QUESST14Dataset`` (English queries of ``split``, then English documents)."""
    root = Path(root)
    if split not in ("dev", "eval"):
        raise QbeError(f"--split {split!r}: expected dev or eval")
    for lst in ("language_key_utterances.lst", f"language_key_{split}.lst"):
        if not (root / "scoring" / lst).is_file():
            raise QbeError(f"{root / 'scoring' / lst}: not found; --quesst-root must be the quesst14Database folder")
    from score_upstream.s3prl import compat

    compat.apply()  # s3prl's dataset reads audio through torchaudio.sox_effects
    from s3prl.downstream.quesst14_dtw.dataset import QUESST14Dataset

    return QUESST14Dataset(split, dataset_root=str(root))


@torch.no_grad()
def extract_hidden_states(expert, dataset, layers: Sequence[int], device) -> dict[int, list[torch.Tensor]]:
    """Hidden states ``layers`` of every utterance, as s3prl's runner feeds ``quesst14_dtw`` (batch 1).

    Returns {layer: [ (T_k, D) float32 CPU tensors in dataset order ]}; each trimmed to
    round(samples / downsample rate) frames like s3prl's ``Featurizer.tolist``.
    """
    rate = expert.get_downsample_rates("hidden_states") if hasattr(expert, "get_downsample_rates") else 320
    out: dict[int, list[torch.Tensor]] = {k: [] for k in layers}
    for n in range(len(dataset)):
        wav, _ = dataset[n]
        hidden = expert([torch.as_tensor(wav, dtype=torch.float32, device=device)])["hidden_states"]
        for k in layers:
            out[k].append(hidden[k][0, : round(len(wav) / rate)].float().cpu())
    return out


def score_quesst(args) -> list[Path]:
    """Extract features once per group of layers that fits ``args.max_feature_gb``, search, write XML."""
    import soundfile as sf
    import score_upstream

    score_upstream.register()  # the compatibility layer must come before s3prl.hub is imported
    import s3prl.hub as hub

    dataset = quesst_dataset(args.quesst_root, args.split)
    if not hasattr(hub, args.upstream):
        raise QbeError(f"--upstream {args.upstream!r}: not an s3prl.hub upstream (e.g. score_hubert, hubert_local)")
    from score_upstream.s3prl.vet import vet

    if args.ckpt is not None:
        vet(args.ckpt, args.upstream)  # safe readers first: s3prl's own upstreams unpickle and eval() what it holds
    expert = getattr(hub, args.upstream)(ckpt=args.ckpt).to(args.device).eval()
    probe = expert([torch.zeros(16000, device=args.device)])["hidden_states"]
    layers = _parse_layers(args.layers, len(probe))
    frames = sum(sf.info(str(p)).duration * 50 for p in dataset.data)
    per_layer_gb = frames * probe[0].shape[-1] * 4 / 1e9
    group = max(1, int(args.max_feature_gb // max(per_layer_gb, 1e-9)))
    names = [p.with_suffix("").name for p in dataset.data]
    nq, written = dataset.n_queries, []
    for s in range(0, len(layers), group):
        feats = extract_hidden_states(expert, dataset, layers[s : s + group], args.device)
        for k, f in feats.items():
            out = Path(args.out) / f"layer{k}"
            written.append(_search_and_write(f[:nq], f[nq:], names[:nq], names[nq:], out, args))
            log.info("layer %d: %s", k, written[-1])
    return written


def _search_and_write(queries, docs, query_names, doc_names, out: Path, args) -> Path:
    if args.impl == "s3prl":
        return run_s3prl_expert(queries, docs, query_names, doc_names, out, max_workers=args.workers)
    dtype = {"float32": torch.float32, "float64": torch.float64}[args.dtype]
    scores = qbe_scores(queries, docs, batch_docs=args.batch_docs, batch_queries=args.batch_queries, device=args.device, dtype=dtype)
    return write_stdlist(out / STDLIST_NAME, query_names, doc_names, scores, [len(q) for q in queries])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``score-qbe``: see the module docstring; ``score-qbe --help`` lists the options."""
    from score_upstream.native import keep_freed_memory

    keep_freed_memory()  # before the first large tensor: freed activations are reused, not re-faulted
    from score_upstream.cliparse import ScoreArgumentParser

    p = ScoreArgumentParser(prog="score-qbe", description="QUESST14 query-by-example search (s3prl quesst14_dtw scores).",
                            examples=["score-qbe --upstream score_hubert --ckpt exp/score/score_hubert.pt "
                                      "--quesst-root data/quesst14Database --split dev --out exp/qbe/dev"])
    p.add_alias("--quesst", "--quesst-root")
    p.add_argument("--upstream", default="score_hubert", help="s3prl.hub upstream name")
    p.add_argument("--ckpt", help="checkpoint passed to the upstream as ckpt")
    p.add_argument("--quesst-root", help="quesst14Database folder")
    p.add_argument("--split", default="dev", choices=["dev", "eval"])
    p.add_argument("--layers", default="all", help="'all' or comma-separated hidden-state indices, e.g. 0,5,12")
    p.add_argument("--features", help="instead of an upstream: a torch.save'd dict with query_names, doc_names, queries, docs")
    p.add_argument("--out", required=True, help="output folder: <out>/layer<k>/benchmark.stdlist.xml (or <out>/ with --features)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--impl", default="torch", choices=["torch", "s3prl"], help="our batched search or s3prl's dtw-python path")
    p.add_argument("--batch-docs", type=int, default=32, help="documents per search block")
    p.add_argument("--batch-queries", type=int, default=16, help="queries per search block")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="compute dtype of our search")
    p.add_argument("--workers", type=int, default=None, help="dtw-python processes of --impl s3prl; empty = all CPUs")
    p.add_argument("--max-feature-gb", type=float, default=8.0, help="memory for the features of the layers held at once")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.features:
            data = torch.load(args.features, weights_only=True)
            missing = {"query_names", "doc_names", "queries", "docs"} - set(data)
            if missing:
                raise QbeError(f"{args.features}: missing keys {sorted(missing)}")
            path = _search_and_write(data["queries"], data["docs"], data["query_names"], data["doc_names"], Path(args.out), args)
            print(path)
        else:
            if not (args.ckpt and args.quesst_root):
                raise QbeError("give --ckpt and --quesst-root (or --features FILE)")
            for path in score_quesst(args):
                print(path)
    except (QbeError, StdlistError, FileNotFoundError, CheckpointError) as e:
        print(f"score-qbe: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
