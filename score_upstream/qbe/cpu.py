"""Compiled CPU kernel of the QbE search's per-block pass: row min-max of exp(cost), then subsequence DTW.

One fused pass per (query, document) pair, OpenMP across pairs, SIMD along the document axis, two
rolling DP rows per pair; it replaces the torch ``aminmax`` + ``exp`` + row-by-row DP of
:func:`score_upstream.qbe.search.block_dtw_costs` on CPU; the packed search
(:func:`score_upstream.qbe.search.qbe_scores`, backend ``"cpp"``) calls :func:`dtw_tile` once per tile of
its distance matrix. Built on first use by
:func:`score_upstream.native.load_library` (``SCORE_QBE_NO_BUILD=1`` disables it) and called
through :mod:`ctypes` (which releases the GIL)::

    res = dtw_pairs(cost, rows, cols, query_lengths, doc_lengths)   # cost (R, W) -> (P,)
    res = dtw_block(cost, query_lengths, doc_lengths)               # padded cost (N, P, M) -> (P,)
    dtw_tile(cost, q_rows, q_lens, d_cols, d_lens, out)             # every query x document of a tile

Pair p with n = query_lengths[p] and m = doc_lengths[p] reads only its n x m block. Row i's local
cost is ``(e - lo_i) / max(hi_i - lo_i, 1e-9)`` with ``e = exp(c)`` and lo_i, hi_i the min and
max of e over the row's m valid columns: s3prl's ``cosine_exp`` distance exp(c) - 1, min-max
normalised per row (the -1 cancels). The DP is dtw-python's ``asymmetric`` step pattern with open
begin and end: D[0, j] = L[0, j], D[i, j] = L[i, j] + min(D[i-1, j], D[i-1, j-1], D[i-1, j-2]),
result min_j D[n-1, j] / n.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from score_upstream.native import load_library

_SOURCE = r"""
#include <cmath>
#include <cstdint>
#include <vector>
#include <algorithm>

template <typename T> struct Big;
template <> struct Big<float> { static constexpr float v = 3e38f; };
template <> struct Big<double> { static constexpr double v = 1e300; };

// One pair: rows C + i * ld, i < n, each with m valid columns. prev/cur hold >= m values.
template <typename T>
static T pair_cost(const T* C, int64_t ld, int64_t n, int64_t m, T* prev, T* cur) {
    for (int64_t i = 0; i < n; ++i) {
        const T* c = C + i * ld;
        // exp first, extremes of the stored exps after: a row's local costs then lie in [0, 1] with its
        // min exactly 0 even where the row is constant (one document frame, repeated frames).
        T lo = Big<T>::v, hi = -Big<T>::v;
        #pragma omp simd reduction(min:lo) reduction(max:hi)
        for (int64_t j = 0; j < m; ++j) {
            const T e = std::exp(c[j]);
            cur[j] = e;
            lo = std::min(lo, e);
            hi = std::max(hi, e);
        }
        const T scale = T(1) / std::max(hi - lo, T(1e-9));
        if (i == 0) {
            #pragma omp simd
            for (int64_t j = 0; j < m; ++j) cur[j] = (cur[j] - lo) * scale;
        } else {
            // asymmetric steps: from (i-1, j), (i-1, j-1) or (i-1, j-2)
            cur[0] = (cur[0] - lo) * scale + prev[0];
            if (m > 1) cur[1] = (cur[1] - lo) * scale + std::min(prev[1], prev[0]);
            #pragma omp simd
            for (int64_t j = 2; j < m; ++j)
                cur[j] = (cur[j] - lo) * scale + std::min(prev[j], std::min(prev[j - 1], prev[j - 2]));
        }
        std::swap(prev, cur);
    }
    T best = Big<T>::v;
    #pragma omp simd reduction(min:best)
    for (int64_t j = 0; j < m; ++j) best = std::min(best, prev[j]);
    return best / T(n);
}

