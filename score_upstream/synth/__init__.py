"""Synthetic speech corpora (espeak-ng) in the LibriSpeech and QUESST 2014 layouts.

Run it from the shell or from Python::

    score-synth --out data/synth --size tiny --seed 0

    from score_upstream.synth import generate
    corpus = generate("data/synth", seed=0, size="tiny")
    corpus.librispeech, corpus.quesst, corpus.lexicon

Output under ``out``: ``LibriSpeech/`` (train-clean-100, dev-clean, test-clean), ``librispeech-lexicon.txt``
(stress-marked ARPAbet, the 71-phone SUPERB PR inventory), ``quesst14Database/`` and
``synth_manifest.json`` (every utterance's text, speaker, length and, for QbE, chunk timings). The same
seed and size give byte-identical files whatever ``jobs`` is.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from score_upstream.atomic import atomic_write_bytes
from score_upstream.s3prl.phones import write_lexicon
from score_upstream.synth.espeak import SynthError, espeak_binary
from score_upstream.synth.lexicon import build_lexicon
from score_upstream.synth.librispeech import plan_librispeech, write_librispeech
from score_upstream.synth.quesst import plan_quesst, write_quesst
from score_upstream.synth.render import render_all
from score_upstream.synth.text import load_vocabulary
from score_upstream.synth.voices import draw_speakers

__all__ = ["SIZES", "SynthCorpus", "SynthError", "SynthSize", "corpus_voices", "generate"]

logger = logging.getLogger(__name__)
MANIFEST_VERSION = 2
# present while a corpus is being written: its folders are score-synth's even before the manifest exists
STARTED_MARKER = ".score-synth-started"


@dataclass(frozen=True)
class SynthSize:
    """How much to generate.

    Attributes:
        speakers: LibriSpeech speakers per split (train, dev, test).
        utts: utterances per speaker per split (train, dev, test).
        clauses: clause-count range of a LibriSpeech sentence (a clause is 5-9 words).
        queries: QbE queries (dev, eval).
        docs_per_query: range of documents each query is planted in.
        negative_docs: documents without any query.
        doc_voices / query_voices: distinct voices speaking documents / queries.
        query_style: ``(rate_ratio, pitch_delta)`` of each query's speaking rate and pitch against its
            voice's (see :func:`score_upstream.synth.quesst.plan_quesst`); ``(1.0, 0)``: as the voice speaks.
    """

    speakers: tuple[int, int, int]
    utts: tuple[int, int, int]
    clauses: tuple[int, int]
    queries: tuple[int, int]
    docs_per_query: tuple[int, int]
    negative_docs: int
    doc_voices: int
    query_voices: int
    query_style: tuple[float, int] = (1.0, 0)


SIZES: dict[str, SynthSize] = {
    # tests: ~40 utterances, ~30 documents; seconds to make
    "tiny": SynthSize((3, 2, 2), (8, 4, 4), (1, 1), (6, 6), (1, 2), 10, 3, 2),
    # a quick look: ~6 min of training speech
    "small": SynthSize((6, 3, 3), (12, 6, 6), (1, 2), (10, 10), (2, 3), 30, 4, 3),
    # the demo: ~10 min of training speech; 100 queries spoken 0.67-1.5x as fast as their voice, pitch +-20,
    # so that query and occurrence differ in speaking rate and pitch (what SCORE targets) as well as in
    # voice; enough queries to tell checkpoints apart (20 gave differences of ~0.05 that look like noise). The speaker counts are those of earlier
    # versions: the demo's voices, which the pre-training corpus avoids, stay the same.
    "demo": SynthSize((10, 4, 4), (16, 8, 8), (1, 2), (50, 50), (2, 3), 60, 6, 4, (1.5, 20)),
    # HuBERT pre-training: ~3.7 h from 60 speakers (use --disjoint-from to keep the demo's voices out);
    # the QbE part is a token one
    "pretrain": SynthSize((60, 4, 1), (45, 10, 2), (1, 2), (1, 1), (1, 1), 1, 1, 1),
}


@dataclass
class SynthCorpus:
    """Where a generated corpus lives and how big it is."""

    root: Path
    librispeech: Path
    quesst: Path
    lexicon: Path
    manifest: Path
    seed: int
    size: str
    counts: dict[str, int] = field(default_factory=dict)
    hours: dict[str, float] = field(default_factory=dict)
    voices: list[str] = field(default_factory=list)


def _corpus(root: Path, manifest: dict) -> SynthCorpus:
    return SynthCorpus(
        root=root, librispeech=root / "LibriSpeech", quesst=root / "quesst14Database",
        lexicon=root / "librispeech-lexicon.txt", manifest=root / "synth_manifest.json",
        seed=manifest["seed"], size=manifest["size"], counts=manifest["counts"], hours=manifest["hours"],
        voices=manifest["voices"],
    )


def corpus_voices(seed: int, size: str) -> set[str]:
    """The espeak-ng voices (e.g. ``"en-gb+f2"``) that :func:`generate` gives a ``(seed, size)`` corpus.

    Replays the speaker draw only (the first use of the corpus's generator); nothing is synthesised.
    """
    if size not in SIZES:
        raise SynthError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    spec = SIZES[size]
    n = sum(spec.speakers) + spec.doc_voices + spec.query_voices
    return {s.voice for s in draw_speakers(n, random.Random(seed))}


def _read_manifest(path: Path) -> dict | None:
    """The corpus manifest at ``path``, or None where there is none or it is not score-synth's."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and {"version", "seed", "size"} <= data.keys() else None


def generate(out_dir: str | os.PathLike, seed: int = 0, size: str = "tiny", jobs: int | None = None,
             overwrite: bool = False, disjoint_from: list[tuple[str, int]] | tuple = ()) -> SynthCorpus:
    """Generate the LibriSpeech-layout corpus, its lexicon and the QUESST-layout corpus under ``out_dir``.

    Args:
        out_dir: output root (created).
        seed: seeds every random choice; same seed and size -> byte-identical files.
        size: a key of :data:`SIZES`.
        jobs: parallel espeak-ng processes (default: CPU count); never changes the output.
        overwrite: replace a corpus made with other settings; without it that is an error.
        disjoint_from: ``(size, seed)`` corpora whose voices this one must not use (e.g. the demo's, so a
            model pre-trained on this corpus never heard the demo's speakers or queries).

    Returns:
        the :class:`SynthCorpus`. A corpus already complete with the same seed and size is reused.

    Raises:
        SynthError: espeak-ng missing or failing, unknown size, or ``out_dir`` holding another corpus.
    """
    if size not in SIZES:
        raise SynthError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    spec = SIZES[size]
    root = Path(out_dir)
    manifest_path = root / "synth_manifest.json"
    started = root / STARTED_MARKER
    old = _read_manifest(manifest_path)
    if old is not None:
        want = (MANIFEST_VERSION, seed, size, json.loads(json.dumps(asdict(spec))), [list(d) for d in disjoint_from])
        if (old.get("version"), old.get("seed"), old.get("size"), old.get("spec"), old.get("disjoint_from", [])) == want:
            logger.info("%s already holds the %s corpus for seed %d; reusing it", root, size, seed)
            return _corpus(root, old)
    targets = [root / "LibriSpeech", root / "quesst14Database", root / "librispeech-lexicon.txt", manifest_path]
    present = [t for t in targets if t.exists()]
    if present and not overwrite:
        raise SynthError(
            f"{root} already holds {present[0].name} from another run; pass --overwrite or pick a new --out"
        )
    if present and old is None and not started.is_file():
        # --overwrite deletes only what this command made: a real LibriSpeech or QUESST copy under the
        # same root has neither our manifest nor our start marker
        raise SynthError(
            f"refusing to delete {present[0]}: {root} holds no {manifest_path.name} (nor {STARTED_MARKER}) "
            "written by score-synth, so it was not made by it; move it away or pick another --out"
        )
    espeak_binary()
    root.mkdir(parents=True, exist_ok=True)
    # written before anything is deleted or made: an interrupted run's partial corpus stays ours to replace
    atomic_write_bytes(json.dumps({"seed": seed, "size": size}).encode() + b"\n", started)
    for t in present:
        shutil.rmtree(t) if t.is_dir() else t.unlink()
    rng = random.Random(seed)

    vocab = load_vocabulary()
    lexicon, dropped = build_lexicon(vocab.words)
    if dropped:
        vocab = vocab.restricted({w.lower() for w in lexicon})
    n_ls = sum(spec.speakers)
    exclude = set().union(*(corpus_voices(s_seed, s_size) for s_size, s_seed in disjoint_from))
    try:
        speakers = draw_speakers(n_ls + spec.doc_voices + spec.query_voices, rng, frozenset(exclude))
    except ValueError as e:
        raise SynthError(f"size {size!r}: {e}") from None
    splits = ("train-clean-100", "dev-clean", "test-clean")
    by_split, start = {}, 0
    for split, n in zip(splits, spec.speakers):
        by_split[split], start = speakers[start : start + n], start + n
    doc_voices = speakers[n_ls : n_ls + spec.doc_voices]
    query_voices = speakers[n_ls + spec.doc_voices :]

    ls_plan = plan_librispeech(vocab, by_split, dict(zip(splits, spec.utts)), spec.clauses, rng)
    queries, docs = plan_quesst(vocab, doc_voices, query_voices, dict(zip(("dev", "eval"), spec.queries)),
                                spec.docs_per_query, spec.negative_docs, rng, spec.query_style)
    audio = render_all([u.job for u in ls_plan] + [q.job for q in queries] + [d.job for d in docs], jobs)
    ls_audio = audio[: len(ls_plan)]
    q_audio = audio[len(ls_plan) : len(ls_plan) + len(queries)]
    d_audio = audio[len(ls_plan) + len(queries) :]

    ls_records = write_librispeech(root, ls_plan, ls_audio)
    used = sorted({w.upper() for u in ls_plan for w in u.words} | {w.upper() for q in queries for w in q.words}
                  | {w.upper() for d in docs for c in d.chunks for w in c})
    write_lexicon(root / "librispeech-lexicon.txt", {w: lexicon[w] for w in used})
    qbe_records = write_quesst(root, queries, q_audio, docs, d_audio)

    counts = {s: sum(1 for u in ls_plan if u.split == s) for s in splits}
    counts.update({f"speakers_{s}": len(by_split[s]) for s in splits})
    counts.update({"documents": len(docs), "dev_queries": spec.queries[0], "eval_queries": spec.queries[1],
                   "lexicon_words": len(used), "vocabulary_dropped": len(dropped)})
    hours = {s: round(sum(a.duration for u, a in zip(ls_plan, ls_audio) if u.split == s) / 3600, 5) for s in splits}
    hours["documents"] = round(sum(a.duration for a in d_audio) / 3600, 5)
    hours["queries"] = round(sum(a.duration for a in q_audio) / 3600, 5)
    manifest = {
        "version": MANIFEST_VERSION, "seed": seed, "size": size, "spec": asdict(spec), "counts": counts,
        "hours": hours, "voices": sorted(s.name for s in speakers), "disjoint_from": [list(d) for d in disjoint_from], "librispeech": ls_records, "quesst": qbe_records,
    }
    # written last: its presence marks a complete corpus
    atomic_write_bytes((json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(), manifest_path)
    started.unlink()
    logger.info("wrote %s corpus (seed %d) to %s: %s", size, seed, root, counts)
    return _corpus(root, manifest)
