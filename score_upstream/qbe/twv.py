"""Term-weighted value (TWV) of a QUESST 2014 query-by-example system, without Java.

Run it as::

    score-twv exp/qbe/layer_12/dev quesst14Database/scoring/groundtruth_quesst14_dev
    # -> actTWV: 0.0591877  maxTWV: 0.0598755  Threshold: 2.0188   (also written to .../dev/score.out)

``STDLIST_DIR`` holds the system output ``benchmark.stdlist.xml`` that s3prl's ``quesst14_dtw``
downstream writes; ``GROUNDTRUTH_DIR`` holds one ``*.ecf.xml``, one ``*.rttm`` and one ``*.tlist.xml``
(the ``scoring/groundtruth_quesst14_{dev,eval}`` folders of the QUESST 2014 database).

Definitions (QUESST 2014 evaluation plan, as its scoring tool applies them):

* queries: the ``termid`` of the ``.tlist.xml``; a query without any hit in the ``.rttm`` is dropped;
* documents: the ``audio_filename`` of each ``.ecf.xml`` excerpt, directory and extension stripped;
* a trial is every (query, document) pair; a pair absent from the system output scores ``-10`` with
  decision NO (the tool's ``default_score`` argument, ``-10`` in the SUPERB recipe); a trial listed
  twice with different values is refused (see :func:`score_upstream.qbe.stdlist.read_stdlist`);
* at threshold theta a trial is YES when ``score > theta``; for query q with ``tar_q`` true documents,
  ``P_miss = mean_q miss_q / tar_q`` and ``P_FA = mean_q fa_q / (N_docs - tar_q)``;
  ``TWV = 1 - (P_miss + beta * P_FA)`` with ``beta = (1 - p) / p`` and the effective prior
  ``p = P_target C_miss / (P_target C_miss + (1 - P_target) C_fa)`` truncated to 7 decimals
  (P_target 0.0008, C_miss 100, C_fa 1: p = 0.0741289, beta = 12.490015...);
* maxTWV is the largest TWV over theta in {-inf} and every distinct score, scanned upwards; equal
  scores form one point and the first maximum wins; actTWV uses the decisions written in the file.

The normalised cross-entropy figures of the official tool (actCnxe / minCnxe) are not computed here.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from score_upstream.qbe.stdlist import STDLIST_NAME, StdlistError
from score_upstream.qbe.stdlist import read_stdlist as read_trials

logger = logging.getLogger(__name__)

P_TARGET = 0.0008
C_MISS = 100.0
C_FA = 1.0
DEFAULT_SCORE = -10.0
SCORE_FILE = "score.out"
OFFICIAL_SCRIPT = "score-TWV-Cnxe.sh"


class TWVError(ValueError):
    """Bad or missing QbE scoring input (ground truth or system output)."""


def effective_prior(p_target: float = P_TARGET, c_miss: float = C_MISS, c_fa: float = C_FA) -> float:
    """Effective target prior, truncated to 7 decimals as the official tool receives it (0.0741289)."""
    p = p_target * c_miss / (p_target * c_miss + (1.0 - p_target) * c_fa)
    return math.floor(p * 1e7) / 1e7


def beta_constant(p_target: float = P_TARGET, c_miss: float = C_MISS, c_fa: float = C_FA) -> float:
    """TWV's false-alarm weight beta = (1 - p_eff) / p_eff = 12.490015... for the QUESST 2014 costs."""
    p = effective_prior(p_target, c_miss, c_fa)
    return (1.0 - p) / p


@dataclass(frozen=True)
class GroundTruth:
    """Scoring key: kept queries, documents and the boolean target matrix ``targets`` (Q, D)."""

    name: str
    queries: list[str]
    documents: list[str]
    targets: np.ndarray
    n_dropped_queries: int


@dataclass(frozen=True)
class SystemOutput:
    """System trials aligned to a :class:`GroundTruth`: ``scores`` (Q, D) float64, ``decisions`` (Q, D) bool."""

    scores: np.ndarray
    decisions: np.ndarray
    n_given: int
    n_missing: int
    n_ignored: int


