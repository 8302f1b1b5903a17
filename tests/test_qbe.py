"""QbE search: the batched DP against a naive loop and dtw-python, scores and XML against s3prl's expert."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from score_upstream.qbe import search as qbe
from score_upstream.qbe import quesst
from score_upstream.qbe import stdlist
from score_upstream.qbe import cpu as qbe_cpu

pytestmark = pytest.mark.compat_env  # also run in the oldest supported environment (README)

BACKENDS = ["torch"] + (["cpp"] if qbe_cpu.load() is not None else [])
needs_cpp = pytest.mark.skipif(qbe_cpu.load() is None, reason="no C++ compiler: the QbE CPU kernel cannot be built")


def _naive_subsequence_dtw(c: np.ndarray) -> float:
    """Float64 loops over every cell: open begin, asymmetric steps, open end, / query length."""
    n, m = c.shape
    d = np.full((n, m), np.inf)
    d[0] = c[0]
    for i, j in itertools.product(range(1, n), range(m)):
        d[i, j] = c[i, j] + min(d[i - 1, j - k] for k in (0, 1, 2) if j - k >= 0)
    return d[-1].min() / n


def _brute_force(c: np.ndarray) -> float:
    """Minimum over every path with column steps 0, 1 or 2 per query frame, any start column."""
    n, m = c.shape
    best = np.inf
    for start in range(m):
        for steps in itertools.product((0, 1, 2), repeat=n - 1):
            cols = np.cumsum((start, *steps))
            if cols[-1] < m:
                best = min(best, c[np.arange(n), cols].sum())
    return best / n


def _features(gen, count, lo, hi, dim):
    return [torch.randn(int(torch.randint(lo, hi + 1, (1,), generator=gen)), dim, generator=gen) for _ in range(count)]


def test_dp_matches_brute_force_and_dtw_python():
    from dtw import dtw

    gen = torch.Generator().manual_seed(1)
    for n, m in [(1, 1), (1, 4), (2, 1), (3, 2), (4, 7), (5, 3)]:
        c = torch.rand(n, m, generator=gen, dtype=torch.float64)
        ours = float(qbe.subsequence_dtw_cost(c[None], torch.tensor([m]))[0])
        ref = dtw(c.numpy(), step_pattern="asymmetric", open_begin=True, open_end=True).normalizedDistance
        assert ours == pytest.approx(_brute_force(c.numpy()), abs=1e-12)
        assert ours == pytest.approx(ref, abs=1e-12)


def test_dp_batch_with_padding_equals_each_pair_alone():
    gen = torch.Generator().manual_seed(2)
    qlens, dlens = [9, 3, 14, 1, 6], [20, 5, 33, 2, 33]
    cost = torch.rand(5, 14, 33, generator=gen, dtype=torch.float64)
    for b, (n, m) in enumerate(zip(qlens, dlens)):  # padding must never matter: fill it with junk
        cost[b, n:] = float("inf") if b % 2 else -5.0
        cost[b, :, m:] = float("inf") if b % 2 else -7.0
    ours = qbe.subsequence_dtw_cost(cost, torch.tensor(dlens), torch.tensor(qlens))
    ref = [_naive_subsequence_dtw(cost[b, :n, :m].numpy()) for b, (n, m) in enumerate(zip(qlens, dlens))]
    assert torch.allclose(ours, torch.tensor(ref, dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.allclose(qbe.subsequence_dtw_cost(cost.float(), torch.tensor(dlens), qlens).double(), ours, atol=1e-5)


def test_dp_rejects_bad_lengths():
    with pytest.raises(qbe.QbeError, match="doc_lengths"):
        qbe.subsequence_dtw_cost(torch.rand(2, 3, 4), torch.tensor([4, 5]))
    with pytest.raises(qbe.QbeError, match="query length"):
        qbe.subsequence_dtw_cost(torch.rand(2, 3, 4), torch.tensor([4, 4]), [3, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scores_equal_s3prl_path(dtype):
    gen = torch.Generator().manual_seed(3)
    dim = 12
    queries = _features(gen, 6, 5, 30, dim) + [torch.randn(3, dim, generator=gen)]  # the last one is too short
    docs = _features(gen, 15, 5, 60, dim)
    ref = quesst.s3prl_qbe_scores(queries, docs)
    for (batch_docs, batch_queries), backend in itertools.product([(4, 2), (64, 16), (1, 1)], BACKENDS):
        ours = qbe.qbe_scores(queries, docs, batch_docs=batch_docs, batch_queries=batch_queries, dtype=dtype, backend=backend)
        assert ours.shape == (7, 15) and ours.dtype == torch.float64
        assert (ours - ref).abs().max() < (1e-4 if dtype == torch.float32 else 1e-6), backend  # float32 stats round
    assert torch.equal(ours[-1], torch.zeros(15))  # s3prl scores queries under 5 frames 0
    assert ours[:-1].std(dim=1, unbiased=False).sub(1).abs().max() < 1e-6  # z-normalised per query


def _naive_block_cost(raw: np.ndarray) -> float:
    """s3prl's local cost in float64 (exp(c) - 1, row min-max over the document), then the naive DP."""
    e = np.exp(raw.astype(np.float64)) - 1
    lo, hi = e.min(1, keepdims=True), e.max(1, keepdims=True)
    return _naive_subsequence_dtw((e - lo) / np.maximum(hi - lo, 1e-9))


