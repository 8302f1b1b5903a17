"""Compiled CPU kernel of the QbE search's per-block pass: row min-max of exp(cost), then subsequence DTW.

One fused pass per (query, document) pair, OpenMP across pairs, SIMD along the document axis, two
rolling DP rows per pair; it replaces the torch ``aminmax`` + ``exp`` + row-by-row DP of
:func:`score_upstream.qbe.search.block_dtw_costs` on CPU. Built on first use by
:func:`score_upstream.native.load_library` (``SCORE_QBE_NO_BUILD=1`` disables it) and called
through :mod:`ctypes` (which releases the GIL)::

    res = dtw_pairs(cost, rows, cols, query_lengths, doc_lengths)   # cost (R, W) -> (P,)
    res = dtw_block(cost, query_lengths, doc_lengths)               # padded cost (N, P, M) -> (P,)

Pair p with n = query_lengths[p] and m = doc_lengths[p] reads only its n x m block. Row i's local
cost is ``(e - lo_i) / max(hi_i - lo_i, 1e-9)`` with ``e = exp(c)`` and lo_i, hi_i the min and
max of e over the row's m valid columns: s3prl's ``cosine_exp`` distance exp(c) - 1, min-max
normalised per row (the -1 cancels). The DP is dtw-python's ``asymmetric`` step pattern with open
begin and end: D[0, j] = L[0, j], D[i, j] = L[i, j] + min(D[i-1, j], D[i-1, j-1], D[i-1, j-2]),
result min_j D[n-1, j] / n.
"""

from __future__ import annotations

import ctypes

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

extern "C" {
void qbe_pairs_f32(const float* C, float* out, const int64_t* r, const int64_t* c, const int64_t* q,
                   const int64_t* d, int64_t P, int64_t ld, int64_t w, int t) { pairs<float>(C, out, r, c, q, d, P, ld, w, t); }
void qbe_pairs_f64(const double* C, double* out, const int64_t* r, const int64_t* c, const int64_t* q,
                   const int64_t* d, int64_t P, int64_t ld, int64_t w, int t) { pairs<double>(C, out, r, c, q, d, P, ld, w, t); }
}
"""

_FUNCS = {torch.float32: "qbe_pairs_f32", torch.float64: "qbe_pairs_f64"}


def _declare(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for name in _FUNCS.values():
        fn = getattr(lib, name)
        fn.argtypes = [p, p, p, p, p, p, i64, i64, i64, ctypes.c_int]
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