template <typename T>
static void pairs(const T* C, T* out, const int64_t* row, const int64_t* col, const int64_t* qlen,
                  const int64_t* dlen, int64_t P, int64_t ld, int64_t width, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        std::vector<T> a(width + 8), b(width + 8);
        #pragma omp for schedule(dynamic, 4)
        for (int64_t p = 0; p < P; ++p)
            out[p] = pair_cost<T>(C + row[p] * ld + col[p], ld, qlen[p], dlen[p], a.data(), b.data());
    }
}

// One GEMM tile: every query block (rows qrow[a].., qlen[a] rows) against every document block (columns
// dcol[b].., dlen[b] columns) of the tile C (ld columns); pair (a, b)'s cost goes to out[qout[a] + dout[b]].
template <typename T>
static void tile(const T* C, int64_t ld, const int64_t* qrow, const int64_t* qlen, int64_t nq, const int64_t* dcol,
                 const int64_t* dlen, int64_t nd, T* out, const int64_t* qout, const int64_t* dout, int64_t width,
                 int threads) {
    #pragma omp parallel num_threads(threads)
    {
        std::vector<T> a(width + 8), b(width + 8);
        #pragma omp for schedule(dynamic, 1) collapse(2)
        for (int64_t q = 0; q < nq; ++q)
            for (int64_t d = 0; d < nd; ++d)
                out[qout[q] + dout[d]] = pair_cost<T>(C + qrow[q] * ld + dcol[d], ld, qlen[q], dlen[d], a.data(), b.data());
    }
}

