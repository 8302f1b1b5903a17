"""Soft-DTW divergence with per-pair lengths and its CPU (C++), torch and Triton kernels."""
