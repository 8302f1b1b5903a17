"""Checkpoints written by the code before the package was regrouped (commit 1574453) still load.

The fixtures in ``tests/data/premove/`` were made with that commit's code (see the README there):
``score_hubert.pt`` by ``score-train`` (tiny model, 2 updates) and ``asr_states-2.ckpt`` by its
``score-s3prl -m train`` (ASR, 2 steps) with ``-k tests/data/premove/score_hubert.pt -p exp_premove/asr``,
both relative paths. s3prl's runner records both in the checkpoint and, on evaluate and resume, reads the
upstream from the recorded path and writes into the recorded experiment folder (not the checkpoint's), so
the test runs from a scratch folder laid out the same way.
"""

from __future__ import annotations

import pickletools
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.compat_env  # also run in the oldest supported environment (README)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "premove"


def _pickled_globals(path: Path) -> set[str]:
    """Every class or function a torch.save'd file names in its pickle (module and name)."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    found, strings = set(), []
    for op, arg, _ in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name == "STACK_GLOBAL":
            found.add(".".join(strings[-2:]))
        if isinstance(arg, str):
            strings.append(arg)
    return found


@pytest.mark.parametrize("name", ["score_hubert.pt", "asr_states-2.ckpt"])
def test_no_pickled_path_into_the_package(name):
    names = _pickled_globals(DATA / name)
    assert not [n for n in names if n.startswith("score_upstream")], names
    assert names <= {"collections.OrderedDict", "argparse.Namespace", "torch._utils._rebuild_tensor_v2",
                     "torch.FloatStorage", "torch.LongStorage", "torch.BoolStorage", "torch.IntStorage",
                     "torch._utils._rebuild_parameter", "torch.serialization._get_layout", "torch.float32",
                     "torch.int64", "torch.device"} | {n for n in names if n.startswith("torch.")}


def test_score_checkpoint_loads_and_runs():
    from score_upstream.models.formats import detect_format, read_checkpoint
    from score_upstream.s3prl.upstream.expert import UpstreamExpert

    assert detect_format(DATA / "score_hubert.pt") == "s3prl"
    raw = read_checkpoint(DATA / "score_hubert.pt")
    assert raw.model_cfg["encoder_embed_dim"] == 16
    expert = UpstreamExpert(str(DATA / "score_hubert.pt")).eval()
    with torch.no_grad():
        hidden = expert([torch.randn(16000)])["hidden_states"]
    assert len(hidden) == 13 and hidden[-1].shape[-1] == 16


def _lengths(tiny_corpus, out: Path) -> Path:
    from score_upstream.s3prl.superb.lengths import main as lengths_main

    assert lengths_main(["--librispeech", str(tiny_corpus / "LibriSpeech"), "--out", str(out)]) == 0
    for split, keep in (("train-clean-100", 4), ("dev-clean", 2), ("test-clean", 2)):
        csv = out / f"{split}.csv"
        pd.read_csv(csv, index_col=0).head(keep).to_csv(csv)
    return out


def test_runner_checkpoint_evaluates_and_resumes(tiny_corpus, tmp_path):
    exp = tmp_path / "exp_premove" / "asr"
    exp.mkdir(parents=True)
    (exp / "states-2.ckpt").write_bytes((DATA / "asr_states-2.ckpt").read_bytes())
    (tmp_path / "tests" / "data" / "premove").mkdir(parents=True)
    (tmp_path / "tests" / "data" / "premove" / "score_hubert.pt").write_bytes((DATA / "score_hubert.pt").read_bytes())
    char_dict = ROOT / "score_upstream" / "s3prl" / "superb" / "asr" / "char.dict"
    paths = ",,".join([
        f"config.downstream_expert.datarc.libri_root='{tiny_corpus / 'LibriSpeech'}'",
        f"config.downstream_expert.datarc.bucket_file='{_lengths(tiny_corpus, tmp_path / 'len')}'",
        f"config.downstream_expert.datarc.dict_path='{char_dict}'",
    ])
    cmd = [sys.executable, "-m", "score_upstream.s3prl.cli"]
    evaluate = subprocess.run(cmd + ["-m", "evaluate", "-e", str(exp / "states-2.ckpt"), "-t", "test-clean", "-o", paths],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "test-clean wer" in evaluate.stdout + evaluate.stderr
    resume = subprocess.run(cmd + ["-m", "train", "-e", str(exp), "-o", paths + ",,config.runner.total_steps=3,,"
                                   "config.runner.save_step=3,,config.runner.eval_step=100"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert (exp / "test-clean-noLM-hyp.ark").is_file() and (exp / "states-3.ckpt").is_file()
