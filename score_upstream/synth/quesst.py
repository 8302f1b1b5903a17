"""A synthetic query-by-example corpus in the QUESST 2014 layout (language ``nnenglish``).

Layout (as the MediaEval 2014 database)::

    quesst14Database/
      Audio/quesst14_00001.wav                 documents, 8 kHz 16-bit mono WAV like the original
      dev_queries/quesst14_dev_0001.wav        queries, spoken by voices no document uses
      eval_queries/quesst14_eval_0001.wav
      scoring/language_key_utterances.lst      "quesst14Database/Audio/quesst14_00001.wav nnenglish"
      scoring/language_key_dev.lst             "quesst14Database/dev_queries/quesst14_dev_0001.wav nnenglish"
      scoring/language_key_eval.lst
      scoring/groundtruth_quesst14_dev/quesst14_dev.{ecf.xml,rttm,tlist.xml}
      scoring/groundtruth_quesst14_eval/quesst14_eval.{ecf.xml,rttm,tlist.xml}

s3prl's ``quesst14_dtw`` dataset strips the first path component of each ``.lst`` entry and resamples
to 16 kHz on load. Each query is a word or an adjective-noun pair planted in a few documents (spoken as
its own chunk, so its start and duration are exact); filler text never uses any query word, so the
planted occurrences are the only ones.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from pathlib import Path

from score_upstream.audio import write_audio
from score_upstream.synth.render import Rendered, RenderJob
from score_upstream.synth.text import Vocabulary, make_sentence
from score_upstream.synth.voices import Speaker

QUESST_SAMPLE_RATE = 8000
LANGUAGE = "nnenglish"
RATE_LIMITS = (80, 400)  # espeak-ng's usable words-per-minute range


@dataclass(frozen=True)
class Query:
    """A planned query: ``qid`` like ``quesst14_dev_0001``, its words and how it is spoken."""

    qid: str
    split: str
    words: tuple[str, ...]
    job: RenderJob


@dataclass(frozen=True)
class Document:
    """A planned document: its chunks' words and, when a query is planted, which chunk it is."""

    doc_id: str
    chunks: tuple[tuple[str, ...], ...]
    query_id: str | None
    query_chunk: int | None
    job: RenderJob


def _pick_queries(vocab: Vocabulary, n: int, rng: random.Random, phrase_ratio: float = 0.3) -> list[tuple[str, ...]]:
    """``n`` queries using pairwise distinct words: single nouns/adjectives of 5+ letters or adj+noun."""
    nouns = [w for w in vocab.by_category["noun"] if len(w) >= 5]
    adjs = [w for w in vocab.by_category["adj"] if len(w) >= 4]
    rng.shuffle(nouns)
    rng.shuffle(adjs)
    queries: list[tuple[str, ...]] = []
    used: set[str] = set()
    for _ in range(n):
        nouns = [w for w in nouns if w not in used]
        adjs = [w for w in adjs if w not in used]
        if adjs and nouns and rng.random() < phrase_ratio:
            q: tuple[str, ...] = (adjs.pop(), nouns.pop())
        elif nouns and (not adjs or rng.random() < 0.7):
            q = (nouns.pop(),)
        elif adjs:
            q = (adjs.pop(),)
        else:
            raise ValueError(f"the vocabulary has too few nouns/adjectives for {n} distinct queries")
        used.update(q)
        queries.append(q)
    return queries


def _restyle(speaker: Speaker, style: tuple[float, int], rng: random.Random) -> Speaker:
    """``speaker`` at a random rate and pitch within ``style`` (see :func:`plan_quesst`)."""
    ratio, delta = style
    if ratio == 1.0 and delta == 0:
        return speaker
    factor = math.exp(rng.uniform(-math.log(ratio), math.log(ratio)))
    rate = min(RATE_LIMITS[1], max(RATE_LIMITS[0], round(speaker.rate * factor)))
    pitch = min(99, max(0, speaker.pitch + rng.randint(-delta, delta)))
    return dataclasses.replace(speaker, rate=rate, pitch=pitch)


def plan_quesst(
    vocab: Vocabulary,
    doc_speakers: list[Speaker],
    query_speakers: list[Speaker],
    n_queries: dict[str, int],
    docs_per_query: tuple[int, int],
    n_negative_docs: int,
    rng: random.Random,
    query_style: tuple[float, int] = (1.0, 0),
) -> tuple[list[Query], list[Document]]:
    """Decide queries and documents.

    Args:
        vocab: words for queries and filler sentences.
        doc_speakers / query_speakers: disjoint voice sets.
        n_queries: ``{"dev": n, "eval": m}``.
        docs_per_query: inclusive range of documents each query is planted in.
        n_negative_docs: documents holding no query at all.
        rng: the only source of randomness.
        query_style: ``(rate_ratio, pitch_delta)``: each query is spoken at its voice's rate times a factor
            drawn log-uniformly from ``[1/rate_ratio, rate_ratio]`` and its pitch plus an integer from
            ``[-pitch_delta, pitch_delta]``, so queries and their occurrences differ in speaking rate and
            pitch as well as in voice. ``(1.0, 0)`` speaks them as the voice does (draws nothing).
    """
    all_q = _pick_queries(vocab, sum(n_queries.values()), rng)
    exclude = frozenset(w for q in all_q for w in q)
    queries: list[Query] = []
    for split in ("dev", "eval"):
        for i in range(n_queries[split]):
            words = all_q[len(queries)]
            job = RenderJob(
                chunks=(" ".join(words),),
                speaker=_restyle(rng.choice(query_speakers), query_style, rng),
                pauses=(round(rng.uniform(0.03, 0.12), 3), round(rng.uniform(0.03, 0.12), 3)),
                gain=round(rng.uniform(0.4, 0.9), 3),
                noise_seed=rng.getrandbits(32),
                sample_rate=QUESST_SAMPLE_RATE,
            )
            queries.append(Query(f"quesst14_{split}_{i + 1:04d}", split, words, job))
    contents: list[tuple[tuple[tuple[str, ...], ...], str | None, int | None]] = []
    for q in queries:
        for _ in range(rng.randint(*docs_per_query)):
            prefix = tuple(make_sentence(vocab, rng, (0, 1), exclude))
            suffix = tuple(make_sentence(vocab, rng, (0 if prefix else 1, 1), exclude))
            chunks = tuple(c for c in (prefix, q.words, suffix) if c)
            contents.append((chunks, q.qid, 1 if prefix else 0))
    for _ in range(n_negative_docs):
        contents.append(((tuple(make_sentence(vocab, rng, (1, 2), exclude)),), None, None))
    rng.shuffle(contents)
    docs = []
    for i, (chunks, qid, qchunk) in enumerate(contents):
        job = RenderJob(
            chunks=tuple(" ".join(c) for c in chunks),
            speaker=rng.choice(doc_speakers),
            pauses=tuple(round(rng.uniform(0.08, 0.3), 3) for _ in range(len(chunks) + 1)),
            gain=round(rng.uniform(0.3, 0.9), 3),
            noise_seed=rng.getrandbits(32),
            sample_rate=QUESST_SAMPLE_RATE,
        )
        docs.append(Document(f"quesst14_{i + 1:05d}", chunks, qid, qchunk, job))
    return queries, docs