@dataclass(frozen=True)
class TWVResult:
    """actTWV, maxTWV and the threshold at which maxTWV is reached (``-inf`` = everything YES)."""

    act_twv: float
    max_twv: float
    threshold: float
    n_queries: int
    n_documents: int
    n_missing: int = 0

    def line(self) -> str:
        """The official tool's result line, e.g. ``actTWV: 0.0591877  maxTWV: 0.0598755  Threshold: 2.0188``."""
        return f"actTWV: {_fmt(self.act_twv)}  maxTWV: {_fmt(self.max_twv)}  Threshold: {_fmt(self.threshold)}"


def _fmt(value: float) -> str:
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    # shortest single-precision spelling, as the Java tool prints its floats
    return np.format_float_positional(np.float32(value), unique=True, trim="0")


def _parse_xml(path: Path) -> ET.Element:
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as err:
        raise TWVError(f"{path}: malformed XML ({err}); expected a QUESST 2014 / NIST STD file") from None
    except OSError as err:
        raise TWVError(f"{path}: cannot read ({err.strerror})") from None


_GT_HINT = "pass a QUESST ground-truth folder such as scoring/groundtruth_quesst14_dev"


def _find_one(directory: Path, suffix: str, hint: str = _GT_HINT) -> Path:
    found = sorted(p for p in directory.glob(f"*{suffix}") if p.is_file())
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
        raise TWVError(f"{directory}: found {what} '*{suffix}' file(s), expected exactly one; {hint}")
    return found[0]


def read_ground_truth(gt_dir: str | os.PathLike) -> GroundTruth:
    """Read ``<gt_dir>/*.ecf.xml``, ``*.rttm`` and ``*.tlist.xml`` (one of each) into a scoring key.

    Example lines: ECF ``<excerpt audio_filename="Audio/quesst14_00001.wav" channel="1" .../>``;
    tlist ``<term termid="quesst14_dev_0001">``; RTTM
    ``LEXEME quesst14_00015 1 0.000 2.400 quesst14_dev_0015 lex SELF <NA>`` (fields 2 and 6 are read).
    """
    gt_dir = Path(gt_dir)
    if not gt_dir.is_dir():
        raise TWVError(f"{gt_dir}: ground-truth folder not found; expected scoring/groundtruth_quesst14_<split>")
    ecf, rttm, tlist = (_find_one(gt_dir, s) for s in (".ecf.xml", ".rttm", ".tlist.xml"))

    documents: list[str] = []
    for el in _parse_xml(ecf).iter("excerpt"):
        audio = el.get("audio_filename")
        if not audio:
            raise TWVError(f"{ecf}: <excerpt> without audio_filename; expected audio_filename=\"Audio/NAME.wav\"")
        documents.append(Path(audio.replace("\\", "/")).stem)
    documents = list(dict.fromkeys(documents))
    if not documents:
        raise TWVError(f"{ecf}: no <excerpt> elements; expected one per document")

    queries_all: list[str] = []
    for el in _parse_xml(tlist).iter("term"):
        termid = el.get("termid")
        if not termid:
            raise TWVError(f"{tlist}: <term> without termid; expected <term termid=\"QUERY\">")
        queries_all.append(termid)
    queries_all = list(dict.fromkeys(queries_all))
    if not queries_all:
        raise TWVError(f"{tlist}: no <term termid=...> elements; expected one per query")

    hits: set[tuple[str, str]] = set()
    try:
        lines = rttm.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as err:
        raise TWVError(f"{rttm}: cannot read ({err.strerror})") from None
    for number, raw in enumerate(lines, 1):
        fields = raw.split()
        if not fields or fields[0].startswith(";;"):
            continue
        if len(fields) < 6:
            raise TWVError(f"{rttm}:{number}: {len(fields)} fields, expected 9 (TYPE DOC CHAN TBEG DUR QUERY ...)")
        hits.add((fields[5], fields[1]))

    doc_index = {d: i for i, d in enumerate(documents)}
    query_index = {q: i for i, q in enumerate(queries_all)}
    targets_all = np.zeros((len(queries_all), len(documents)), dtype=bool)
    unknown = 0
    for query, doc in hits:
        if query in query_index and doc in doc_index:
            targets_all[query_index[query], doc_index[doc]] = True
        else:
            unknown += 1
    if unknown:
        logger.warning("%s: %d hit(s) name a query or document absent from the tlist/ecf; ignored", rttm, unknown)
    keep = targets_all.any(axis=1)
    if not keep.any():
        raise TWVError(f"{rttm}: no hit matches a query of {tlist.name} and a document of {ecf.name}")
    name = ecf.name[: -len(".ecf.xml")]
    return GroundTruth(
        name=name,
        queries=[q for q, k in zip(queries_all, keep) if k],
        documents=documents,
        targets=targets_all[keep],
        n_dropped_queries=int((~keep).sum()),
    )


