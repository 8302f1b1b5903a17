"""Compiled CPU soft-DTW kernel: anti-diagonal SIMD inside a pair, OpenMP across pairs.

The C++ source below is compiled on first use with the system C++ compiler by
:func:`score_upstream.native.load_library` (cached under ``$SCORE_KERNEL_CACHE``) and called
through :mod:`ctypes` (which releases the GIL). When no compiler is found or the build fails,
:func:`load` returns ``None`` and callers fall back to the torch path.

Layout: cost ``C`` and the stored softmin values ``Q`` are ``(P, L1, L2)`` row-major with cell
``(i, j)`` (1-based) at ``[i-1, j-1]``; ``Q[i,j] = softmin_gamma(R[i-1,j-1], R[i-1,j], R[i,j-1])`` so
``R = C + Q``. Cells outside a pair's ``(n_p, m_p)`` are never read or written, except that the backward
writes zeros there.
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

template <typename T>
static void forward_pair(const T* C, T* Q, int64_t ld, int64_t n, int64_t m, T gamma, T* value) {
    const T big = Big<T>::v;
    const T inv_g = T(1) / gamma;
    // Three rolling anti-diagonals of R indexed by i = 0..n (cell (i, d - i)).
    std::vector<T> b0(n + 2, big), b1(n + 2, big), b2(n + 2, big);
    T* p2 = b0.data();  // diagonal d - 2
    T* p1 = b1.data();  // diagonal d - 1
    T* cur = b2.data();
    p2[0] = T(0);       // R(0, 0) = 0 on diagonal 0; diagonal 1 is all +inf
    for (int64_t d = 2; d <= n + m; ++d) {
        const int64_t ilo = std::max<int64_t>(1, d - m), ihi = std::min<int64_t>(n, d - 1);
        cur[ilo - 1] = big;
        cur[ihi + 1 <= n ? ihi + 1 : n + 1] = big;
        #pragma omp simd
        for (int64_t i = ilo; i <= ihi; ++i) {
            const int64_t j = d - i;
            const T a = p2[i - 1], b = p1[i - 1], c = p1[i];
            const T mn = std::min(a, std::min(b, c));
            const T s = std::exp((mn - a) * inv_g) + std::exp((mn - b) * inv_g) + std::exp((mn - c) * inv_g);
            const T q = mn - gamma * std::log(s);
            const int64_t off = (i - 1) * ld + (j - 1);
            Q[off] = q;
            cur[i] = C[off] + q;
        }
        T* t = p2; p2 = p1; p1 = cur; cur = t;
    }
    *value = p1[n];
}

template <typename T>
static void backward_pair(const T* C, const T* Q, T* G, int64_t ld, int64_t n, int64_t m, T gamma, T gout) {
    const T inv_g = T(1) / gamma;
    const T nbig = -Big<T>::v;
    // Rolling diagonals of E (gradient of the value w.r.t. R) and of Q, indexed by i = 0..n+1.
    std::vector<T> e0(n + 3, T(0)), e1(n + 3, T(0)), e2(n + 3, T(0));
    std::vector<T> q0(n + 3, nbig), q1(n + 3, nbig), q2(n + 3, nbig);
    T *ea = e0.data(), *eb = e1.data(), *ec = e2.data();   // diagonals d + 2, d + 1, d
    T *qa = q0.data(), *qb = q1.data(), *qc = q2.data();
    for (int64_t d = n + m; d >= 2; --d) {
        const int64_t ilo = std::max<int64_t>(1, d - m), ihi = std::min<int64_t>(n, d - 1);
        ec[ilo - 1] = T(0); ec[ihi + 1] = T(0);
        qc[ilo - 1] = nbig; qc[ihi + 1] = nbig;
        #pragma omp simd
        for (int64_t i = ilo; i <= ihi; ++i) {
            const int64_t j = d - i;
            const int64_t off = (i - 1) * ld + (j - 1);
            const T q = Q[off];
            const T r = C[off] + q;
            // Successors: (i+1, j) and (i, j+1) on diagonal d+1, (i+1, j+1) on diagonal d+2. Their
            // soft-argmin weight for this cell is exp((Q_succ - R)/gamma) <= 1; the clamp only guards
            // the sentinel entries, whose E is 0.
            const T wa = std::exp(std::min((qb[i + 1] - r) * inv_g, T(0)));
            const T wb = std::exp(std::min((qb[i] - r) * inv_g, T(0)));
            const T wc = std::exp(std::min((qa[i + 1] - r) * inv_g, T(0)));
            T e = eb[i + 1] * wa + eb[i] * wb + ea[i + 1] * wc;
            e = (i == n && j == m) ? T(1) : e;
            ec[i] = e;
            qc[i] = q;
            G[off] = e * gout;
        }
        T* t = ea; ea = eb; eb = ec; ec = t;
        t = qa; qa = qb; qb = qc; qc = t;
    }
}

template <typename T>
static void forward_batch(const T* C, T* Q, T* values, const int64_t* n, const int64_t* m, int64_t P,
                          int64_t L1, int64_t L2, T gamma, int threads) {
    #pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t p = 0; p < P; ++p)
        forward_pair<T>(C + p * L1 * L2, Q + p * L1 * L2, L2, n[p], m[p], gamma, values + p);
}

template <typename T>
static void backward_batch(const T* C, const T* Q, T* G, const T* gout, const int64_t* n, const int64_t* m,
                           int64_t P, int64_t L1, int64_t L2, T gamma, int threads) {
    #pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t p = 0; p < P; ++p) {
        T* g = G + p * L1 * L2;
        // Zero only the padding: the valid block is fully written by backward_pair.
        for (int64_t i = 0; i < L1; ++i) {
            const int64_t from = i < n[p] ? m[p] : 0;
            std::fill(g + i * L2 + from, g + (i + 1) * L2, T(0));
        }
        backward_pair<T>(C + p * L1 * L2, Q + p * L1 * L2, g, L2, n[p], m[p], gamma, gout[p]);
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
