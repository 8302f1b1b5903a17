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

from typing import Sequence

import numpy as np
import torch

from score_upstream.native import resolve_backend as choose_backend
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


def _cpp_check(device: torch.device, auto: bool) -> str | None:
    if device.type != "cpu":
        return f"runs on the CPU only, got device {device}"
    return None if qbe_cpu.load() is not None else "could not be built (no C++ compiler? SCORE_QBE_NO_BUILD=1?)"


_CHECKS = {"cpp": _cpp_check, "torch": lambda device, auto: None}


def resolve_backend(device: str | torch.device = "cpu", backend: str = "auto") -> str:
    """The backend of the per-block pass after the distances: ``"cpp"`` (compiled CPU kernel) or ``"torch"``.

    ``"auto"`` honours ``SCORE_QBE_BACKEND`` (``auto``, ``cpp`` or ``torch``) and otherwise picks the
    compiled kernel on CPU when it builds, else torch (always on GPU). Asking for ``"cpp"`` off the CPU
    or without a working C++ compiler is an error. Chosen by :func:`score_upstream.native.resolve_backend`,
    as the soft-DTW loss's backend is.
    """
    return choose_backend(backend, torch.device(device), _CHECKS, "SCORE_QBE_BACKEND", "QbE", QbeError)


def block_dtw_costs(cost: torch.Tensor, query_lengths: Sequence[int], doc_lengths: torch.Tensor, backend: str = "torch") -> torch.Tensor:
    """Normalised subsequence-DTW costs of one block of pairs, from their raw cosine distances.

    Row i of pair p has local costs s3prl's ``cosine_exp`` distance exp(c) - 1 min-max normalised over
    the pair's document frames (the -1 cancels), then the DP of :func:`subsequence_dtw_cost`.

    Args:
        cost: (N, P, M) contiguous ``1 - cos`` values, query frame i and document frame j of pair p at
            [i, p, j]. The torch path takes row extremes over all M columns and overwrites ``cost``:
            pad documents by repeating a real frame (:func:`_padded_unit_frames`); the C++ path reads only the
            valid columns and leaves ``cost`` alone. ``cost`` must be on the CPU for ``"cpp"``.
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
    return _subsequence_dtw_rows(cost, doc_lengths, list(query_lengths), scale, lo * scale)


# Data preparation (statistics, normalisation, padding) is memory-bound and runs in numpy, which never
# spreads an elementwise op over threads: torch does, and on a busy machine each such op then waits a
# scheduler time slice (~10 ms) for its second thread; that made the preparation cost 10x the search.
# The matrix products and the DP, where threads pay, stay in torch and the C++ kernel.


def _as_numpy(f: torch.Tensor) -> np.ndarray:
    return f.detach().to("cpu", torch.float32).numpy()


def feature_stats(feats: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std (unbiased, clamped at 1e-9) over all frames of all ``feats`` (T_k, D).

    Two passes in float64, one sequence at a time (no concatenated copy); equals s3prl's
    ``torch.cat(feats).mean(0)`` / ``.std(0)`` to float32 rounding.
    """
    count = sum(f.shape[0] for f in feats)
    if count < 2:
        raise QbeError(f"feature normalisation needs at least 2 frames in total, got {count}")
    mean = sum(_as_numpy(f).sum(0, dtype=np.float64) for f in feats) / count
    var = sum(((_as_numpy(f) - mean) ** 2).sum(0) for f in feats) / (count - 1)
    return torch.from_numpy(mean).float(), torch.from_numpy(np.sqrt(var)).float().clamp(min=1e-9)


def _unit_frames(feats: Sequence[torch.Tensor], mean: np.ndarray, std: np.ndarray, dtype: torch.dtype, out: np.ndarray | None = None) -> np.ndarray:
    """K sequences (T_k, D) packed end to end as (sum T_k, D) unit-length frames of ``dtype``.

    Each sequence is z-normalised per dimension in float32 (as s3prl does), then each frame scaled to
    unit length in ``dtype``, so that one matrix product gives every cosine. One sequence at a time,
    into ``out`` when given (the first sum T_k rows of a reused buffer), so no full-size temporaries.
    """
    if out is None:
        out = np.empty((sum(f.shape[0] for f in feats), feats[0].shape[1]), dtype=torch.empty((), dtype=dtype).numpy().dtype)
    row = 0
    for f in feats:
        seg = out[row : row + f.shape[0]]
        seg[...] = (_as_numpy(f) - mean) / std
        seg /= np.sqrt(np.einsum("td,td->t", seg, seg))[:, None]
        row += f.shape[0]
    return out[:row]


