"""score-s3prl: s3prl's runner with our upstream; ASR train -> evaluate on the tiny synthetic corpus."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from score_upstream.s3prl.cli import main
from score_upstream.s3prl.superb.lengths import main as lengths_main

pytestmark = pytest.mark.compat_env  # also run in the oldest supported environment (README)


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_bad_input_exits_2_in_one_line(tmp_path, capsys):
    assert main(["-m", "train", "-u", "score_hubert", "-k", str(tmp_path / "none.pt"), "-d", "asr"]) == 2
    one_line_error(capsys, "none.pt", "not found")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 64)
    assert main(["-m", "train", "-u", "score_hubert", "-k", str(junk), "-d", "asr"]) == 2
    one_line_error(capsys, "junk.pt", "not a HuBERT checkpoint")
    assert main(["-m", "train", "-u", "score_hubert", "-d", "asr"]) == 2
    one_line_error(capsys, "needs a checkpoint")
    assert main(["-m", "evaluate", "-e", str(tmp_path / "run" / "states-4.ckpt")]) == 2
    one_line_error(capsys, "states-4.ckpt", "not found")


def test_lengths_table(tiny_corpus, tmp_path, capsys):
    ls = tiny_corpus / "LibriSpeech"
    assert lengths_main(["--librispeech", str(ls), "--out", str(tmp_path), "--splits", "dev-clean"]) == 0
    df = pd.read_csv(tmp_path / "dev-clean.csv")
    assert list(df.columns) == ["Unnamed: 0", "file_path", "length", "label"]
    assert df["length"].is_monotonic_decreasing and df["file_path"].str.startswith("dev-clean/").all()
    assert all((ls / p).is_file() for p in df["file_path"])
    assert lengths_main(["--librispeech", str(ls), "--out", str(tmp_path), "--splits", "nope"]) == 2
    one_line_error(capsys, "nope", "split directory not found")


def test_asr_train_then_evaluate(tiny_corpus, tiny_hubert_ckpt, tmp_path):
    """The issue's done-when: a few ASR steps on CPU through score-s3prl, then -m evaluate -e."""
    ls = tiny_corpus / "LibriSpeech"
    lengths = tmp_path / "len"
    assert lengths_main(["--librispeech", str(ls), "--out", str(lengths)]) == 0
    for split, keep in (("train-clean-100", 4), ("dev-clean", 2), ("test-clean", 2)):
        csv = lengths / f"{split}.csv"  # a few utterances keep the run short
        pd.read_csv(csv, index_col=0).head(keep).to_csv(csv)
    exp = tmp_path / "asr"
    overrides = ",,".join([
        f"config.downstream_expert.datarc.libri_root='{ls}'",
        f"config.downstream_expert.datarc.bucket_file='{lengths}'",
        "config.downstream_expert.datarc.batch_size=2",
        "config.downstream_expert.datarc.num_workers=0",
        "config.downstream_expert.modelrc.project_dim=16",
        "config.downstream_expert.modelrc.RNNs.dim=[16,16]",
        "config.runner.total_steps=2", "config.runner.eval_step=2", "config.runner.save_step=2", "config.runner.log_step=1",
    ])
    cmd = [sys.executable, "-m", "score_upstream.s3prl.cli"]
    train = subprocess.run(cmd + ["-m", "train", "-u", "score_hubert", "-k", str(tiny_hubert_ckpt), "-d", "asr",
                                  "-p", str(exp), "-o", overrides], capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (exp / "states-2.ckpt").is_file()
    assert "dev-clean wer" in train.stdout + train.stderr
    evaluate = subprocess.run(cmd + ["-m", "evaluate", "-e", str(exp / "states-2.ckpt"), "-t", "test-clean"],
                              capture_output=True, text=True, timeout=300)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "test-clean wer" in evaluate.stdout + evaluate.stderr
    assert (exp / "test-clean-noLM-hyp.ark").is_file()


@pytest.mark.slow
def test_asr_resume(tiny_corpus, tiny_hubert_ckpt, tmp_path):
    """Resume (-e DIR) continues from the newest states-*.ckpt through the same registration."""
    test_asr_train_then_evaluate(tiny_corpus, tiny_hubert_ckpt, tmp_path)
    exp = tmp_path / "asr"
    cmd = [sys.executable, "-m", "score_upstream.s3prl.cli", "-m", "train", "-e", str(exp),
           "-o", "config.runner.total_steps=3,,config.runner.save_step=3,,config.runner.eval_step=100"]
    resume = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert (exp / "states-3.ckpt").is_file()


@pytest.mark.parametrize("downstream, folder", [("asr", "asr"), ("ctc", "pr"), ("quesst14_dtw", "qbe")])
def test_packaged_config_is_the_default(downstream, folder, tiny_hubert_ckpt):
    from score_upstream.s3prl.cli import prepare_argv

    argv = prepare_argv(["-m", "train", "-u", "score_hubert", "-k", str(tiny_hubert_ckpt), "-d", downstream])
    config = argv[argv.index("-c") + 1]
    assert config.endswith(f"superb/{folder}/config.yaml") and __import__("pathlib").Path(config).is_file()


def test_help_lists_upstreams_only_and_no_import_noise():
    proc = subprocess.run([sys.executable, "-m", "score_upstream.s3prl.cli", "--help"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: score-s3prl") and "ESPnet" not in proc.stdout + proc.stderr
    listed = " ".join(proc.stdout.split())
    for name in ("'score_hubert'", "'score_wavlm'", "'hubert_local'", "'wavlm_local'"):
        assert name in listed
    for helper in ("'FileLock'", "'torch'", "'os'", "'Path'", "'logger'", "'glob'"):
        assert helper not in listed