def _pad_last(seqs, length):
    """(K, length, D): each sequence padded by repeating its last frame, as qbe_scores pads."""
    return torch.stack([torch.cat([s, s[-1:].expand(length - len(s), -1)]) for s in seqs])


def _tiny_block(seed, qlens, dlens, dim=6):
    """Raw (Nmax, G*B, Mmax) 1 - cos block as qbe_scores builds it (padding repeats the last frame)."""
    gen = torch.Generator().manual_seed(seed)
    unit = lambda n: torch.nn.functional.normalize(torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=1)  # noqa: E731
    queries, docs = [unit(n) for n in qlens], [unit(m) for m in dlens]
    q = _pad_last(queries, max(qlens)).transpose(0, 1)  # (Nmax, G, D)
    d = _pad_last(docs, max(dlens))  # (B, Mmax, D)
    cost = 1 - torch.einsum("ngk,bmk->ngbm", q, d).reshape(max(qlens), -1, max(dlens))
    pairs = [(n, m) for n in qlens for m in dlens]
    ref = torch.tensor([_naive_block_cost(cost[:n, p, :m].numpy()) for p, (n, m) in enumerate(pairs)], dtype=torch.float64)
    return queries, docs, cost, pairs, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_block_backends_match_naive_loop(dtype):
    qlens, dlens = [1, 2, 5, 9], [1, 2, 3, 17, 40]  # short queries, one-frame and padded documents
    _, _, cost, pairs, ref = _tiny_block(7, qlens, dlens)
    n, m = [p[0] for p in pairs], torch.tensor([p[1] for p in pairs])
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    results = {b: qbe.block_dtw_costs(cost.to(dtype).clone(), n, m, backend=b) for b in BACKENDS}
    for backend, res in results.items():
        assert res.dtype == dtype and torch.allclose(res.double(), ref, atol=tol, rtol=0), backend
    if "cpp" in results:
        assert torch.allclose(results["cpp"], results["torch"], atol=tol, rtol=0)


@needs_cpp
def test_cpp_kernel_reads_only_each_pairs_block():
    qlens, dlens = [3, 1, 6], [2, 9, 4]
    queries, docs, cost, pairs, ref = _tiny_block(8, qlens, dlens)
    junk = cost.clone()
    for p, (n, m) in enumerate(pairs):  # padding of the padded layout: never read
        junk[n:, p] = float("nan")
        junk[:, p, m:] = -1e30
    n, m = torch.tensor([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])
    assert torch.allclose(qbe_cpu.dtw_block(junk, n, m), ref, atol=1e-12, rtol=0)
    # Packed layout: all query frames x all document frames, one block per pair, no padding at all.
    packed = 1 - torch.cat(queries) @ torch.cat(docs).T
    packed = torch.cat([packed, torch.full((packed.shape[0], 5), float("nan"))], 1).contiguous()  # unread columns
    rows = torch.tensor([0, *qlens[:-1]]).cumsum(0).repeat_interleave(len(dlens))
    cols = torch.tensor([0, *dlens[:-1]]).cumsum(0).repeat(len(qlens))
    got = qbe_cpu.dtw_pairs(packed, rows, cols, n, m, threads=2)
    assert torch.allclose(got, ref, atol=1e-12, rtol=0)
    assert torch.equal(qbe_cpu.dtw_pairs(packed.float(), rows, cols, n, m, threads=1), qbe_cpu.dtw_pairs(packed.float(), rows, cols, n, m))


