"""Compiled CPU soft-DTW kernel: anti-diagonal SIMD inside a pair, OpenMP across pairs.

The C++ source below is compiled on first use with the system C++ compiler by
:func:`score_upstream.native.load_library` (cached under ``$SCORE_KERNEL_CACHE``) and called
through :mod:`ctypes` (which releases the GIL). When no compiler is found or the build fails,
:func:`load` returns ``None`` and callers fall back to the torch path.

Layout: cost ``C`` and gradient ``G`` are ``(P, L1, L2)`` row-major with cell ``(i, j)`` (1-based) at
``[i-1, j-1]``. The stored softmin values ``Q[i,j] = softmin_gamma(R[i-1,j-1], R[i-1,j], R[i,j-1])``
(so ``R = C + Q``) fill the first ``n_p * m_p`` entries of pair p's ``(L1, L2)`` slot in
anti-diagonal-major order (diagonal ``i + j`` after diagonal ``i + j - 1``, rows ascending within
one): only this module's backward reads them. Each pass first copies the pair's C into that order
(a cache-blocked transpose into a per-thread buffer), so the DP walks contiguous memory; the backward
writes E back row-major. Cells outside a pair's ``(n_p, m_p)`` are never read or written, except that
the backward writes zeros there.
"""

from __future__ import annotations

import ctypes

from score_upstream.native import load_library

