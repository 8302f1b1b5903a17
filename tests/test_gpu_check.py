"""benchmarks/gpu_check.sh in its CPU dry mode: every step of the GPU check runs on tiny sizes, so the
script and the benchmark options it uses cannot rot between the times a GPU is lent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_dry_run_writes_every_section(tmp_path):
    env = dict(os.environ, SCORE_PY=sys.executable)
    proc = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    report = (tmp_path / "report.md").read_text()
    assert proc.returncode == 0, report + proc.stderr
    for title in ("GPU tests (collected only)", "soft-DTW", "SCORE training throughput", "QbE search"):
        assert f"## {title}" in report
    assert "(exit 0," in report and "Failed" not in report
    assert "3,600 upd." in report and "| 20x16 |" in report


def test_unknown_option_is_refused():
    proc = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown option --bogus" in proc.stderr


def test_a_failing_silent_step_is_recorded_and_the_later_steps_run(tmp_path):
    # an interpreter that fails without a word for one benchmark and is the real Python for the rest
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\ncase "$*" in *bench_soft_dtw.py*) exit 3 ;; esac\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    out = tmp_path / "report"
    env = dict(os.environ, SCORE_PY=str(fake))
    proc = subprocess.run([str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    report = (out / "report.md").read_text()
    assert proc.returncode != 0, report
    assert "(exit 3," in report and "(no output)" in report
    assert "Failed or stopped at the time budget: soft-DTW (exit 3);" in report
    # the steps after the failing one still ran and reported
    for title in ("SCORE training throughput", "QbE search"):
        assert f"## {title}" in report
    assert "3,600 upd." in report
