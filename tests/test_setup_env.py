"""recipes/lib/setup_env.sh: a failed install stops its caller and is never taken for a finished one."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_failed_install_stops_run_superb_and_leaves_no_stamp(tmp_path):
    lock = tmp_path / "broken.lock"
    lock.write_text("score-upstream-no-such-package==0.0.1\n")
    venv = tmp_path / "venv"
    env = dict(os.environ, SCORE_VENV=str(venv), SCORE_LOCK=str(lock))
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run([str(REPO / "run_superb.sh"), "--demo"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0, proc.stderr
    assert f"installing {lock} into {venv} failed" in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: run_superb: could not build the environment"), proc.stderr
    assert not (venv / ".score-setup-stamp").exists()
    # nothing of the demo ran
    assert "Stage 1" not in proc.stderr