@needs_cpp
def test_cpp_kernel_rejects_bad_blocks():
    cost = torch.rand(4, 10)
    ones = torch.ones(2, dtype=torch.int64)
    with pytest.raises(ValueError, match="inside the"):
        qbe_cpu.dtw_pairs(cost, torch.tensor([0, 2]), torch.tensor([0, 5]), torch.tensor([2, 3]), torch.tensor([5, 5]))
    with pytest.raises(ValueError, match="non-empty"):
        qbe_cpu.dtw_pairs(cost, ones * 0, ones * 0, ones, ones * 0)
    with pytest.raises(ValueError, match=r"\(P,\)"):
        qbe_cpu.dtw_pairs(cost, ones, ones, ones, torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match="contiguous"):
        qbe_cpu.dtw_pairs(cost.T, ones, ones, ones, ones)
    with pytest.raises(ValueError, match="contiguous"):
        qbe_cpu.dtw_pairs(cost.half(), ones, ones, ones, ones)


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("SCORE_QBE_BACKEND", raising=False)
    assert qbe.resolve_backend("cpu") == BACKENDS[-1]
    assert qbe.resolve_backend("cuda") == "torch"
    monkeypatch.setenv("SCORE_QBE_BACKEND", "torch")
    assert qbe.resolve_backend("cpu") == "torch"
    if "cpp" in BACKENDS:
        assert qbe.resolve_backend("cpu", "cpp") == "cpp"  # an explicit argument wins over the variable
        with pytest.raises(qbe.QbeError, match="CPU only"):
            qbe.resolve_backend("cuda", "cpp")
    monkeypatch.setenv("SCORE_QBE_BACKEND", "fast")
    with pytest.raises(qbe.QbeError, match="'fast'.*SCORE_QBE_BACKEND"):
        qbe.qbe_scores([torch.randn(5, 4)], [torch.randn(5, 4)])


def test_feature_stats_pool_queries_and_documents_like_s3prl():
    gen = torch.Generator().manual_seed(4)
    feats = _features(gen, 5, 1, 40, 8)
    feats = [f * 3 + 2 for f in feats]
    mean, std = qbe.feature_stats(feats)
    cat = torch.cat(feats)
    assert torch.allclose(mean, cat.mean(0), atol=1e-5) and torch.allclose(std, cat.std(0), atol=1e-5)


def test_stdlist_matches_s3prl_expert_output(tmp_path):
    gen = torch.Generator().manual_seed(5)
    queries = _features(gen, 4, 5, 20, 8) + [torch.randn(4, 8, generator=gen)]
    docs = _features(gen, 6, 5, 30, 8)
    qnames = [f"quesst14_dev_{k:04d}" for k in range(1, 6)]
    dnames = [f"quesst14_{k:05d}" for k in range(1, 7)]
    s3prl_xml = quesst.run_s3prl_expert(queries, docs, qnames, dnames, tmp_path / "s3prl", max_workers=1)
    ours_xml = stdlist.write_stdlist(tmp_path / "ours" / "benchmark.stdlist.xml", qnames, dnames, qbe.qbe_scores(queries, docs), [len(q) for q in queries])
    theirs, ours = stdlist.read_stdlist(s3prl_xml).as_dict(), stdlist.read_stdlist(ours_xml).as_dict()
    assert list(ours) == [qnames[-1], *qnames[:-1]]  # short queries first, as s3prl writes them
    assert set(theirs) == set(ours)
    for q in theirs:
        assert set(theirs[q]) == set(dnames)
        for d, (score, decision) in theirs[q].items():
            assert ours[q][d][0] == pytest.approx(score, abs=1e-4 + 1e-9) and ours[q][d][1] == decision

    # Same bytes when written from s3prl's own (rounded) scores in s3prl's (completion) order.
    order_q = list(theirs)  # s3prl's order follows its workers' completion, so compare query by query
    lines = s3prl_xml.read_text().splitlines()
    for q in order_q:
        docs_q = list(theirs[q])
        scores = torch.tensor([[theirs[q][d][0] for d in docs_q]])
        ours_q = stdlist.write_stdlist(tmp_path / "one.xml", [q], docs_q, scores).read_text().splitlines()
        start = lines.index(ours_q[1])  # the <detected_termlist> line
        assert lines[start : start + len(docs_q) + 2] == ours_q[1:-1]
    assert lines[0] == ours_q[0] and lines[-1] == ours_q[-1]
    assert s3prl_xml.read_bytes().endswith(b"</stdlist>\n")