extern "C" {
void qbe_tile_f32(const float* C, int64_t ld, const int64_t* qr, const int64_t* ql, int64_t nq, const int64_t* dc,
                  const int64_t* dl, int64_t nd, float* out, const int64_t* qo, const int64_t* d_o, int64_t w, int t) {
    tile<float>(C, ld, qr, ql, nq, dc, dl, nd, out, qo, d_o, w, t); }
void qbe_tile_f64(const double* C, int64_t ld, const int64_t* qr, const int64_t* ql, int64_t nq, const int64_t* dc,
                  const int64_t* dl, int64_t nd, double* out, const int64_t* qo, const int64_t* d_o, int64_t w, int t) {
    tile<double>(C, ld, qr, ql, nq, dc, dl, nd, out, qo, d_o, w, t); }
void qbe_pairs_f32(const float* C, float* out, const int64_t* r, const int64_t* c, const int64_t* q,
                   const int64_t* d, int64_t P, int64_t ld, int64_t w, int t) { pairs<float>(C, out, r, c, q, d, P, ld, w, t); }
void qbe_pairs_f64(const double* C, double* out, const int64_t* r, const int64_t* c, const int64_t* q,
                   const int64_t* d, int64_t P, int64_t ld, int64_t w, int t) { pairs<double>(C, out, r, c, q, d, P, ld, w, t); }
}
"""

_FUNCS = {torch.float32: "qbe_pairs_f32", torch.float64: "qbe_pairs_f64"}
_TILE_FUNCS = {torch.float32: "qbe_tile_f32", torch.float64: "qbe_tile_f64"}


def _declare(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for name in _FUNCS.values():
        fn = getattr(lib, name)
        fn.argtypes = [p, p, p, p, p, p, i64, i64, i64, ctypes.c_int]
        fn.restype = None
    for name in _TILE_FUNCS.values():
        fn = getattr(lib, name)
        fn.argtypes = [p, i64, p, p, i64, p, p, i64, p, p, p, i64, ctypes.c_int]
        fn.restype = None


def load() -> ctypes.CDLL | None:
    """Build (once, cached on disk) and load the kernel library; ``None`` when that is impossible.

    Set ``SCORE_QBE_NO_BUILD=1`` to skip building (the torch path is used instead).
    """
    return load_library("qbe_cpu", _SOURCE, declare=_declare, no_build_env="SCORE_QBE_NO_BUILD")


def dtw_pairs(
    cost: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    query_lengths: torch.Tensor,
    doc_lengths: torch.Tensor,
    threads: int | None = None,
) -> torch.Tensor:
    """Normalised subsequence-DTW cost of P pairs whose raw cosine distances are blocks of one matrix.

    Args:
        cost: (R, W) contiguous float32/float64 CPU tensor of ``1 - cos`` values; pair p's query frame i
            and document frame j are at ``[rows[p] + i, cols[p] + j]``. Nothing else is read.
        rows, cols: (P,) first row and column of each pair's block.
        query_lengths: (P,) query frames n_p >= 1 per pair (rows[p] + n_p <= R).
        doc_lengths: (P,) document frames m_p >= 1 per pair (cols[p] + m_p <= W).
        threads: OpenMP threads (default ``torch.get_num_threads()``).

    Returns:
        (P,) costs in ``cost``'s dtype.

    Raises:
        RuntimeError: the library cannot be built (check :func:`load` first).
        ValueError: a shape, dtype or device other than the above, or a block outside ``cost``.
    """
    lib = load()
    if lib is None:
        raise RuntimeError("the QbE CPU kernel is unavailable (no C++ compiler, a failed build or SCORE_QBE_NO_BUILD=1)")
    if cost.dim() != 2 or cost.device.type != "cpu" or cost.dtype not in _FUNCS or not cost.is_contiguous():
        raise ValueError(f"cost must be a contiguous (R, W) float32/float64 CPU tensor, got {cost.dtype} {tuple(cost.shape)} on {cost.device}")
    args = [torch.as_tensor(x, dtype=torch.int64).contiguous() for x in (rows, cols, query_lengths, doc_lengths)]
    pairs = args[0].numel()
    if any(x.shape != (pairs,) for x in args):
        raise ValueError(f"rows, cols, query_lengths and doc_lengths must all be (P,), got {[tuple(x.shape) for x in args]}")
    r, c, n, m = args
    if pairs and (
        int(r.min()) < 0 or int(c.min()) < 0 or int(n.min()) < 1 or int(m.min()) < 1
        or int((r + n).max()) > cost.shape[0] or int((c + m).max()) > cost.shape[1]
    ):
        raise ValueError(f"pair blocks must be non-empty and inside the {tuple(cost.shape)} cost matrix, got rows {r.tolist()}, "
                         f"cols {c.tolist()}, query lengths {n.tolist()}, document lengths {m.tolist()}")
    out = torch.empty(pairs, dtype=cost.dtype)
    width = int(m.max()) if pairs else 0
    getattr(lib, _FUNCS[cost.dtype])(cost.data_ptr(), out.data_ptr(), *(x.data_ptr() for x in args), pairs,
                                     cost.shape[1], width, threads or torch.get_num_threads())
    return out


def dtw_tile(
    cost: torch.Tensor,
    q_rows: np.ndarray,
    q_lens: np.ndarray,
    d_cols: np.ndarray,
    d_lens: np.ndarray,
    out: torch.Tensor,
    q_out: np.ndarray | None = None,
    d_out: np.ndarray | None = None,
    threads: int | None = None,
) -> None:
    """Costs of every query against every document of one tile of the distance matrix, written into ``out``.

    The packed search's per-tile pass: one GEMM of A whole queries (rows) against B whole documents
    (columns), then the A x B pairs from that tile while it is still in cache.

    Args:
        cost: (R, W) contiguous float32/float64 CPU tensor of ``1 - cos`` values; query a's frame i and
            document b's frame j are at ``[q_rows[a] + i, d_cols[b] + j]``. Nothing else is read.
        q_rows, q_lens: (A,) integer arrays, first row and frames (>= 1) of each query.
        d_cols, d_lens: (B,) integer arrays, first column and frames (>= 1) of each document.
        out: contiguous CPU tensor of ``cost``'s dtype; pair (a, b) is written to
            ``out.view(-1)[q_out[a] + d_out[b]]``.
        q_out, d_out: (A,) and (B,) flat offsets into ``out`` (default: ``out`` is (A, B)).
        threads: OpenMP threads (default ``torch.get_num_threads()``).

    Raises:
        RuntimeError: the library cannot be built (check :func:`load` first).
        ValueError: a shape, dtype or device other than the above, or a block or offset outside its array.
    """
    lib = load()
    if lib is None:
        raise RuntimeError("the QbE CPU kernel is unavailable (no C++ compiler, a failed build or SCORE_QBE_NO_BUILD=1)")
    if cost.dim() != 2 or cost.device.type != "cpu" or cost.dtype not in _TILE_FUNCS or not cost.is_contiguous():
        raise ValueError(f"cost must be a contiguous (R, W) float32/float64 CPU tensor, got {cost.dtype} {tuple(cost.shape)} on {cost.device}")
    if out.dtype != cost.dtype or out.device.type != "cpu" or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {cost.dtype} CPU tensor, got {out.dtype} {tuple(out.shape)} on {out.device}")
    q_rows, q_lens, d_cols, d_lens = (np.ascontiguousarray(x, dtype=np.int64) for x in (q_rows, q_lens, d_cols, d_lens))
    a, b = len(q_rows), len(d_cols)
    q_out = np.arange(a, dtype=np.int64) * b if q_out is None else np.ascontiguousarray(q_out, dtype=np.int64)
    d_out = np.arange(b, dtype=np.int64) if d_out is None else np.ascontiguousarray(d_out, dtype=np.int64)
    if q_lens.shape != (a,) or q_out.shape != (a,) or d_lens.shape != (b,) or d_out.shape != (b,):
        raise ValueError(f"q_rows, q_lens, q_out must be (A,) and d_cols, d_lens, d_out (B,), got "
                         f"{[x.shape for x in (q_rows, q_lens, q_out, d_cols, d_lens, d_out)]}")
    if a == 0 or b == 0:
        return
    if (q_rows.min() < 0 or d_cols.min() < 0 or q_lens.min() < 1 or d_lens.min() < 1
            or (q_rows + q_lens).max() > cost.shape[0] or (d_cols + d_lens).max() > cost.shape[1]):
        raise ValueError(f"query and document blocks must be non-empty and inside the {tuple(cost.shape)} tile, got rows "
                         f"{q_rows.tolist()} x {q_lens.tolist()}, cols {d_cols.tolist()} x {d_lens.tolist()}")
    if min(q_out.min(), d_out.min()) < 0 or q_out.max() + d_out.max() >= out.numel():
        raise ValueError(f"output offsets must lie inside out ({out.numel()} values), got up to {q_out.max() + d_out.max()}")
    getattr(lib, _TILE_FUNCS[cost.dtype])(
        cost.data_ptr(), cost.shape[1], q_rows.ctypes.data, q_lens.ctypes.data, a, d_cols.ctypes.data, d_lens.ctypes.data,
        b, out.data_ptr(), q_out.ctypes.data, d_out.ctypes.data, int(d_lens.max()), threads or torch.get_num_threads())


def dtw_block(cost: torch.Tensor, query_lengths: torch.Tensor, doc_lengths: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """:func:`dtw_pairs` for a padded block: ``cost`` (N, P, M) contiguous, pair p at ``cost[:n_p, p, :m_p]``.

    Returns:
        (P,) costs in ``cost``'s dtype.
    """
    if cost.dim() != 3:
        raise ValueError(f"cost must be (N, P, M), got shape {tuple(cost.shape)}")
    n_rows, pairs, width = cost.shape
    cols = torch.arange(pairs, dtype=torch.int64) * width
    return dtw_pairs(cost.reshape(n_rows, pairs * width), torch.zeros(pairs, dtype=torch.int64), cols, query_lengths, doc_lengths, threads)