def read_stdlist(path: str | os.PathLike, gt: GroundTruth, default_score: float = DEFAULT_SCORE) -> SystemOutput:
    """Align a ``.stdlist.xml`` to ``gt``: absent pairs get ``default_score`` and NO.

    The file is read by :func:`score_upstream.qbe.stdlist.read_stdlist` (which refuses a trial listed
    twice with different values); trials naming a query or document outside ``gt`` are ignored.
    """
    try:
        trials = read_trials(path)
    except StdlistError as e:
        raise TWVError(str(e)) from None
    q_index = {q: i for i, q in enumerate(gt.queries)}
    d_index = {d: i for i, d in enumerate(gt.documents)}
    qi = np.array([q_index.get(q, -1) for q in trials.queries], dtype=np.int64)[trials.query_index]
    di = np.array([d_index.get(d, -1) for d in trials.documents], dtype=np.int64)[trials.doc_index]
    inside = (qi >= 0) & (di >= 0)
    shape = (len(gt.queries), len(gt.documents))
    scores = np.full(shape, float(default_score))
    decisions = np.zeros(shape, dtype=bool)
    scores[qi[inside], di[inside]] = trials.scores[inside]
    decisions[qi[inside], di[inside]] = trials.decisions[inside]
    given, ignored = int(inside.sum()), int((~inside).sum())
    n_missing = scores.size - given
    if ignored:
        logger.info("%s: %d trial(s) outside the ground truth's queries/documents ignored", path, ignored)
    if n_missing:
        logger.info("%s: %d of %d trials missing, scored %g / NO", path, n_missing, scores.size, default_score)
    return SystemOutput(scores, decisions, given, n_missing, ignored)


def twv_curve(scores: np.ndarray, targets: np.ndarray, beta: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """TWV at theta = -inf and at every distinct score, in ascending theta order.

    Args:
        scores: (Q, D) trial scores.
        targets: (Q, D) bool, True where the document contains the query; every row needs a target.
        beta: false-alarm weight; default :func:`beta_constant`.

    Returns:
        ``(thetas, twv)``, both (K + 1,): ``thetas[0] = -inf`` then the K distinct scores ascending.
    """
    beta = beta_constant() if beta is None else beta
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=bool)
    n_q, n_d = targets.shape
    tar = targets.sum(axis=1)
    if (tar == 0).any():
        raise TWVError("every query needs at least one target document (queries without hits are dropped)")
    nontar = n_d - tar
    # each miss of query q costs 1/(Q tar_q); each false alarm 1/(Q nontar_q) (0 when q hits every doc)
    w_miss = np.where(targets, 1.0 / (n_q * tar)[:, None], 0.0).ravel()
    w_fa = np.where(~targets, (1.0 / np.maximum(n_q * nontar, 1))[:, None], 0.0).ravel()
    thetas, inverse = np.unique(scores.ravel(), return_inverse=True)
    miss_at = np.bincount(inverse, weights=w_miss, minlength=thetas.size)
    fa_at = np.bincount(inverse, weights=w_fa, minlength=thetas.size)
    # theta = thetas[k]: misses are the targets scoring <= theta, false alarms the non-targets above it;
    # prefix/suffix sums start from exact zeros so a perfect system scores exactly 1
    p_miss = np.concatenate([[0.0], np.cumsum(miss_at)])
    p_fa = np.concatenate([np.cumsum(fa_at[::-1])[::-1], [0.0]])
    # summation noise (~1e-16) is not a difference between systems: round it away, and -0.0 with it
    twv = np.round(1.0 - (p_miss + beta * p_fa), 12) + 0.0
    return np.concatenate([[-np.inf], thetas]), twv