def test_stdlist_edge_cases(tmp_path):
    path = stdlist.write_stdlist(tmp_path / "x.xml", ["a&b"], ["d\"1"], torch.tensor([[2.5]]))
    assert stdlist.read_stdlist(path).as_dict() == {"a&b": {'d"1': (2.5, "YES")}}
    with pytest.raises(stdlist.StdlistError, match="shape"):
        stdlist.write_stdlist(tmp_path / "y.xml", ["a"], ["d", "e"], torch.zeros(1, 3))
    with pytest.raises(stdlist.StdlistError, match="missing.xml: cannot read"):
        stdlist.read_stdlist(tmp_path / "missing.xml").as_dict()


def test_qbe_scores_errors():
    with pytest.raises(qbe.QbeError, match="at least one"):
        qbe.qbe_scores([], [torch.randn(5, 4)])
    with pytest.raises(qbe.QbeError, match="one D"):
        qbe.qbe_scores([torch.randn(5, 4)], [torch.randn(5, 3)])
    with pytest.raises(qbe.QbeError, match="no frames"):
        qbe.qbe_scores([torch.randn(5, 4)], [torch.randn(0, 4)])


def test_cli_features_file(tmp_path, capsys):
    gen = torch.Generator().manual_seed(6)
    data = {"query_names": ["q1", "q2"], "doc_names": ["d1", "d2", "d3"]}
    data["queries"], data["docs"] = _features(gen, 2, 5, 9, 6), _features(gen, 3, 5, 15, 6)
    torch.save(data, tmp_path / "feats.pt")
    assert quesst.main(["--features", str(tmp_path / "feats.pt"), "--out", str(tmp_path / "out")]) == 0
    got = stdlist.read_stdlist(tmp_path / "out" / "benchmark.stdlist.xml").as_dict()
    ref = quesst.s3prl_qbe_scores(data["queries"], data["docs"])
    table = torch.tensor([[got[q][d][0] for d in data["doc_names"]] for q in data["query_names"]], dtype=torch.float64)
    assert (table - ref).abs().max() <= 1e-4 + 1e-9  # the XML holds 4 decimals
    assert quesst.main(["--out", str(tmp_path / "o2")]) == 2
    assert "score-qbe: error:" in capsys.readouterr().err
    assert quesst.main(["--ckpt", "x.pt", "--quesst-root", str(tmp_path), "--out", str(tmp_path / "o3")]) == 2


def test_end_to_end_on_synthetic_quesst(tiny_corpus, tiny_hubert_ckpt, tmp_path):
    """score-qbe with a tiny random HuBERT on the synthetic QUESST: our XML equals s3prl's expert's."""
    common = ["--upstream", "hubert_local", "--ckpt", str(tiny_hubert_ckpt), "--split", "dev"]
    common += ["--quesst-root", str(tiny_corpus / "quesst14Database")]
    ours_args = ["--layers", "0,12", "--out", str(tmp_path / "ours"), "--batch-docs", "3", "--batch-queries", "2"]
    assert quesst.main([*common, *ours_args]) == 0
    assert quesst.main([*common, "--layers", "12", "--out", str(tmp_path / "s3prl"), "--impl", "s3prl", "--workers", "1"]) == 0
    assert stdlist.read_stdlist(tmp_path / "ours" / "layer0" / "benchmark.stdlist.xml").as_dict()
    for layer in (12,):
        ours = stdlist.read_stdlist(tmp_path / "ours" / f"layer{layer}" / "benchmark.stdlist.xml").as_dict()
        theirs = stdlist.read_stdlist(tmp_path / "s3prl" / f"layer{layer}" / "benchmark.stdlist.xml").as_dict()
        assert len(theirs) >= 2 and set(ours) == set(theirs)
        for q, docs in theirs.items():
            assert len(docs) >= 2 and set(ours[q]) == set(docs)
            for d, (score, decision) in docs.items():
                assert abs(ours[q][d][0] - score) <= 1e-4 + 1e-9 and ours[q][d][1] == decision, (layer, q, d)
        assert len({s for docs in ours.values() for s, _ in docs.values()}) > 2  # real, varied scores