def _padded_unit_frames(feats: Sequence[torch.Tensor], width: int, mean: np.ndarray, std: np.ndarray, dtype: torch.dtype, frame_major: bool = False) -> torch.Tensor:
    """:func:`_unit_frames` as one CPU tensor (K, width, D) ((width, K, D) if ``frame_major``).

    Each sequence is padded to ``width`` by repeating its last frame, which keeps each row's min and max
    over the padded columns unchanged.
    """
    lengths = np.array([f.shape[0] for f in feats])
    flat = _unit_frames(feats, mean, std, dtype)
    rows = np.minimum(np.arange(width)[None, :], lengths[:, None] - 1) + (np.cumsum(lengths) - lengths)[:, None]
    return torch.from_numpy(flat[rows.T if frame_major else rows])


def _blocks(lengths: Sequence[int], size: int) -> list[list[int]]:
    """Indices sorted by length, cut into blocks of ``size``, so that a block pads little."""
    order = sorted(range(len(lengths)), key=lambda k: lengths[k])
    return [order[s : s + size] for s in range(0, len(order), size)]


def _tiles(lengths: np.ndarray, frames: int, count: int) -> list[tuple[int, int]]:
    """Runs [a, b) of consecutive sequences holding at most ``count`` sequences and ``frames`` frames
    (a longer sequence forms a run alone)."""
    runs, start, total = [], 0, 0
    for k, n in enumerate(lengths.tolist()):
        if k > start and (total + n > frames or k - start == count):
            runs.append((start, k))
            start, total = k, 0
        total += n
    runs.append((start, len(lengths)))
    return runs


# Tiles of the packed search: one GEMM and one DP pass (one OpenMP region each) per tile of whole queries
# (<= TILE_ROWS frames) x whole documents (<= TILE_COLS frames), 8 MB of float32 distances at most, read
# back by the DP from L3. Measured on 50 x 200 queries x documents (benchmarks/README.md): on one thread
# these tiles took the CPU time of 256 x 2048 ones (2 MB, L2) and 0.85x that of 1024 x 4096 ones; on
# 2 threads of a machine loaded far past its cores, where every region's end waits for its slowest
# thread's time slice, 1.28x the floor against 2.98x for the 256 x 2048 tiles' many regions.
TILE_ROWS, TILE_COLS = 1024, 2048


def _packed_costs(
    query_feats: Sequence[torch.Tensor], doc_feats: Sequence[torch.Tensor], mean: np.ndarray, std: np.ndarray,
    dtype: torch.dtype, batch_queries: int, batch_docs: int,
) -> torch.Tensor:
    """(Q, Ndoc) normalised DTW costs through the C++ kernel, on packed frames: no GEMM work on padding.

    Queries and documents are packed end to end ((sum N, D) and (sum M, D)); the distance matrix is
    computed one tile at a time (whole queries x whole documents, at most TILE_ROWS x TILE_COLS frames
    or ``batch_queries`` x ``batch_docs`` sequences), then the tile's pairs run by
    :func:`qbe_cpu.dtw_tile` while the tile is in cache.
    """
    q_lens = np.array([q.shape[0] for q in query_feats], dtype=np.int64)
    d_lens = np.array([d.shape[0] for d in doc_feats], dtype=np.int64)
    q_starts, d_starts = np.cumsum(q_lens) - q_lens, np.cumsum(d_lens) - d_lens
    queries = torch.from_numpy(_unit_frames(query_feats, mean, std, dtype))
    q_tiles = _tiles(q_lens, TILE_ROWS, batch_queries)
    d_tiles = _tiles(d_lens, TILE_COLS, batch_docs)
    out = torch.empty(len(query_feats), len(doc_feats), dtype=dtype)
    cols = max(int(d_lens[a:b].sum()) for a, b in d_tiles)
    doc_buf = np.empty((cols, queries.shape[1]), dtype=queries.numpy().dtype)  # one document tile's frames
    buf = torch.empty(max(int(q_lens[a:b].sum()) for a, b in q_tiles) * cols, dtype=dtype)
    one = torch.ones(1, dtype=dtype)
    for d0, d1 in d_tiles:  # documents outside: each document tile is normalised once and meets every query tile
        docs_t = torch.from_numpy(_unit_frames(doc_feats[d0:d1], mean, std, dtype, out=doc_buf)).T
        c = docs_t.shape[1]
        for q0, q1 in q_tiles:
            r0, r1 = int(q_starts[q0]), int(q_starts[q1 - 1] + q_lens[q1 - 1])
            tile = torch.addmm(one, queries[r0:r1], docs_t, alpha=-1.0, out=buf[: (r1 - r0) * c].view(r1 - r0, c))
            qbe_cpu.dtw_tile(tile, q_starts[q0:q1] - r0, q_lens[q0:q1], d_starts[d0:d1] - d_starts[d0], d_lens[d0:d1],
                             out, np.arange(q0, q1) * len(doc_feats), np.arange(d0, d1))
    return out


