"""Query-by-example search of SUPERB's ``quesst14_dtw``, batched over documents in torch.

On features already extracted (``score-qbe`` in :mod:`score_upstream.qbe.quesst` runs it on a QUESST 2014
tree with an s3prl upstream)::

    scores = qbe_scores(query_feats, doc_feats)          # (Q, Ndoc) float64
    score_upstream.qbe.stdlist.write_stdlist("benchmark.stdlist.xml", query_names, doc_names, scores)

The scores are those of s3prl 0.4.18's ``quesst14_dtw`` expert (its default config): every feature
dimension z-normalised over all frames of queries and documents, distance exp(cosine distance) - 1,
each query-frame row min-max normalised over the document, subsequence DTW with dtw-python's
``asymmetric`` step pattern (D[i,j] = C[i,j] + min(D[i-1,j], D[i-1,j-1], D[i-1,j-2]), open begin and
open end), cost = min_j D[N-1,j] / N, score = -cost, z-normalised over documents per query; queries
of fewer than 5 frames score 0. s3prl runs dtw-python once per (query, document) pair;
:mod:`score_upstream.qbe.quesst` keeps that path callable for comparison and holds the ``score-qbe`` command.
"""

from __future__ import annotations

import contextlib
import os
from typing import Sequence

import torch

from score_upstream.qbe import cpu as qbe_cpu
from score_upstream.qbe.stdlist import MIN_QUERY_FRAMES

class QbeError(ValueError):
    """Bad input to the QbE search: empty or mismatched features, unknown layers, missing files."""


