"""Atomic writes and checkpoint pruning."""

from __future__ import annotations

import os

import pytest
import torch

from score_upstream.atomic import atomic_save, atomic_write_bytes, prune_checkpoints


def test_atomic_files_get_the_umask_mode_and_leave_no_temp(tmp_path):
    old = os.umask(0o022)
    try:
        a = atomic_write_bytes(b"table", tmp_path / "out" / "superb.md")
        b = atomic_save({"w": torch.ones(2)}, tmp_path / "out" / "state.pt")
    finally:
        os.umask(old)
    assert oct(a.stat().st_mode & 0o777) == oct(b.stat().st_mode & 0o777) == oct(0o644)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["state.pt", "superb.md"]
    assert torch.load(b, weights_only=True)["w"].sum() == 2


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = atomic_write_bytes(b"old", tmp_path / "f.bin")

    def broken_save(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"x": 1}, path)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]

def test_prune_keeps_the_newest_steps(tmp_path):
    for step in (5, 100, 20, 3):
        (tmp_path / f"state-{step:06d}.pt").write_bytes(b"")
    (tmp_path / "score_hubert.pt").write_bytes(b"")
    deleted = prune_checkpoints(tmp_path, r"state-(\d+)\.pt", keep=2)
    assert sorted(p.name for p in deleted) == ["state-000003.pt", "state-000005.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["score_hubert.pt", "state-000020.pt", "state-000100.pt"]
