"""The NIST STD system-output file QbE runs write and TWV scoring reads: ``benchmark.stdlist.xml``.

One writer (byte for byte what s3prl's ``quesst14_dtw`` expert writes) and one reader (:func:`read_stdlist`,
over the streaming parser :func:`iter_stdlist`), used by :mod:`score_upstream.qbe.quesst` and
:mod:`score_upstream.qbe.twv`. Example::

    <stdlist termlist_filename="benchmark.stdlist.xml" indexing_time="1.00" language="english" ...>
      <detected_termlist termid="quesst14_dev_0001" term_search_time="1.0" oov_term_count="1">
        <term file="quesst14_00001" channel="1" tbeg="0.000" dur="0.00" score="-0.3050" decision="NO"/>
      </detected_termlist>
    </stdlist>
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence
from xml.sax.saxutils import escape

import numpy as np

from score_upstream.atomic import atomic_write_bytes

STDLIST_NAME = "benchmark.stdlist.xml"
MIN_QUERY_FRAMES = 5  # s3prl skips queries with len(query) < 5 (score 0, written first)
YES_THRESHOLD = 2.0  # s3prl marks z-scores above 2 as detections


class StdlistError(ValueError):
    """A stdlist file that cannot be written or read as NIST STD system output; names the file."""


def _attr(value: str) -> str:
    return escape(str(value), {'"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})


def write_stdlist(path, query_names: Sequence[str], doc_names: Sequence[str], scores: torch.Tensor, query_lengths=None) -> Path:
    """Write scores as s3prl's ``benchmark.stdlist.xml``, byte for byte as its expert's lxml output.

    Args:
        path: output file.
        query_names, doc_names: Q and Ndoc names (file stems).
        scores: (Q, Ndoc) z-normalised scores; "YES" where a score exceeds 2.
        query_lengths: optional Q frame counts; as in s3prl, queries under 5 frames come first (s3prl
            fills them before any DTW result; its other entries follow worker completion order, which
            we fix to input order).
    """
    import torch  # here: the TWV scorer and the recipes' helpers read stdlists without torch

    scores = torch.as_tensor(scores, dtype=torch.float64)
    if scores.shape != (len(query_names), len(doc_names)):
        raise StdlistError(f"{path}: scores have shape {tuple(scores.shape)}, expected ({len(query_names)}, {len(doc_names)})")
    order = list(range(len(query_names)))
    if query_lengths is not None:
        order.sort(key=lambda k: query_lengths[k] >= MIN_QUERY_FRAMES)
    lines = []
    for k in order:
        head = f'  <detected_termlist termid="{_attr(query_names[k])}" term_search_time="1.0" oov_term_count="1"'
        if not doc_names:
            lines.append(head + "/>")
            continue
        lines.append(head + ">")
        for d, s in zip(doc_names, scores[k].tolist()):
            decision = "YES" if s > YES_THRESHOLD else "NO"
            lines.append(f'    <term file="{_attr(d)}" channel="1" tbeg="0.000" dur="0.00" score="{s:.4f}" decision="{decision}"/>')
        lines.append("  </detected_termlist>")
    root = '<stdlist termlist_filename="benchmark.stdlist.xml" indexing_time="1.00" language="english" index_size="1" system_id="benchmark"'
    text = "\n".join([root + ">", *lines, "</stdlist>"]) if lines else root + "/>"
    path = Path(path)
    atomic_write_bytes((text + "\n").encode("utf-8"), path)
    return path


@dataclass(frozen=True)
class Trials:
    """The distinct (query, document) trials of a stdlist, in file order (first appearance).

    ``queries`` and ``documents`` list the names in order of first appearance; trial t is query
    ``queries[query_index[t]]`` against document ``documents[doc_index[t]]`` with ``scores[t]`` and
    ``decisions[t]`` (True = YES). All four arrays are (T,).
    """

    queries: list[str]
    documents: list[str]
    query_index: np.ndarray
    doc_index: np.ndarray
    scores: np.ndarray
    decisions: np.ndarray

    def as_dict(self) -> dict[str, dict[str, tuple[float, str]]]:
        """{query: {document: (score, "YES" | "NO")}}, queries and documents in file order."""
        out: dict[str, dict[str, tuple[float, str]]] = {}
        for qi, di, score, yes in zip(self.query_index.tolist(), self.doc_index.tolist(), self.scores.tolist(), self.decisions.tolist()):
            out.setdefault(self.queries[qi], {})[self.documents[di]] = (score, "YES" if yes else "NO")
        return out


def read_stdlist(path: str | os.PathLike) -> Trials:
    """Read every trial of a ``.stdlist.xml`` (see :func:`iter_stdlist`); the one reader of system output.

    A (query, document) pair listed more than once: identical repeats (same score and decision) count
    as one trial; repeats that disagree are an error. Why not "the later entry wins" or "the highest
    score wins": the official QUESST 2014 scorer (``MediaEvalQUESST2014.jar``, run by
    ``score-TWV-Cnxe.sh``) ships compiled inside the database, and we found no public copy of its source
    and no document that says which of two entries it keeps. What its documentation does say (the
    scoring README of the QUESST 2015 database, same tool family): "systems are expected to produce a
    complete set of detections (i.e. they produce a score for each trial)", and its log line
    ``Scores: 5327190 (495 model x 10762 test)  given: 5327190  default(null): 0`` counts one score per
    (query, document) cell. A repeated trial is outside that contract, and any rule picked here could
    differ from the official tool without a trace, so a disagreeing repeat stops the scoring instead.
    s3prl's expert and :func:`write_stdlist` never repeat a trial.

    Raises:
        StdlistError: as :func:`iter_stdlist`, or a trial repeated with a different score or decision
            (naming the pair and both values).
    """
    q_names: dict[str, int] = {}
    d_names: dict[str, int] = {}
    qi, di, scores, yes = array("q"), array("q"), array("d"), array("b")
    for termid, file, score, is_yes in iter_stdlist(path):
        qi.append(q_names.setdefault(termid, len(q_names)))
        di.append(d_names.setdefault(file, len(d_names)))
        scores.append(score)
        yes.append(is_yes)
    qi_a, di_a = np.asarray(qi, dtype=np.int64), np.asarray(di, dtype=np.int64)
    scores_a, yes_a = np.asarray(scores, dtype=np.float64), np.asarray(yes, dtype=bool)
    key = qi_a * max(len(d_names), 1) + di_a
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    repeat = np.flatnonzero((scores_a != scores_a[first[inverse]]) | (yes_a != yes_a[first[inverse]]))
    if repeat.size:
        t, f = int(repeat[0]), int(first[inverse[repeat[0]]])
        queries, documents = list(q_names), list(d_names)
        raise StdlistError(
            f"{path}: trial ({queries[qi_a[t]]}, {documents[di_a[t]]}) is listed {int((inverse == inverse[t]).sum())} times with "
            f"different values (score {scores_a[f]:g} {'YES' if yes_a[f] else 'NO'}, then {scores_a[t]:g} {'YES' if yes_a[t] else 'NO'}); "
            f"expected one score per (query, document): keep one <term> per document in each <detected_termlist>"
        )
    keep = np.sort(first)
    return Trials(list(q_names), list(d_names), qi_a[keep], di_a[keep], scores_a[keep], yes_a[keep])


def iter_stdlist(path: str | os.PathLike) -> Iterator[tuple[str, str, float, bool]]:
    """Stream ``(termid, file, score, is_yes)`` from a ``.stdlist.xml``, validating as it goes.

    Example: ``<detected_termlist termid="quesst14_dev_0001" ...>`` holding
    ``<term file="quesst14_00001" channel="1" tbeg="0.000" dur="0.00" score="-0.3050" decision="NO"/>``.
    Streamed, since a full QUESST output holds millions of ``<term>`` elements.

    Raises:
        StdlistError: unreadable file, malformed XML, a root other than ``<stdlist>``, a non-numeric score or
            a decision other than YES/NO, naming the file.
    """
    path = Path(path)
    termid, root_seen = "", False
    try:
        for event, el in ET.iterparse(path, events=("start", "end")):
            if event == "start":
                if not root_seen and el.tag != "stdlist":
                    raise StdlistError(f"{path}: root element <{el.tag}>, expected <stdlist> (NIST STD system output)")
                root_seen = True
                if el.tag == "detected_termlist":
                    termid = el.get("termid", "")
                continue
            if el.tag != "term":
                if el.tag == "detected_termlist":
                    el.clear()
                continue
            raw_score, raw_decision = el.get("score"), el.get("decision", "NO")
            try:
                score = float(raw_score)
                if math.isnan(score):
                    raise ValueError
            except (TypeError, ValueError):
                raise StdlistError(f"{path}: term {termid}/{el.get('file')} has score={raw_score!r}, expected a number") from None
            if raw_decision not in ("YES", "NO"):
                raise StdlistError(f"{path}: decision={raw_decision!r} for {termid}, expected YES or NO")
            yield termid, el.get("file", ""), score, raw_decision == "YES"
    except ET.ParseError as err:
        raise StdlistError(f"{path}: malformed XML ({err}); expected a NIST STD .stdlist.xml") from None
    except OSError as err:
        raise StdlistError(f"{path}: cannot read ({err.strerror})") from None