# --------------------------------------------------------------------------- numerical core
def _subsequence_dtw_rows(
    cost: torch.Tensor,
    doc_lengths: torch.Tensor,
    query_lengths: Sequence[int],
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row-major core of :func:`subsequence_dtw_cost`: ``cost`` is (N, B, M); returns (B,) in cost's dtype.

    With ``scale`` and ``shift`` (N, B, 1), the local cost of row i is ``cost[i] * scale[i] - shift[i]``,
    applied row by row while the row is in cache instead of in extra passes over the whole block.
    """
    n_rows, batch, width = cost.shape
    pad = torch.arange(width, device=cost.device)[None, :] >= doc_lengths.to(cost.device)[:, None]
    ends: dict[int, list[int]] = {}
    for b, n in enumerate(query_lengths):
        if not 1 <= n <= n_rows:
            raise QbeError(f"query length {n} of item {b} is outside 1..{n_rows} (the cost matrix has {n_rows} rows)")
        ends.setdefault(n - 1, []).append(b)
    best = torch.full((batch,), float("inf"), dtype=cost.dtype, device=cost.device)
    affine = scale is not None
    acc = cost[0] * scale[0] - shift[0] if affine else cost[0].clone()
    step = torch.empty_like(acc)
    for i in range(max(ends) + 1):
        if i > 0:  # asymmetric pattern: from (i-1, j), (i-1, j-1) or (i-1, j-2), each weighted 1 x C[i, j]
            step[:, :1] = acc[:, :1]
            torch.minimum(acc[:, 1:], acc[:, :-1], out=step[:, 1:])
            torch.minimum(step[:, 2:], acc[:, :-2], out=step[:, 2:])
            if affine:
                torch.addcmul(step.sub_(shift[i]), cost[i], scale[i], out=acc)
            else:
                torch.add(step, cost[i], out=acc)
        if i in ends:
            idx = torch.tensor(ends[i], device=cost.device)
            best[idx] = acc[idx].masked_fill(pad[idx], float("inf")).amin(dim=1) / (i + 1)
    return best


def subsequence_dtw_cost(
    cost: torch.Tensor, doc_lengths: torch.Tensor, query_lengths: torch.Tensor | Sequence[int] | None = None
) -> torch.Tensor:
    """Normalised subsequence-DTW cost with dtw-python's ``asymmetric`` step pattern, open begin and end.

    D[0, j] = C[0, j] (open begin: the path may start at any document frame);
    D[i, j] = C[i, j] + min(D[i-1, j], D[i-1, j-1], D[i-1, j-2]); cost = min_j D[n-1, j] / n (open end,
    normalised by the query length n, as dtw-python's ``normalizedDistance`` for an "N" pattern).

    Args:
        cost: (B, N, M) local costs of B (query, document) pairs; entries past a pair's lengths are
            ignored (pad them with anything finite or +inf).
        doc_lengths: (B,) valid document frames per pair (1..M).
        query_lengths: (B,) valid query frames per pair (1..N); default N for all.

    Returns:
        (B,) normalised costs, in ``cost``'s dtype and device.
    """
    if cost.dim() != 3:
        raise QbeError(f"cost must be (B, N, M), got shape {tuple(cost.shape)}")
    doc_lengths = torch.as_tensor(doc_lengths)
    if doc_lengths.shape != (cost.shape[0],) or int(doc_lengths.min()) < 1 or int(doc_lengths.max()) > cost.shape[2]:
        raise QbeError(f"doc_lengths must be ({cost.shape[0]},) in 1..{cost.shape[2]}, got {doc_lengths.tolist()}")
    if query_lengths is None:
        query_lengths = [cost.shape[1]] * cost.shape[0]
    query_lengths = [int(n) for n in torch.as_tensor(query_lengths).tolist()]
    return _subsequence_dtw_rows(cost.transpose(0, 1), doc_lengths, query_lengths)


QBE_BACKENDS = ("auto", "cpp", "torch")


def resolve_backend(device: str | torch.device = "cpu", backend: str = "auto") -> str:
    """The backend of the per-block pass after the distances: ``"cpp"`` (compiled CPU kernel) or ``"torch"``.

    ``"auto"`` honours ``SCORE_QBE_BACKEND`` (``auto``, ``cpp`` or ``torch``) and otherwise picks the
    compiled kernel on CPU when it builds, else torch (always on GPU). Asking for ``"cpp"`` off the CPU
    or without a working C++ compiler is an error.
    """
    device = torch.device(device)
    if backend == "auto":
        backend = os.environ.get("SCORE_QBE_BACKEND", "auto") or "auto"
    if backend not in QBE_BACKENDS:
        raise QbeError(f"QbE backend {backend!r} (argument or SCORE_QBE_BACKEND) is unknown; expected one of {QBE_BACKENDS}")
    if backend == "auto":
        return "cpp" if device.type == "cpu" and qbe_cpu.load() is not None else "torch"
    if backend == "cpp" and device.type != "cpu":
        raise QbeError(f"QbE backend 'cpp' runs on the CPU only, got device {device}; use 'auto' or 'torch'")
    if backend == "cpp" and qbe_cpu.load() is None:
        raise QbeError("QbE backend 'cpp' could not be built (no C++ compiler? SCORE_QBE_NO_BUILD=1?); use 'auto' or 'torch'")
    return backend


def block_dtw_costs(cost: torch.Tensor, query_lengths: Sequence[int], doc_lengths: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    """Normalised subsequence-DTW costs of one block of pairs, from their raw cosine distances.

    Row i of pair p has local costs s3prl's ``cosine_exp`` distance exp(c) - 1 min-max normalised over
    the pair's document frames (the -1 cancels), then the DP of :func:`subsequence_dtw_cost`.

    Args:
        cost: (N, P, M) contiguous ``1 - cos`` values, query frame i and document frame j of pair p at
            [i, p, j]. The torch path takes row extremes over all M columns and overwrites ``cost``:
            pad documents by repeating a real frame (:func:`_pad_last`); the C++ path reads only the
            valid columns and leaves ``cost`` alone.
        query_lengths: P valid query frames per pair (1..N).
        doc_lengths: (P,) valid document frames per pair (1..M).
        backend: ``"torch"`` or ``"cpp"`` (see :func:`resolve_backend`).

    Returns:
        (P,) costs in ``cost``'s dtype and device.
    """
    if backend == "cpp":
        return qbe_cpu.dtw_block(cost, torch.as_tensor(list(query_lengths)), doc_lengths.cpu())
    # Extremes of the stored exps, not exps of the raw extremes (a scalar and a vectorised exp may round
    # differently), and scale 0 for constant rows (a one-frame document): there the affine form
    # c * scale - lo * scale with scale = 1e9 would turn one rounding step into an error of ~100.
    lo, hi = torch.aminmax(cost.exp_(), dim=2, keepdim=True)
    scale = (hi - lo).clamp_(min=1e-9).reciprocal_().masked_fill_(hi == lo, 0)
    with _small_ops(cost.device):
        return _subsequence_dtw_rows(cost, doc_lengths, list(query_lengths), scale, lo * scale)


def feature_stats(feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (unbiased, clamped at 1e-9) over all frames of all ``feats`` (T_k, D).

    Two passes in float64 so that no concatenated copy is needed; equals s3prl's
    ``torch.cat(feats).mean(0)`` / ``.std(0)`` to float32 rounding.
    """
    count = sum(f.shape[0] for f in feats)
    if count < 2:
        raise QbeError(f"feature normalisation needs at least 2 frames in total, got {count}")
    mean = sum(f.double().sum(0) for f in feats) / count
    var = sum(((f.double() - mean) ** 2).sum(0) for f in feats) / (count - 1)
    return mean.float(), var.sqrt().float().clamp(min=1e-9)


def _pad_last(seqs: Sequence[torch.Tensor], length: int) -> torch.Tensor:
    """Stack (T_k, D) sequences into (K, length, D), padding each by repeating its last frame.

    Repeating a real frame keeps each row's min and max over the padded columns unchanged.
    """
    out = seqs[0].new_empty((len(seqs), length, seqs[0].shape[1]))
    for k, s in enumerate(seqs):
        out[k, : len(s)] = s
        out[k, len(s) :] = s[-1]
    return out


@contextlib.contextmanager
def _small_ops(device: torch.device):
    """One CPU thread for runs of many small ops: with more, each op waits on a thread hand-off, which on
    a loaded machine costs a scheduler time slice (~10 ms) instead of microseconds."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _unit(x: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = x.to(device=device, dtype=dtype)
    return x / x.norm(dim=-1, keepdim=True)


def qbe_scores(
    query_feats: Sequence[torch.Tensor],
    doc_feats: Sequence[torch.Tensor],
    *,
    feature_normalization: bool = True,
    batch_docs: int = 32,
    batch_queries: int = 16,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    backend: str = "auto",
) -> torch.Tensor:
    """Scores of every (query, document) pair, as s3prl's ``quesst14_dtw`` expert computes them.

    Args:
        query_feats: Q tensors (N_q, D), one hidden layer of each query.
        doc_feats: Ndoc tensors (M_d, D), the same layer of each document.
        feature_normalization: z-normalise each dimension over all frames of queries and documents.
        batch_docs: documents per block (documents are sorted by length so that blocks pad little).
        batch_queries: queries per block; one block's cost tensor holds
            max N x batch_queries x batch_docs x max M values of ``dtype``.
        device: where the distances and the DP run.
        dtype: compute dtype of distances and DP (float32 agrees with dtw-python to ~1e-6 here).
        backend: the pass after the distances (row min-max, DP): ``"auto"`` (the compiled kernel on CPU
            when it builds, else torch; ``SCORE_QBE_BACKEND`` overrides), ``"cpp"`` or ``"torch"``.

    Returns:
        (Q, Ndoc) float64 on the CPU: per-query z-normalised scores (0 for queries under 5 frames).
    """
    if not query_feats or not doc_feats:
        raise QbeError(f"need at least one query and one document, got {len(query_feats)} and {len(doc_feats)}")
    dims = {f.shape[-1] for f in [*query_feats, *doc_feats]}
    if len(dims) != 1 or any(f.dim() != 2 for f in [*query_feats, *doc_feats]):
        raise QbeError(f"features must all be (T, D) with one D, got dims {sorted(dims)}")
    empty = [k for k, f in enumerate(doc_feats) if f.shape[0] == 0]
    if empty:
        raise QbeError(f"documents {empty[:5]} have no frames; drop them before the search")
    device = torch.device(device)
    backend = resolve_backend(device, backend)
    with _small_ops(torch.device("cpu")):
        mean, std = feature_stats([*query_feats, *doc_feats]) if feature_normalization else (torch.zeros(1), torch.ones(1))
    mean, std = mean.to(device), std.to(device)
    norm = lambda f: (f.to(device).float() - mean) / std  # noqa: E731  (float32, as s3prl normalises)

    raw = torch.zeros(len(query_feats), len(doc_feats), dtype=torch.float64)
    kept = sorted((k for k, q in enumerate(query_feats) if q.shape[0] >= MIN_QUERY_FRAMES), key=lambda k: query_feats[k].shape[0])
    # The C++ kernel reads each pair's block of one unpadded (sum N, sum M) distance matrix, so the GEMM
    # skips padding; the torch DP needs the padded (Nmax, G*B, Mmax) layout.
    packed = backend == "cpp"

    def stack(feats, idx, align=1):  # packed: (sum T rounded up to align, D); padded: (K, Tmax, D)
        with _small_ops(device):
            units = [_unit(norm(feats[k]), dtype, device) for k in idx]
            if not packed:
                return _pad_last(units, max(len(u) for u in units))
            total = sum(len(u) for u in units)
            return torch.cat([*units, units[0].new_zeros(-total % align, units[0].shape[1])])

    def starts(lens):
        return torch.tensor([0, *lens[:-1]]).cumsum(0)

    groups = []
    for s in range(0, len(kept), batch_queries):
        idx = kept[s : s + batch_queries]
        lens = [query_feats[k].shape[0] for k in idx]
        q = stack(query_feats, idx)
        groups.append((idx, lens, q if packed else q.transpose(0, 1).reshape(-1, q.shape[-1])))  # padded: frame-major
    order = sorted(range(len(doc_feats)), key=lambda k: doc_feats[k].shape[0])
    one = torch.ones(1, dtype=dtype, device=device)
    for s in range(0, len(order), batch_docs):
        didx = order[s : s + batch_docs]
        dlens = torch.tensor([doc_feats[k].shape[0] for k in didx], device=device)
        d = stack(doc_feats, didx, align=16)  # MKL's GEMM is ~20% faster with 16 | output row length
        d_flat = (d if packed else d.reshape(-1, d.shape[-1])).T  # (D, sum M) or (D, B * Mmax)
        for qidx, qlens, q in groups:
            g, b = len(qidx), len(didx)
            cost = torch.addmm(one, q, d_flat, alpha=-1.0)
            if packed:
                qlens_t = torch.tensor(qlens)
                rows, n = starts(qlens).repeat_interleave(b), qlens_t.repeat_interleave(b)
                res = qbe_cpu.dtw_pairs(cost, rows, starts(dlens.tolist()).repeat(g), n, dlens.repeat(g))
            else:
                pair_qlens = [n for n in qlens for _ in range(b)]
                res = block_dtw_costs(cost.view(-1, g * b, d.shape[1]), pair_qlens, dlens.repeat(g), backend)  # (Nmax, G*B, Mmax)
            raw[torch.tensor(qidx)[:, None], torch.tensor(didx)[None, :]] = -res.view(g, b).double().cpu()
    std_q = raw.std(dim=1, unbiased=False, keepdim=True).clamp(min=1e-9)
    return (raw - raw.mean(dim=1, keepdim=True)) / std_q
