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