def _ecf(docs: list[Document], audio: list[Rendered]) -> str:
    total = sum(a.duration for a in audio)
    lines = ['<?xml version="1.0" encoding="UTF-8"?>\n',
             f'<ecf source_signal_duration="{total:.3f}" language="multiple" version="synthetic">\n']
    for d, a in zip(docs, audio):
        lines.append(
            f'<excerpt audio_filename="Audio/{d.doc_id}.wav" channel="1" tbeg="0.000" dur="{a.duration:.3f}" '
            'language="multiple" source_type="cts"/>\n'
        )
    lines.append("</ecf>\n")
    return "".join(lines)


def _tlist(split: str, queries: list[Query]) -> str:
    lines = ['<?xml version="1.0" encoding="UTF-8"?>\n',
             f'<termlist ecf_filename="quesst14_{split}.ecf.xml" language="multiple" version="synthetic">\n']
    for q in queries:
        lines.append(f'<term termid="{q.qid}"><termtext>{q.qid}</termtext></term>\n')
    lines.append("</termlist>\n")
    return "".join(lines)


def write_quesst(
    root: Path, queries: list[Query], q_audio: list[Rendered], docs: list[Document], d_audio: list[Rendered]
) -> dict:
    """Write audio, language keys and ground truth under ``root/quesst14Database``; return manifest records."""
    base = root / "quesst14Database"
    scoring = base / "scoring"
    scoring.mkdir(parents=True, exist_ok=True)
    doc_records = []
    hits: dict[str, list[dict]] = {q.qid: [] for q in queries}
    for d, a in zip(docs, d_audio, strict=True):
        write_audio(base / "Audio" / f"{d.doc_id}.wav", a.wav, a.sample_rate)
        segs = [{"text": " ".join(c).upper(), "tbeg": round(s[0], 4), "dur": round(s[1], 4)}
                for c, s in zip(d.chunks, a.segments)]
        doc_records.append({"id": d.doc_id, "speaker": d.job.speaker.name, "query": d.query_id,
                            "num_samples": int(a.wav.shape[0]), "sample_rate": a.sample_rate, "segments": segs})
        if d.query_id is not None:
            tbeg, dur = a.segments[d.query_chunk]
            hits[d.query_id].append({"doc": d.doc_id, "tbeg": round(tbeg, 4), "dur": round(dur, 4)})
    (scoring / "language_key_utterances.lst").write_text(
        "".join(f"quesst14Database/Audio/{d.doc_id}.wav {LANGUAGE}\n" for d in docs), encoding="utf-8")
    query_records = []
    for split in ("dev", "eval"):
        qs = [(q, a) for q, a in zip(queries, q_audio, strict=True) if q.split == split]
        for q, a in qs:
            write_audio(base / f"{split}_queries" / f"{q.qid}.wav", a.wav, a.sample_rate)
            query_records.append({"id": q.qid, "split": split, "text": " ".join(q.words).upper(),
                                  "speaker": q.job.speaker.name, "num_samples": int(a.wav.shape[0]),
                                  "sample_rate": a.sample_rate, "hits": hits[q.qid]})
        (scoring / f"language_key_{split}.lst").write_text(
            "".join(f"quesst14Database/{split}_queries/{q.qid}.wav {LANGUAGE}\n" for q, _ in qs), encoding="utf-8")
        gt = scoring / f"groundtruth_quesst14_{split}"
        gt.mkdir(exist_ok=True)
        (gt / f"quesst14_{split}.ecf.xml").write_text(_ecf(docs, d_audio), encoding="utf-8")
        (gt / f"quesst14_{split}.tlist.xml").write_text(_tlist(split, [q for q, _ in qs]), encoding="utf-8")
        rttm = [f"LEXEME {h['doc']} 1 {h['tbeg']:.3f} {h['dur']:.3f} {q.qid} lex SELF <NA>\n"
                for q, _ in qs for h in sorted(hits[q.qid], key=lambda h: h["doc"])]
        (gt / f"quesst14_{split}.rttm").write_text("".join(rttm), encoding="utf-8")
    return {"documents": doc_records, "queries": query_records}
