"""The packed QbE search (C++ backend): tiles of whole queries x whole documents, no padding in the GEMM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from score_upstream.qbe import cpu as qbe_cpu
from score_upstream.qbe import quesst
from score_upstream.qbe import search as qbe
from test_qbe import _features, _naive_block_cost

pytestmark = [
    pytest.mark.compat_env,
    pytest.mark.skipif(qbe_cpu.load() is None, reason="no C++ compiler: the QbE CPU kernel cannot be built"),
]


def _ragged(seed, qlens, dlens, dim=6):
    """Packed queries x packed documents with junk rows/columns between them; the naive cost of each pair."""
    gen = torch.Generator().manual_seed(seed)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=1)  # noqa: E731
    queries, docs = [unit(n) for n in qlens], [unit(m) for m in dlens]
    q_rows = np.cumsum([1 + n for n in qlens]) - np.array(qlens)  # one junk row before each query
    d_cols = np.cumsum([2 + m for m in dlens]) - np.array(dlens)  # two junk columns before each document
    cost = torch.full((int(q_rows[-1] + qlens[-1]), int(d_cols[-1] + dlens[-1])), -3.0, dtype=torch.float64)
    ref = np.zeros((len(qlens), len(dlens)))
    for a, q in enumerate(queries):
        for b, d in enumerate(docs):
            block = 1 - q @ d.T
            cost[q_rows[a] : q_rows[a] + len(q), d_cols[b] : d_cols[b] + len(d)] = block
            ref[a, b] = _naive_block_cost(block.numpy())
    return cost, q_rows, d_cols, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tile_kernel_reads_only_each_block_and_writes_through_offsets(dtype):
    qlens, dlens = [1, 5, 2, 9], [3, 1, 17, 2, 8]  # one-frame queries and documents, ragged lengths
    cost, q_rows, d_cols, ref = _ragged(11, qlens, dlens)
    out = torch.full((6, 7), 99.0, dtype=dtype)  # pairs land at rows 1.. and columns 2.. of a larger matrix
    qbe_cpu.dtw_tile(cost.to(dtype), q_rows, qlens, d_cols, dlens, out, (np.arange(4) + 1) * 7, np.arange(5) + 2)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(out[1:5, 2:7].double(), torch.from_numpy(ref), atol=tol, rtol=0)
    assert (out[0] == 99).all() and (out[5] == 99).all() and (out[:, :2] == 99).all()
    default = torch.empty(4, 5, dtype=dtype)
    qbe_cpu.dtw_tile(cost.to(dtype), q_rows, qlens, d_cols, dlens, default, threads=1)
    assert torch.equal(default, out[1:5, 2:7])


def test_tile_kernel_rejects_bad_blocks():
    cost, out = torch.zeros(4, 6), torch.zeros(2, 2)
    one, two = np.array([0]), np.array([0, 1])
    with pytest.raises(ValueError, match="inside"):
        qbe_cpu.dtw_tile(cost, one, [5], one, [6], out)
    with pytest.raises(ValueError, match="non-empty"):
        qbe_cpu.dtw_tile(cost, one, [0], one, [6], out)
    with pytest.raises(ValueError, match="output offsets"):
        qbe_cpu.dtw_tile(cost, two, [1, 1], two, [1, 1], out, d_out=np.array([0, 2]))
    with pytest.raises(ValueError, match=r"\(A,\)"):
        qbe_cpu.dtw_tile(cost, two, [1], one, [1], out)
    with pytest.raises(ValueError, match="out must be"):
        qbe_cpu.dtw_tile(cost, one, [1], one, [1], out.double())


def test_tiles_cover_every_sequence_within_the_limits():
    lengths = np.array([5, 9, 3, 30, 2, 2, 2, 7])
    runs = qbe._tiles(lengths, frames=12, count=3)
    assert [k for a, b in runs for k in range(a, b)] == list(range(len(lengths)))
    for a, b in runs:
        assert b - a <= 3 and (lengths[a:b].sum() <= 12 or b - a == 1)  # a longer sequence stands alone
    assert (3, 4) in runs
    assert qbe._tiles(lengths, frames=1000, count=100) == [(0, len(lengths))]


def _search_inputs(seed=21, dim=10):
    gen = torch.Generator().manual_seed(seed)
    short = [torch.randn(n, dim, generator=gen) for n in (4, 1)]
    queries = [short[0], *_features(gen, 3, 5, 25, dim), short[1], *_features(gen, 2, 5, 40, dim)]
    return queries, _features(gen, 11, 1, 70, dim)


def test_tiles_that_split_queries_and_documents_give_the_same_scores(monkeypatch):
    queries, docs = _search_inputs()
    ref = quesst.s3prl_qbe_scores(queries, docs)
    whole = qbe.qbe_scores(queries, docs, backend="cpp")
    assert (whole - ref).abs().max() < 1e-4
    monkeypatch.setattr(qbe, "TILE_ROWS", 30)  # a few queries per tile, some alone
    monkeypatch.setattr(qbe, "TILE_COLS", 50)  # documents split over many tiles, the longest alone
    for batch_docs, batch_queries in [(32, 16), (3, 2), (1, 1)]:
        split = qbe.qbe_scores(queries, docs, backend="cpp", batch_docs=batch_docs, batch_queries=batch_queries)
        assert (split - whole).abs().max() < 1e-5, (batch_docs, batch_queries)
    torch_path = qbe.qbe_scores(queries, docs, backend="torch", batch_docs=4, batch_queries=2)
    assert (torch_path - whole).abs().max() < 1e-5


def test_queries_under_five_frames_score_zero_wherever_they_sit():
    queries, docs = _search_inputs(seed=22)
    scores = qbe.qbe_scores(queries, docs, backend="cpp")
    for k, q in enumerate(queries):
        if len(q) < 5:
            assert torch.equal(scores[k], torch.zeros(len(docs)))
        else:
            assert scores[k].std(unbiased=False).sub(1).abs() < 1e-6
    only_short = qbe.qbe_scores([queries[0], queries[4]], docs, backend="cpp")
    assert torch.equal(only_short, torch.zeros(2, len(docs)))


def test_float32_agrees_with_float64():
    queries, docs = _search_inputs(seed=23)
    s64 = qbe.qbe_scores(queries, docs, backend="cpp", dtype=torch.float64)
    s32 = qbe.qbe_scores(queries, docs, backend="cpp", dtype=torch.float32)
    assert s32.dtype == s64.dtype == torch.float64
    assert (s32 - s64).abs().max() < 1e-4
    assert (s64 - quesst.s3prl_qbe_scores(queries, docs)).abs().max() < 1e-4  # s3prl normalises in float32
