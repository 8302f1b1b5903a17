"""Per-layer invariance to SCORE's speed and pitch perturbation, relative to a change of content.

Run it as::

    score-invariance --model HuBERT=exp/demo/hubert.pt --model SCORE=exp/demo/score/score_hubert.pt \
        --split data/demo/LibriSpeech/test-clean --utterances 24 --seed 0 --out results/demo

Writes ``OUT/invariance.md``, ``OUT/invariance.csv`` and ``OUT/invariance.png``.

What it measures. For each of ``--utterances`` held-out utterances x (drawn with ``--seed``), ``--views``
perturbed views v are made with SCORE's perturbation restricted to real changes (speed 0.9 or 1.1, then
+/-2 semitones; :class:`~score_upstream.augment.perturb.ScorePerturbation` with an explicit generator)
and ``--references`` other utterances y of the same set with a different transcript are drawn as the
content-changing reference. Each model sees every waveform alone (batch 1, eval mode), and its hidden
states are taken as s3prl's HuBERT expert gives them (layer 0 = input of the first transformer layer,
layer L = encoder output). Per hidden state, the distance between two frame sequences is the
DTW-aligned mean cosine distance (:func:`dtw_mean_distance`), and::

    ratio = mean_x mean_v d(x, v)  /  mean_x mean_y d(x, y)

0 = the perturbation does not move the representation at all; 1 = it moves it as far as saying something
else. Lower is more invariant while the other utterances stay apart. The interval is a percentile
bootstrap over utterances (``--bootstrap`` resamples, generator seeded with ``--seed``), so a rerun gives
the same numbers. All models see the same utterances, views and references.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from score_upstream.report.provenance import display_path, header_lines
from score_upstream.report.render import markdown_table, provenance_block, write_csv, write_text

logger = logging.getLogger(__name__)

__all__ = ["InvarianceError", "Probe", "dtw_mean_distance", "make_probe", "measure", "summarise", "write_report", "main"]


class InvarianceError(ValueError):
    """Bad ``score-invariance`` input: a model spec, a split folder or a setting."""


def dtw_mean_distance(cost: np.ndarray) -> np.ndarray:
    """Mean frame cost along the best monotone alignment of two sequences (exact DTW).

    Steps (1, 0), (0, 1) and (1, 1); a diagonal step and the first cell weigh 2, the other steps 1
    (Sakoe & Chiba's symmetric form), so every path from (0, 0) to (N-1, M-1) has total weight N + M and
    ``min_path sum(weight * cost) / (N + M)`` is a weighted mean of the aligned costs: a constant cost c
    gives c, identical sequences with zero self-cost give 0.

    The recursion runs over anti-diagonals for every item of the batch at once, keeping two diagonals:
    memory is the cost matrix plus O(N) per item.

    Args:
        cost: (..., N, M) frame costs, e.g. cosine distances; float64 is used inside.

    Returns:
        (...) float64 distances.
    """
    cost = np.asarray(cost, dtype=np.float64)
    *batch, N, M = cost.shape
    if N == 0 or M == 0:
        raise InvarianceError(f"dtw_mean_distance needs non-empty sequences, got a cost matrix of {N} x {M}")
    # Batch innermost: the cells of one anti-diagonal are then (M-1) * B apart, each a run of B values.
    c = np.ascontiguousarray(cost.reshape(-1, N * M).T)
    B, gap = c.shape[1], max(M - 1, 1)
    # R(i, j) with 1-based cells and a virtual start R(0, 0) = 0, kept per diagonal k = i + j at slot i.
    before = np.full((N + 1, B), np.inf)
    before[0] = 0.0
    last = np.full((N + 1, B), np.inf)
    for k in range(2, N + M + 1):
        lo, hi = max(1, k - M), min(N, k - 1)
        first = (k - 2) + (lo - 1) * (M - 1)  # flat index of cell (lo-1, k-lo-1); the next is M-1 further
        cc = c[first : first + (hi - lo) * gap + 1 : gap]
        now = np.full((N + 1, B), np.inf)
        # R(i-1, j-1) is on diagonal k-2 at slot i-1; R(i-1, j) and R(i, j-1) on diagonal k-1 at i-1 and i.
        step = np.minimum(last[lo - 1 : hi], last[lo : hi + 1]) + cc
        now[lo : hi + 1] = np.minimum(before[lo - 1 : hi] + 2.0 * cc, step)
        before, last = last, now
    return (last[N] / (N + M)).reshape(batch)


def cosine_costs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(L, N, D) x (L, M, D) -> (L, N, M) cosine distances 1 - cos in float64, clamped at 0."""
    a = torch.nn.functional.normalize(a.double(), dim=-1)
    b = torch.nn.functional.normalize(b.double(), dim=-1)
    return (1.0 - a @ b.transpose(-1, -2)).clamp_min(0.0)


# ---------------------------------------------------------------- the probe set (shared by all models)


@dataclass
class Probe:
    """Held-out utterances, their perturbed views and their references, the same for every model.

    Attributes:
        ids: utterance ids (file stems).
        wavs: (T,) waveforms of the utterances.
        views: per utterance, its perturbed (T',) waveforms.
        view_draws: per utterance, ``(speed_factor, semitones)`` of each view.
        references: per utterance, indices of the other utterances it is compared with.
    """

    ids: list[str]
    wavs: list[torch.Tensor]
    views: list[list[torch.Tensor]]
    view_draws: list[list[tuple[float, float]]]
    references: list[list[int]]


def read_transcripts(split: Path) -> dict[str, str]:
    """``utt -> text`` from every ``*.trans.txt`` under a LibriSpeech split (``121-123-0001 SOME WORDS``)."""
    texts = {}
    for trans in sorted(split.glob("*/*/*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt, _, text = line.strip().partition(" ")
            if utt:
                texts[utt] = text.strip()
    return texts


def make_probe(split: str | Path, utterances: int, views: int, references: int, seed: int,
               perturbation=None) -> Probe:
    """Draw the probe set from a LibriSpeech-layout split folder (``SPEAKER/CHAPTER/*.flac``).

    Args:
        split: the split folder, e.g. ``data/demo/LibriSpeech/test-clean``.
        utterances, views, references: how many utterances, views per utterance, references per utterance.
        seed: seeds the one ``torch.Generator`` used for every draw, in a fixed order.
        perturbation: a :class:`ScorePerturbation`; default speed {0.9, 1.1} then +/-2 semitones.
    """
    from score_upstream.audio import read_mono
    from score_upstream.augment.perturb import ScorePerturbation

    split = Path(split)
    files = sorted(split.glob("*/*/*.flac")) if split.is_dir() else []
    if not files:
        raise InvarianceError(f"{split}: no SPEAKER/CHAPTER/*.flac files; pass a LibriSpeech split folder "
                              "such as data/demo/LibriSpeech/test-clean")
    if utterances < 2 or views < 1 or references < 1:
        raise InvarianceError(f"need >= 2 utterances, >= 1 view and >= 1 reference; got {utterances}, {views}, {references}")
    if utterances > len(files):
        logger.warning("%s holds %d utterances; using all of them instead of %d", split, len(files), utterances)
    gen = torch.Generator().manual_seed(int(seed))
    chosen = sorted(torch.randperm(len(files), generator=gen)[: min(utterances, len(files))].tolist())
    files = [files[i] for i in chosen]
    ids = [f.stem for f in files]
    texts = read_transcripts(split)
    perturbation = perturbation or ScorePerturbation(speed_factors=(0.9, 1.1), semitones=(-2.0, 2.0))
    wavs = [read_mono(f) for f in files]
    all_views, all_draws, all_refs = [], [], []
    for u, wav in enumerate(wavs):
        made = [perturbation(wav, gen) for _ in range(views)]
        all_views.append([v.wav for v in made])
        all_draws.append([(v.speed_factor, v.semitones) for v in made])
        # A reference must say something else: same-text utterances (other voices) are left out.
        others = [r for r in range(len(wavs)) if r != u and (texts.get(ids[r]) is None or texts.get(ids[r]) != texts.get(ids[u]))]
        if not others:
            raise InvarianceError(f"{ids[u]}: no other utterance with a different transcript among {len(wavs)}; draw more")
        order = torch.randperm(len(others), generator=gen)[:references].tolist()
        all_refs.append(sorted(others[i] for i in order))
    return Probe(ids, wavs, all_views, all_draws, all_refs)


# ---------------------------------------------------------------- distances per model and layer


def hidden_states(expert, wav: torch.Tensor) -> torch.Tensor:
    """(L+1, T, D) hidden states of one waveform alone (batch 1)."""
    return torch.stack([h[0] for h in expert([wav])["hidden_states"]])


def measure(expert, probe: Probe) -> tuple[np.ndarray, np.ndarray]:
    """Per utterance and layer: mean DTW distance to its views and to its references.

    Args:
        expert: a callable taking ``[wav]`` and returning ``{"hidden_states": [(1, T, D)] * (L+1)}``
            (e.g. :class:`~score_upstream.s3prl.upstream.expert.UpstreamExpert`), used in eval mode
            without grad.

    Returns:
        ``(perturbed, other)``, each (U, L+1) float64.
    """
    was_training = getattr(expert, "training", False)
    if hasattr(expert, "eval"):
        expert.eval()
    try:
        with torch.no_grad():
            feats = [hidden_states(expert, w) for w in probe.wavs]
            perturbed, other = [], []
            for u, x in enumerate(feats):
                views = [hidden_states(expert, v) for v in probe.views[u]]
                others = [feats[r] for r in probe.references[u]]
                # one DTW per pair and all layers at once: (L+1,) distances each
                perturbed.append(np.mean([dtw_mean_distance(cosine_costs(x, y).numpy()) for y in views], axis=0))
                other.append(np.mean([dtw_mean_distance(cosine_costs(x, y).numpy()) for y in others], axis=0))
    finally:
        if hasattr(expert, "train"):
            expert.train(was_training)
    return np.stack(perturbed), np.stack(other)


def summarise(perturbed: np.ndarray, other: np.ndarray, bootstrap: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, np.ndarray]:
    """Ratio of means per layer with a percentile bootstrap interval over utterances.

    Args:
        perturbed, other: (U, L+1) per-utterance mean distances (from :func:`measure`).
        bootstrap: resamples of the U utterances with replacement.
        seed: seed of the resampling generator (numpy ``default_rng``).
        level: interval coverage.

    Returns:
        ``{"ratio", "lo", "hi", "d_perturbed", "d_other"}``, each (L+1,).
    """
    U = perturbed.shape[0]
    idx = np.random.default_rng(seed).integers(0, U, size=(bootstrap, U))
    boot = perturbed[idx].sum(1) / other[idx].sum(1)  # (bootstrap, L+1)
    alpha = (1.0 - level) / 2
    return {
        "ratio": perturbed.sum(0) / other.sum(0),
        "lo": np.quantile(boot, alpha, axis=0),
        "hi": np.quantile(boot, 1.0 - alpha, axis=0),
        "d_perturbed": perturbed.mean(0),
        "d_other": other.mean(0),
    }


# ---------------------------------------------------------------- outputs


def table_rows(results: dict[str, dict[str, np.ndarray]], utterances: int) -> list[dict]:
    """One CSV row per (model, layer)."""
    rows = []
    for name, s in results.items():
        for layer in range(len(s["ratio"])):
            rows.append({"model": name, "layer": layer, "ratio": float(s["ratio"][layer]),
                         "ratio_lo": float(s["lo"][layer]), "ratio_hi": float(s["hi"][layer]),
                         "d_perturbed": float(s["d_perturbed"][layer]), "d_other": float(s["d_other"][layer]),
                         "utterances": utterances})
    return rows


def markdown(rows: list[dict], header: list[str], title: str, setting: str) -> str:
    """A layer x model table of ``ratio [lo, hi]``."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    layers = sorted({r["layer"] for r in rows})
    cell = {(r["model"], r["layer"]): f"{r['ratio']:.3f} [{r['ratio_lo']:.3f}, {r['ratio_hi']:.3f}]" for r in rows}
    out = provenance_block(title, header) + [setting, ""]
    table = [[layer] + [cell.get((m, layer), "n/a") for m in models] for layer in layers]
    out += markdown_table(["layer", *models], table)
    out += ["", "ratio = mean DTW cosine distance to perturbed views / mean distance to other utterances, "
            "[95% bootstrap interval over utterances]; lower = more invariant. Layer 0 = input of the first "
            "transformer layer, the last = encoder output.", ""]
    return "\n".join(out)


def plot(rows: list[dict], path: Path, title: str) -> Path:
    """One line per model across layers, with the bootstrap interval as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=120)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8, label="as far as another utterance")
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        x = np.array([r["layer"] for r in mine])
        y = np.array([r["ratio"] for r in mine])
        err = np.array([[r["ratio"] - r["ratio_lo"] for r in mine], [r["ratio_hi"] - r["ratio"] for r in mine]])
        ax.errorbar(x, y, yerr=np.clip(err, 0, None), marker="o", capsize=3, label=name)
    ax.set_xlabel("hidden state (0 = input of layer 1, last = encoder output)")
    ax.set_ylabel("d(x, perturbed x) / d(x, other utterance)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(rows: list[dict], out: Path, header: list[str], title: str, setting: str) -> Path:
    """``out/invariance.{csv,md,png}`` of :func:`table_rows`'s rows; returns the Markdown file."""
    write_csv(rows, out / "invariance.csv", header)
    plot(rows, out / "invariance.png", title)
    return write_text(markdown(rows, header, title, setting), out / "invariance.md")


def parse_model(spec: str) -> tuple[str, Path]:
    """``NAME=CKPT`` -> (name, path); the checkpoint must exist."""
    name, sep, ckpt = spec.partition("=")
    if not sep or not name or not ckpt:
        raise InvarianceError(f"bad --model {spec!r}: expected NAME=CKPT, e.g. HuBERT=exp/demo/hubert.pt")
    if not Path(ckpt).exists():
        raise InvarianceError(f"--model {name}: checkpoint {ckpt} not found")
    return name, Path(ckpt)


def main(argv: list[str] | None = None) -> int:
    """``score-invariance --model NAME=CKPT... --split DIR [--utterances N] [--seed S] [--out DIR]``."""
    from score_upstream.native import keep_freed_memory

    keep_freed_memory()  # before the first large tensor: freed activations are reused, not re-faulted
    from score_upstream.cliparse import ScoreArgumentParser

    parser = ScoreArgumentParser(prog="score-invariance", description=__doc__.split("\n\n")[0], examples=[
        "score-invariance --model HuBERT=score_upstream/pretrained/hubert_small_synth.pt "
        "--model SCORE=exp/demo/score/score_hubert.pt --split data/demo/LibriSpeech/test-clean --out results/demo"])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=CKPT",
                        help="a model to measure (any HuBERT checkpoint load_hubert reads); repeatable")
    parser.add_argument("--split", required=True, help="held-out LibriSpeech split folder (SPEAKER/CHAPTER/*.flac)")
    parser.add_argument("--utterances", type=int, default=24, help="utterances drawn from the split [24]")
    parser.add_argument("--views", type=int, default=2, help="perturbed views per utterance [2]")
    parser.add_argument("--references", type=int, default=2, help="other utterances per utterance [2]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws and of the bootstrap [0]")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples [1000]")
    parser.add_argument("--pitch-method", choices=("reference", "fast"), default="reference",
                        help="pitch shift of the views (see score_upstream.augment.perturb) [reference]")
    parser.add_argument("--out", default="results", help="output folder [results]")
    parser.add_argument("--title", default="Invariance to speed and pitch perturbation, per layer")
    parser.add_argument("--banner", default="", help="warning line on top of the outputs, e.g. for demo numbers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from score_upstream.augment.perturb import ScorePerturbation
    from score_upstream.s3prl.upstream.expert import UpstreamExpert

    try:
        if not args.model:
            raise InvarianceError("no model given; pass --model NAME=CKPT (repeatable)")
        models = [parse_model(m) for m in args.model]
        if len({n for n, _ in models}) != len(models):
            raise InvarianceError(f"model names must differ, got {[n for n, _ in models]}")
        perturbation = ScorePerturbation(speed_factors=(0.9, 1.1), semitones=(-2.0, 2.0), pitch_method=args.pitch_method)
        probe = make_probe(args.split, args.utterances, args.views, args.references, args.seed, perturbation)
        results = {}
        for name, ckpt in models:
            t0 = time.perf_counter()
            perturbed, other = measure(UpstreamExpert(str(ckpt), cache_mb=0), probe)
            results[name] = summarise(perturbed, other, args.bootstrap, args.seed)
            logger.info("%s: %d utterances in %.1f s; ratio per layer %s", name, len(probe.ids),
                        time.perf_counter() - t0, " ".join(f"{r:.3f}" for r in results[name]["ratio"]))
    except InvarianceError as e:
        print(f"score-invariance: error: {e}", file=sys.stderr)
        return 2
    header = header_lines("score-invariance", argv, args.banner)
    setting = (f"{len(probe.ids)} utterances of `{display_path(args.split)}` (seed {args.seed}), {args.views} perturbed views each "
               f"(speed 0.9/1.1, then +/-2 semitones, {args.pitch_method} pitch shift) and {args.references} other "
               f"utterances with a different transcript; {args.bootstrap} bootstrap resamples.")
    title = f"{args.title} ({args.banner})" if args.banner else args.title
    md = write_report(table_rows(results, len(probe.ids)), Path(args.out), header, title, setting)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