def max_twv(scores: np.ndarray, targets: np.ndarray, beta: float | None = None) -> tuple[float, float]:
    """``(maxTWV, threshold)``: the first maximum of :func:`twv_curve` (values are rounded to 12 decimals)."""
    thetas, twv = twv_curve(scores, targets, beta)
    best = int(np.argmax(twv))
    return float(twv[best]), float(thetas[best])


def act_twv(decisions: np.ndarray, targets: np.ndarray, beta: float | None = None) -> float:
    """TWV of the system's own YES/NO decisions, (Q, D) bool each."""
    beta = beta_constant() if beta is None else beta
    decisions = np.asarray(decisions, dtype=bool)
    targets = np.asarray(targets, dtype=bool)
    tar = targets.sum(axis=1)
    nontar = targets.shape[1] - tar
    p_miss = np.mean((targets & ~decisions).sum(axis=1) / tar)
    p_fa = np.mean((~targets & decisions).sum(axis=1) / np.maximum(nontar, 1))
    return float(np.round(1.0 - (p_miss + beta * p_fa), 12) + 0.0)


def score_twv(stdlist_dir: str | os.PathLike, gt_dir: str | os.PathLike, default_score: float = DEFAULT_SCORE) -> TWVResult:
    """Score ``<stdlist_dir>/benchmark.stdlist.xml`` (or its only ``*.stdlist.xml``) against ``gt_dir``."""
    stdlist_dir = Path(stdlist_dir)
    path = stdlist_dir / STDLIST_NAME
    if not path.is_file():
        if not stdlist_dir.is_dir():
            raise TWVError(f"{stdlist_dir}: folder not found; expected the QbE run's folder with {STDLIST_NAME}")
        path = _find_one(stdlist_dir, ".stdlist.xml", "pass the system output folder (STDLIST_DIR, first argument) "
                         f"holding {STDLIST_NAME}, as score-qbe writes it")
    gt = read_ground_truth(gt_dir)
    system = read_stdlist(path, gt, default_score)
    mtwv, theta = max_twv(system.scores, gt.targets)
    return TWVResult(
        act_twv=act_twv(system.decisions, gt.targets),
        max_twv=mtwv,
        threshold=theta,
        n_queries=len(gt.queries),
        n_documents=len(gt.documents),
        n_missing=system.n_missing,
    )


def write_score_out(result: TWVResult, stdlist_dir: str | os.PathLike) -> Path:
    """Write ``result.line()`` to ``<stdlist_dir>/score.out`` (atomically)."""
    from score_upstream.atomic import atomic_write_bytes

    return atomic_write_bytes((result.line() + "\n").encode(), Path(stdlist_dir) / SCORE_FILE)


def parse_score_out(path: str | os.PathLike) -> dict[str, float]:
    """Read ``actTWV``/``maxTWV``/``Threshold`` (and ``actCnxe``/``minCnxe`` if present) from a ``score.out``.

    Both our file and the official tool's (``actTWV: 0.40079603  maxTWV: 0.41911224  Threshold: 5.2125``)
    parse; the first "Main Results" occurrence of each key wins.
    """
    import re

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise TWVError(f"{path}: cannot read ({err.strerror}); expected a QbE score.out") from None
    values: dict[str, float] = {}
    for key, raw in re.findall(r"\b(actTWV|maxTWV|Threshold|actCnxe|minCnxe):\s*(\S+)", text):
        if key not in values:
            try:
                values[key] = float(raw.replace("Infinity", "inf"))
            except ValueError:
                raise TWVError(f"{path}: {key}: {raw!r} is not a number") from None
    if "maxTWV" not in values:
        raise TWVError(f"{path}: no 'maxTWV:' value; expected the line 'actTWV: X  maxTWV: Y  Threshold: Z'")
    return values


