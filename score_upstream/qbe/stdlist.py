"""The NIST STD system-output file QbE runs write and TWV scoring reads: ``benchmark.stdlist.xml``.

One writer (byte for byte what s3prl's ``quesst14_dtw`` expert writes) and one streaming reader, used by
:mod:`score_upstream.qbe.search` and :mod:`score_upstream.qbe.twv`. Example::

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
from pathlib import Path
from typing import Iterator, Sequence
from xml.sax.saxutils import escape

import torch

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


def read_stdlist(path) -> dict[str, dict[str, tuple[float, str]]]:
    """Parse a ``benchmark.stdlist.xml`` into {query: {document: (score, decision)}} (later entries win)."""
    out: dict[str, dict[str, tuple[float, str]]] = {}
    for termid, file, score, is_yes in iter_stdlist(path):
        out.setdefault(termid, {})[file] = (score, "YES" if is_yes else "NO")
    return out


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