def _padded_costs(
    query_feats: Sequence[torch.Tensor], doc_feats: Sequence[torch.Tensor], mean: np.ndarray, std: np.ndarray,
    dtype: torch.dtype, batch_queries: int, batch_docs: int, device: torch.device, backend: str,
) -> torch.Tensor:
    """(Q, Ndoc) normalised DTW costs on padded blocks (any device): :func:`block_dtw_costs` per block.

    G queries padded to N frames, frame-major (N * G, D), times B documents padded to M frames gives
    the (N, G * B, M) layout that block_dtw_costs reads; documents and queries are sorted by length so
    that blocks pad little.
    """
    q_lengths = [q.shape[0] for q in query_feats]
    q_blocks = []
    for idx in _blocks(q_lengths, batch_queries):
        q = _padded_unit_frames([query_feats[k] for k in idx], max(q_lengths[k] for k in idx), mean, std, dtype, frame_major=True)
        q_blocks.append((idx, q.flatten(0, 1).to(device)))
    out = torch.zeros(len(query_feats), len(doc_feats), dtype=torch.float64)
    d_lengths = [d.shape[0] for d in doc_feats]
    one = torch.ones(1, dtype=dtype, device=device)
    for didx in _blocks(d_lengths, batch_docs):
        width = -(-max(d_lengths[k] for k in didx) // 16) * 16  # MKL's GEMM is ~20% faster when 16 divides a row
        docs = _padded_unit_frames([doc_feats[k] for k in didx], width, mean, std, dtype).to(device)
        dlens = torch.tensor([d_lengths[k] for k in didx])
        for qidx, q in q_blocks:
            cost = torch.addmm(one, q, docs.view(-1, docs.shape[-1]).T, alpha=-1.0)  # 1 - cos, (N * G, B * M)
            pairs_q = [q_lengths[k] for k in qidx for _ in didx]  # pair p = (query p // B, document p % B)
            res = block_dtw_costs(cost.view(-1, len(qidx) * len(didx), width), pairs_q, dlens.repeat(len(qidx)), backend)
            out[torch.tensor(qidx)[:, None], torch.tensor(didx)[None, :]] = res.view(len(qidx), len(didx)).double().cpu()
    return out


def _z_normalise_rows(raw: torch.Tensor) -> torch.Tensor:
    """Each query's scores z-normalised over the documents (a row of zeros stays zero)."""
    std = raw.std(dim=1, unbiased=False, keepdim=True).clamp(min=1e-9)
    return (raw - raw.mean(dim=1, keepdim=True)) / std


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
        batch_docs: documents per block (torch backend: sorted by length and padded to the longest; C++
            backend: at most this many per tile of the packed distance matrix).
        batch_queries: queries per block (likewise); a torch block's cost tensor holds
            max N x batch_queries x batch_docs x max M values of ``dtype``.
        device: where the distances and the DP run.
        dtype: compute dtype of distances and DP (float32 agrees with dtw-python to ~1e-6 here).
        backend: the pass after the distances (row min-max, DP): ``"auto"`` (the compiled kernel on CPU
            when it builds, else torch; ``SCORE_QBE_BACKEND`` overrides), ``"cpp"`` or ``"torch"``.
            ``"cpp"`` packs queries and documents without padding and runs the DP tile by tile
            (:func:`_packed_costs`); ``"torch"`` runs padded blocks on any device (:func:`_padded_costs`).

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
    if feature_normalization:
        mean, std = (t.numpy() for t in feature_stats([*query_feats, *doc_feats]))
    else:
        mean, std = np.zeros(1, dtype=np.float32), np.ones(1, dtype=np.float32)

    raw = torch.zeros(len(query_feats), len(doc_feats), dtype=torch.float64)
    kept = [k for k, q in enumerate(query_feats) if q.shape[0] >= MIN_QUERY_FRAMES]  # the others score 0
    if kept:
        queries = [query_feats[k] for k in kept]
        if backend == "cpp":
            costs = _packed_costs(queries, doc_feats, mean, std, dtype, batch_queries, batch_docs)
        else:
            costs = _padded_costs(queries, doc_feats, mean, std, dtype, batch_queries, batch_docs, device, backend)
        raw[kept] = -costs.double()
    return _z_normalise_rows(raw)