def run_official_scorer(
    stdlist_dir: str | os.PathLike,
    scoring_dir: str | os.PathLike,
    groundtruth: str = "groundtruth_quesst14_eval",
    default_score: float = DEFAULT_SCORE,
    timeout: float = 3600.0,
) -> dict[str, float]:
    """Run the QUESST 2014 Java tool (``scoring/score-TWV-Cnxe.sh``) on a copy of the system output.

    The tool writes its own ``score.out`` (plus DET/TWV plots) next to the stdlist it reads, so it runs
    on ``<stdlist_dir>/official/`` to keep our ``score.out`` apart.

    Args:
        stdlist_dir: folder holding ``benchmark.stdlist.xml``.
        scoring_dir: the database's ``scoring/`` folder (holding the script, its jar and the ground truths).
        groundtruth: ground-truth folder name inside ``scoring_dir``.
        default_score: score of trials absent from the output (SUPERB uses -10).

    Returns:
        The values of ``<stdlist_dir>/official/score.out`` (see :func:`parse_score_out`).
    """
    stdlist_dir, scoring_dir = Path(stdlist_dir).resolve(), Path(scoring_dir).resolve()
    script = scoring_dir / OFFICIAL_SCRIPT
    if not script.is_file():
        raise TWVError(f"{script}: official scorer not found; use score-twv (our implementation) instead")
    if shutil.which("java") is None:
        raise TWVError(f"{script} needs Java: install a JRE (e.g. apt-get install default-jre) or use score-twv")
    source = stdlist_dir / STDLIST_NAME
    if not source.is_file():
        raise TWVError(f"{source}: system output not found; run the QbE evaluation first")
    work = stdlist_dir / "official"
    work.mkdir(exist_ok=True)
    shutil.copyfile(source, work / STDLIST_NAME)
    (work / SCORE_FILE).unlink(missing_ok=True)
    cmd = ["bash", f"./{OFFICIAL_SCRIPT}", str(work), groundtruth, f"{default_score:g}"]
    proc = subprocess.run(cmd, cwd=scoring_dir, capture_output=True, text=True, timeout=timeout)
    (work / "scorer.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not (work / SCORE_FILE).is_file():
        raise TWVError(f"{script} failed (exit {proc.returncode}); see {work / 'scorer.log'}")
    return parse_score_out(work / SCORE_FILE)


def main(argv: list[str] | None = None) -> int:
    """``score-twv STDLIST_DIR GROUNDTRUTH_DIR [--default-score -10]``: print and save actTWV/maxTWV."""
    from score_upstream.cliparse import ScoreArgumentParser

    parser = ScoreArgumentParser(
        prog="score-twv",
        examples=["score-twv exp/superb/hubert/qbe/eval/layer12 data/quesst14Database/scoring/groundtruth_quesst14_eval"],
        description="QUESST 2014 actTWV / maxTWV of a benchmark.stdlist.xml, written to STDLIST_DIR/score.out.",
    )
    parser.add_argument("stdlist_dir", help="folder holding benchmark.stdlist.xml (s3prl quesst14_dtw output)")
    parser.add_argument("groundtruth_dir", help="folder with *.ecf.xml, *.rttm, *.tlist.xml")
    parser.add_argument("--default-score", type=float, default=DEFAULT_SCORE, help="score of missing trials")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = score_twv(args.stdlist_dir, args.groundtruth_dir, args.default_score)
        write_score_out(result, args.stdlist_dir)
    except TWVError as err:
        print(f"score-twv: error: {err}", file=sys.stderr)
        return 2
    print(result.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