_SOURCE = r"""
#include <cmath>
#include <cstdint>
#include <vector>
#include <algorithm>

// Finite sentinels instead of +inf: the build uses -ffast-math (vectorised exp/log), which assumes
// finite values. exp(-(BIG - min)/gamma) underflows to 0 exactly like exp(-inf).
template <typename T> struct Big;
template <> struct Big<float> { static constexpr float v = 1e30f; };
template <> struct Big<double> { static constexpr double v = 1e300; };

// Anti-diagonal-major order of a pair's n x m cells: diagonal d = i + j (1-based cell (i, j), d = 2..n+m)
// holds rows ilo(d)..ihi(d) contiguously, so cell (i, d - i) sits at base[d] + i. Both passes walk the
// diagonals over contiguous memory (SIMD loads, no gathers, every cache line used whole) instead of
// stepping ld - 1 values per cell through row-major C, Q and G, which left the caches at large sizes.
static void diagonal_bases(int64_t n, int64_t m, std::vector<int64_t>& base) {
    base.assign(n + m + 1, 0);
    int64_t off = 0;
    for (int64_t d = 2; d <= n + m; ++d) {
        const int64_t ilo = std::max<int64_t>(1, d - m), ihi = std::min<int64_t>(n, d - 1);
        base[d] = off - ilo;
        off += ihi - ilo + 1;
    }
}

// Row-major C (ld columns) -> diagonal-major out, in column blocks so that the diagonals being written
// stay in L1 while the rows are read.
template <typename T>
static void to_diagonals(const T* C, int64_t ld, int64_t n, int64_t m, const int64_t* base, T* out) {
    constexpr int64_t JB = 128;
    for (int64_t j0 = 1; j0 <= m; j0 += JB) {
        const int64_t j1 = std::min(m, j0 + JB - 1);
        for (int64_t i = 1; i <= n; ++i) {
            const T* row = C + (i - 1) * ld - 1;
            const int64_t* b = base + i;
            for (int64_t j = j0; j <= j1; ++j) out[b[j] + i] = row[j];
        }
    }
}

// Diagonal-major E -> row-major G = E * scale (ld columns).
template <typename T>
static void from_diagonals(const T* E, const int64_t* base, int64_t n, int64_t m, T scale, T* G, int64_t ld) {
    constexpr int64_t JB = 128;
    for (int64_t j0 = 1; j0 <= m; j0 += JB) {
        const int64_t j1 = std::min(m, j0 + JB - 1);
        for (int64_t i = 1; i <= n; ++i) {
            T* row = G + (i - 1) * ld - 1;
            const int64_t* b = base + i;
            for (int64_t j = j0; j <= j1; ++j) row[j] = E[b[j] + i] * scale;
        }
    }
}

// Q gets the pair's softmin values in diagonal-major order (the first n * m entries of its slot).
template <typename T>
static void forward_pair(const T* C, T* Q, int64_t ld, int64_t n, int64_t m, T gamma, T* value,
                         std::vector<T>& cd, std::vector<int64_t>& base) {
    const T big = Big<T>::v;
    const T inv_g = T(1) / gamma;
    diagonal_bases(n, m, base);
    cd.resize(n * m);
    to_diagonals(C, ld, n, m, base.data(), cd.data());
    const T* cdp = cd.data();
    // Three rolling anti-diagonals of R indexed by i = 0..n (cell (i, d - i)).
    std::vector<T> b0(n + 2, big), b1(n + 2, big), b2(n + 2, big);
    T* p2 = b0.data();  // diagonal d - 2
    T* p1 = b1.data();  // diagonal d - 1
    T* cur = b2.data();
    p2[0] = T(0);       // R(0, 0) = 0 on diagonal 0; diagonal 1 is all +inf
    for (int64_t d = 2; d <= n + m; ++d) {
        const int64_t ilo = std::max<int64_t>(1, d - m), ihi = std::min<int64_t>(n, d - 1);
        const int64_t bd = base[d];
        cur[ilo - 1] = big;
        cur[ihi + 1 <= n ? ihi + 1 : n + 1] = big;
        #pragma omp simd
        for (int64_t i = ilo; i <= ihi; ++i) {
            const T a = p2[i - 1], b = p1[i - 1], c = p1[i];
            // The smallest term contributes exp(0) = 1: two exponentials per cell instead of three.
            const T mn = std::min(a, std::min(b, c));
            const T mx = std::max(a, std::max(b, c));
            const T mid = std::max(std::min(a, b), std::min(std::max(a, b), c));
            const T q = mn - gamma * std::log(T(1) + std::exp((mn - mid) * inv_g) + std::exp((mn - mx) * inv_g));
            Q[bd + i] = q;
            cur[i] = cdp[bd + i] + q;
        }
        T* t = p2; p2 = p1; p1 = cur; cur = t;
    }
    *value = p1[n];
}

template <typename T>
static void backward_pair(const T* C, const T* Q, T* G, int64_t ld, int64_t n, int64_t m, T gamma, T gout,
                          std::vector<T>& cd, std::vector<int64_t>& base) {
    const T inv_g = T(1) / gamma;
    const T nbig = -Big<T>::v;
    diagonal_bases(n, m, base);
    cd.resize(n * m);
    to_diagonals(C, ld, n, m, base.data(), cd.data());
    T* ed = cd.data();  // C on entry; each cell's E replaces its C once read
    // Rolling diagonals of E (gradient of the value w.r.t. R) and of Q, indexed by i = 0..n+1.
    std::vector<T> e0(n + 3, T(0)), e1(n + 3, T(0)), e2(n + 3, T(0));
    std::vector<T> q0(n + 3, nbig), q1(n + 3, nbig), q2(n + 3, nbig);
    T *ea = e0.data(), *eb = e1.data(), *ec = e2.data();   // diagonals d + 2, d + 1, d
    T *qa = q0.data(), *qb = q1.data(), *qc = q2.data();
    for (int64_t d = n + m; d >= 2; --d) {
        const int64_t ilo = std::max<int64_t>(1, d - m), ihi = std::min<int64_t>(n, d - 1);
        const int64_t bd = base[d];
        ec[ilo - 1] = T(0); ec[ihi + 1] = T(0);
        qc[ilo - 1] = nbig; qc[ihi + 1] = nbig;
        #pragma omp simd
        for (int64_t i = ilo; i <= ihi; ++i) {
            const T q = Q[bd + i];
            const T r = ed[bd + i] + q;
            // Successors: (i+1, j) and (i, j+1) on diagonal d+1, (i+1, j+1) on diagonal d+2. Their
            // soft-argmin weight for this cell is exp((Q_succ - R)/gamma) <= 1; the clamp only guards
            // the sentinel entries, whose E is 0.
            const T wa = std::exp(std::min((qb[i + 1] - r) * inv_g, T(0)));
            const T wb = std::exp(std::min((qb[i] - r) * inv_g, T(0)));
            const T wc = std::exp(std::min((qa[i + 1] - r) * inv_g, T(0)));
            T e = eb[i + 1] * wa + eb[i] * wb + ea[i + 1] * wc;
            e = (i == n && d - i == m) ? T(1) : e;
            ec[i] = e;
            qc[i] = q;
            ed[bd + i] = e;
        }
        T* t = ea; ea = eb; eb = ec; ec = t;
        t = qa; qa = qb; qb = qc; qc = t;
    }
    from_diagonals(ed, base.data(), n, m, gout, G, ld);
}

template <typename T>
static void forward_batch(const T* C, T* Q, T* values, const int64_t* n, const int64_t* m, int64_t P,
                          int64_t L1, int64_t L2, T gamma, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        std::vector<T> cd;
        std::vector<int64_t> base;
        #pragma omp for schedule(dynamic, 1)
        for (int64_t p = 0; p < P; ++p)
            forward_pair<T>(C + p * L1 * L2, Q + p * L1 * L2, L2, n[p], m[p], gamma, values + p, cd, base);
    }
}

template <typename T>
static void backward_batch(const T* C, const T* Q, T* G, const T* gout, const int64_t* n, const int64_t* m,
                           int64_t P, int64_t L1, int64_t L2, T gamma, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        std::vector<T> cd;
        std::vector<int64_t> base;
        #pragma omp for schedule(dynamic, 1)
        for (int64_t p = 0; p < P; ++p) {
            T* g = G + p * L1 * L2;
            // Zero only the padding: the valid block is fully written by backward_pair.
            for (int64_t i = 0; i < L1; ++i) {
                const int64_t from = i < n[p] ? m[p] : 0;
                std::fill(g + i * L2 + from, g + (i + 1) * L2, T(0));
            }
            backward_pair<T>(C + p * L1 * L2, Q + p * L1 * L2, g, L2, n[p], m[p], gamma, gout[p], cd, base);
        }
    }
}

extern "C" {
void sdtw_forward_f32(const float* C, float* Q, float* v, const int64_t* n, const int64_t* m, int64_t P,
                      int64_t L1, int64_t L2, float g, int t) { forward_batch<float>(C, Q, v, n, m, P, L1, L2, g, t); }
void sdtw_forward_f64(const double* C, double* Q, double* v, const int64_t* n, const int64_t* m, int64_t P,
                      int64_t L1, int64_t L2, double g, int t) { forward_batch<double>(C, Q, v, n, m, P, L1, L2, g, t); }
void sdtw_backward_f32(const float* C, const float* Q, float* G, const float* go, const int64_t* n,
                       const int64_t* m, int64_t P, int64_t L1, int64_t L2, float g, int t) {
    backward_batch<float>(C, Q, G, go, n, m, P, L1, L2, g, t); }
void sdtw_backward_f64(const double* C, const double* Q, double* G, const double* go, const int64_t* n,
                       const int64_t* m, int64_t P, int64_t L1, int64_t L2, double g, int t) {
    backward_batch<double>(C, Q, G, go, n, m, P, L1, L2, g, t); }
}
"""


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    for suffix, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        fwd = getattr(lib, f"sdtw_forward_{suffix}")
        fwd.argtypes = [p, p, p, p, p, i64, i64, i64, real, c_int]
        fwd.restype = None
        bwd = getattr(lib, f"sdtw_backward_{suffix}")
        bwd.argtypes = [p, p, p, p, p, p, i64, i64, i64, real, c_int]
        bwd.restype = None


def load() -> ctypes.CDLL | None:
    """Build (once, cached on disk) and load the kernel library; ``None`` when that is impossible.

    Set ``SCORE_SOFTDTW_NO_BUILD=1`` to skip building (the torch path is used instead).
    """
    return load_library("soft_dtw_cpu", _SOURCE, declare=_declare, no_build_env="SCORE_SOFTDTW_NO_BUILD")
