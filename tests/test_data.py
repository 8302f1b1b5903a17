"""LibriSpeech scan, manifest (corrupt/empty files skipped with a count), update groups, micro-batches."""

from __future__ import annotations

import shutil

import pytest
import torch

from score_upstream.training.data import (DataError, PairDataset, UpdateCollate, UpdateSampler, build_manifest,
                                          epoch_order, load_manifest, scan_librispeech, split_micro_batches)


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


def test_epoch_order_deterministic_and_bucketed():
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(16000, 300000, (203,), generator=g).tolist()
    a = epoch_order(lengths, 8, seed=1, epoch=0)
    assert a == epoch_order(lengths, 8, seed=1, epoch=0) and sorted(a) == list(range(203))
    assert a != epoch_order(lengths, 8, seed=1, epoch=1) and a != epoch_order(lengths, 8, seed=2, epoch=0)
    b = epoch_order(lengths, 8, seed=1, epoch=0, bucket_window=10)
    assert sorted(b) == list(range(203))
    spread = lambda o: sum(max(lengths[i] for i in o[s:s + 8]) - min(lengths[i] for i in o[s:s + 8])  # noqa: E731
                           for s in range(0, 200, 8))
    assert spread(b) < 0.5 * spread(a)  # length bucketing cuts padding


@pytest.mark.parametrize("bucket_window", [0, 10])
def test_updates_cross_epoch_boundaries_and_drop_nothing(bucket_window):
    # s3prl's runner counts backward steps across epochs: 203 utterances x 2 epochs = 50.75 updates of 8
    lengths = torch.randint(16000, 300000, (203,), generator=torch.Generator().manual_seed(0)).tolist()
    s = UpdateSampler(lengths, 8, seed=1, bucket_window=bucket_window)
    s.set_position(0, 51)
    groups = list(s)
    assert len(groups) == 51 and all(len(grp) == 8 for grp in groups)
    items = [it for grp in groups for it in grp]
    for e in (0, 1):
        assert sorted(i for i, ep in items if ep == e) == list(range(203))  # every utterance once per epoch
    assert [ep for _, ep in groups[25]] == [0, 0, 0, 1, 1, 1, 1, 1]  # the boundary update spans both epochs
    assert len({i for i, _ in groups[25]}) == 8
    assert s.epoch_of(25) == 0 and s.epoch_of(26) == 1


def test_micro_batches_respect_budget_and_keep_long_items():
    lengths = [100, 900, 300, 300, 2000, 50]
    mbs = split_micro_batches(lengths, max_samples=1000)
    assert sorted(i for mb in mbs for i in mb) == list(range(6))
    assert mbs[0] == [4]  # longer than the budget: alone, never cropped
    for mb in mbs[1:]:
        assert len(mb) * max(lengths[i] for i in mb) <= 1000


def test_sampler_shards_and_resumes():
    lengths = list(range(1000, 1040))
    samplers = [UpdateSampler(lengths, 8, seed=0), UpdateSampler(lengths, 8, seed=0, rank=0, world=2),
                UpdateSampler(lengths, 8, seed=0, rank=1, world=2)]
    for s in samplers:
        s.set_position(0, 7)
    full, r0, r1 = (list(s) for s in samplers)
    assert len(full) == 7
    for f, a, b in zip(full, r0, r1):
        assert sorted(f) == sorted(a + b) and len(a) == len(b) == 4
    s = UpdateSampler(lengths, 8, seed=0)
    s.set_position(3, 7)
    assert list(s) == full[3:] and len(s) == 4
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


def test_batches_pin_for_real(monkeypatch):
    # torch's DataLoader pins a batch through its pin_memory() method; a plain dataclass came back unpinned
    from torch.utils.data._utils.pin_memory import pin_memory

    from score_upstream.training.data import MicroBatch, Originals, UpdateBatch

    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a, **k: pinned.append(t) or t.clone())
    w, n = torch.ones(2, 5), torch.tensor([5, 3])
    batch = UpdateBatch(micro=[MicroBatch(w, n, 2 * w, n, [0, 1])], num_pairs=2, failed=[(7, "x: broken")])
    out = pin_memory(batch)
    assert isinstance(out, UpdateBatch) and out.failed == batch.failed and out.num_pairs == 2
    assert torch.equal(out.micro[0].target, 2 * w) and out.micro[0].student is not w and len(pinned) == 2
    out = pin_memory(UpdateBatch(originals=Originals(w, n, [0, 1]), num_pairs=2))
    assert out.originals.wav is not w and len(pinned) == 3 and out.micro == []
    if torch.cuda.is_available():
        monkeypatch.undo()
        assert pin_memory(batch).micro[0].student.is_pinned()


def test_shortest_usable_utterance_gives_a_frame_in_every_view():
    from score_upstream.augment.perturb import pitch_shift, speed_perturb
    from score_upstream.training.data import min_utterance_samples
    from score_upstream.training.model import frame_lengths, min_input_samples

    base = [(10, 5)] + [(3, 2)] * 4 + [(2, 2)] * 2  # HuBERT Base's CNN
    assert min_input_samples(base) == 400
    assert frame_lengths(torch.tensor([399, 400]), base).tolist() == [0, 1]
    speeds = [0.9, 1.0, 1.1]
    n = min_utterance_samples(400, speeds)
    wav = 0.1 * torch.randn(n, generator=torch.Generator().manual_seed(0))
    for f in speeds:
        view = pitch_shift(speed_perturb(wav, f), 2.0)  # the 100-sample crash of issue 11 happened here
        assert int(frame_lengths(torch.tensor([view.numel()]), base)) >= 1, f
    assert speed_perturb(wav[:-1], 1.1).numel() < 400  # one sample less loses the frame at 1.1x
