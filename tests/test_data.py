"""LibriSpeech scan, manifest (corrupt/empty files skipped with a count), update groups, micro-batches."""

from __future__ import annotations

import shutil

import pytest
import torch

from score_upstream.training.data import (DataError, PairDataset, UpdateCollate, UpdateSampler, build_manifest,
                                 load_manifest, scan_librispeech, split_micro_batches, update_groups)


@pytest.fixture()
def corpus_copy(tiny_corpus, tmp_path):
    """A copy of the tiny corpus's train subset plus one broken .flac and one zero-length .flac."""
    root = tmp_path / "ls"
    shutil.copytree(tiny_corpus / "LibriSpeech" / "train-clean-100", root / "LibriSpeech" / "train-clean-100")
    chapter = next((root / "LibriSpeech" / "train-clean-100").glob("*/*"))
    good = sorted(chapter.glob("*.flac"))[0].read_bytes()
    (chapter / "9999-1-0001.flac").write_bytes(good[:64] + b"\x00garbage" * 50)  # header survives, body broken
    (chapter / "9999-1-0002.flac").write_bytes(b"")
    return root


def test_scan_and_manifest_skip_broken_files(corpus_copy, caplog):
    files = scan_librispeech(corpus_copy, ["train-clean-100"])
    assert len(files) == 26 and all(f.suffix == ".flac" for f in files)
    assert scan_librispeech(corpus_copy / "LibriSpeech", ["train-clean-100"]) == files  # either root works
    utts, skipped = build_manifest(files)
    assert sum(skipped.values()) >= 1 and skipped.get("unreadable", 0) >= 1
    assert len(utts) + sum(skipped.values()) == 26
    assert all(u.num_samples > 0 for u in utts)
    assert "skipped" in caplog.text


def test_body_corruption_is_skipped_at_load_time_not_a_crash(corpus_copy):
    utts, _ = build_manifest(scan_librispeech(corpus_copy, ["train-clean-100"]))
    ds = PairDataset(utts, perturb=lambda w, g: w.flip(0), seed=0)
    items = [ds[(i, 0)] for i in range(len(ds))]
    batch = UpdateCollate(batch_seconds=10.0)(items)
    broken = [it for it in items if "error" in it]
    assert batch.num_pairs + len(batch.failed) == len(utts) and len(batch.failed) == len(broken)
    for it in broken:
        assert "9999-1-0001" in it["error"]


def test_missing_or_empty_path_says_so(tmp_path):
    with pytest.raises(DataError, match="not found"):
        scan_librispeech(tmp_path / "nope", ["train-clean-100"])
    (tmp_path / "LibriSpeech" / "train-clean-100").mkdir(parents=True)
    with pytest.raises(DataError, match="no <speaker>/<chapter>/\\*.flac"):
        scan_librispeech(tmp_path, ["train-clean-100"])
    with pytest.raises(DataError, match="subset 'dev-clean' not found"):
        scan_librispeech(tmp_path, ["dev-clean"])


def test_update_groups_deterministic_disjoint_and_bucketed():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(16000, 300000, (203,), generator=g).tolist()
    a = update_groups(lengths, 8, seed=1, epoch=0)
    assert a == update_groups(lengths, 8, seed=1, epoch=0)
    assert a != update_groups(lengths, 8, seed=1, epoch=1) and a != update_groups(lengths, 8, seed=2, epoch=0)
    flat = [i for grp in a for i in grp]
    assert len(a) == 25 and all(len(grp) == 8 for grp in a) and len(set(flat)) == 200
    b = update_groups(lengths, 8, seed=1, epoch=0, bucket_window=10)
    spread = lambda gs: sum(max(lengths[i] for i in grp) - min(lengths[i] for i in grp) for grp in gs)  # noqa: E731
    assert spread(b) < 0.5 * spread(a)  # length bucketing cuts padding


def test_micro_batches_respect_budget_and_keep_long_items():
    lengths = [100, 900, 300, 300, 2000, 50]
    mbs = split_micro_batches(lengths, max_samples=1000)
    assert sorted(i for mb in mbs for i in mb) == list(range(6))
    assert mbs[0] == [4]  # longer than the budget: alone, never cropped
    for mb in mbs[1:]:
        assert len(mb) * max(lengths[i] for i in mb) <= 1000


def test_sampler_shards_and_resumes():
    lengths = list(range(1000, 1040))
    full = list(UpdateSampler(lengths, 8, seed=0))
    r0 = list(UpdateSampler(lengths, 8, seed=0, rank=0, world=2))
    r1 = list(UpdateSampler(lengths, 8, seed=0, rank=1, world=2))
    for f, a, b in zip(full, r0, r1):
        assert sorted(f) == sorted(a + b) and len(a) == len(b) == 4
    s = UpdateSampler(lengths, 8, seed=0)
    s.set_position(0, 3)
    assert list(s) == full[3:]
    with pytest.raises(DataError, match="not divisible"):
        UpdateSampler(lengths, 8, seed=0, rank=0, world=3)


def test_views_do_not_depend_on_order_or_workers(tiny_corpus):
    utts, _ = load_manifest(tiny_corpus, ["train-clean-100"])

    def perturb(w, g):
        return w * (1 + torch.rand((), generator=g))

    ds = PairDataset(utts[:6], perturb, seed=5)
    a = [ds[(i, 2)] for i in range(6)]
    b = [ds[(i, 2)] for i in reversed(range(6))][::-1]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=[[(i, 2) for i in range(6)]], num_workers=2,
                                         collate_fn=lambda items: items)
    c = next(iter(loader))
    for x, y, z in zip(a, b, c):
        assert torch.equal(x["student"], y["student"]) and torch.equal(x["student"], z["student"])
        assert torch.equal(x["target"], z["target"])
    originals = [PairDataset(utts[:6], None, seed=5)[(i, 2)]["original"] for i in range(6)]
    for it, orig in zip(a, originals):  # one side is the original, the other the perturbed view
        assert torch.equal(it["student"], orig) != torch.equal(it["target"], orig)
