"""The SLURM launcher's pieces that need no cluster: resources files, sbatch scripts and the job table of a
submission written without sbatch (``--dry-run``), and the state each job gets from SLURM's word and the
stage markers. The cluster itself: tests/test_slurm.py (marker ``slurm``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from score_upstream.launch import slurm as S

REPO = Path(__file__).resolve().parents[1]


def test_resources_merge_kind_over_default_and_name_bad_keys(tmp_path):
    real = S.load_resources(REPO / "recipes" / "slurm" / "resources.yaml", "pr")
    assert (real.gpus, real.cpus, real.mem) == (1, 8, "32G")
    assert S.load_resources(REPO / "recipes" / "slurm" / "resources.yaml", "gather").gpus == 0
    cpu = S.load_resources(REPO / "recipes" / "slurm" / "resources-cpu.yaml", "qbe")
    assert (cpu.gpus, cpu.cpus) == (0, 1)
    bad = tmp_path / "r.yaml"
    bad.write_text("default: {cpus: 1}\npr: {gpu: 1}\n")
    with pytest.raises(S.SlurmError, match=r"r\.yaml: unknown key 'pr\.gpu'"):
        S.load_resources(bad, "pr")
    bad.write_text("default: {cpus: two}\n")
    with pytest.raises(S.SlurmError, match="cpus >= 1"):
        S.load_resources(bad, "qbe")
    bad.write_text("pr: {cpus: 1}\n")
    with pytest.raises(S.SlurmError, match="no 'qbe' block and no 'default' block"):
        S.load_resources(bad, "qbe")


def test_dry_run_submission_writes_scripts_and_table(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = tmp_path / "res.yaml"
    res.write_text("default: {cpus: 2, mem: 3G, time: '00:10:00'}\npr: {gpus: 1, flags: [--constraint=a100]}\n")
    S.write_table(tmp_path / "exp", {"jobs": [], "previous": {}, "submitted": "now", "exproot": "exp"})
    site = S.site_flags(partition="gpu", qos="high", extra="--exclusive")
    assert site == ["--partition=gpu", "--qos=high", "--exclusive"]
    prep, kept = S.submit("exp", "m.pr.prep", "prep", ["recipes/pr.sh", "--stage", "1"], [], ["exp/m/pr/.stage1.done"],
                          res, site, dry_run=True)
    seed, _ = S.submit("exp", "m.pr.seed0", "pr", ["recipes/pr.sh", "--seeds", "0 1"], ["m.pr.prep"], [], res, site,
                       dry_run=True)
    assert (prep, seed, kept) == ("dry-run-1", "dry-run-2", False)
    script = (tmp_path / "exp" / "slurm" / "scripts" / "m.pr.seed0.sbatch").read_text()
    for line in ("#SBATCH --gres=gpu:1", "#SBATCH --cpus-per-task=2", "#SBATCH --mem=3G", "#SBATCH --time=00:10:00",
                 f"#SBATCH --chdir={tmp_path}", "recipes/pr.sh --seeds '0 1'", 'OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"'):
        assert line in script, line
    table = json.loads((tmp_path / "exp" / "slurm" / "jobs.json").read_text())
    assert [j["name"] for j in table["jobs"]] == ["m.pr.prep", "m.pr.seed0"]
    assert table["jobs"][1]["log"].endswith("m.pr.seed0.dry-run-2.out")
    assert table["jobs"][0]["done"] == [str(tmp_path / "exp" / "m" / "pr" / ".stage1.done")]
    with pytest.raises(S.SlurmError, match="submitted twice"):
        S.submit("exp", "m.pr.prep", "prep", ["x"], [], [], res, site, dry_run=True)
    with pytest.raises(S.SlurmError, match=r"waits on \['nope'\]"):
        S.submit("exp", "m.qbe", "qbe", ["x"], ["nope"], [], res, site, dry_run=True)
    # the command line: one error line, exit status 2
    proc = subprocess.run([sys.executable, "-m", "score_upstream.launch.slurm", "status", str(tmp_path / "none")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no SLURM submission here" in proc.stderr


def _job(tmp_path, name="m.pr.seed0", after=(), markers=2, made=0):
    done = []
    for k in range(markers):
        p = tmp_path / f"{name}.stage{k}.done"
        if k < made:
            p.write_text("{}")
        done.append(str(p))
    return {"name": name, "job_id": "7", "after": list(after), "done": done, "log": str(tmp_path / "x.7.out")}


def test_job_states_from_slurm_then_markers(tmp_path):
    job = _job(tmp_path, made=1)
    assert S.job_state(job, {"7": ("RUNNING", "None")}, set()) == ("running", f"1/2 stage markers, log {job['log']}")
    assert S.job_state(job, {"7": ("PENDING", "Dependency")}, set()) == ("queued", "Dependency")
    assert S.job_state(job, {"7": ("PENDING", S.NEVER)}, set())[0] == "failed"
    assert S.job_state(job, {"7": ("TIMEOUT", "TimeLimit")}, set())[1].startswith("timeout (TimeLimit); read ")
    waiting = _job(tmp_path, "m.pr.collect", after=["m.pr.seed0"])
    assert S.job_state(waiting, {"7": ("CANCELLED", S.NEVER)}, {"m.pr.seed0"}) == ("failed", "not run: m.pr.seed0 failed")
    assert S.job_state(job, {}, set())[1].startswith("gone from SLURM without its markers (1/2")
    assert S.job_state(job, None, set())[0] == "unknown"
    finished = _job(tmp_path, "m.qbe", made=2)
    assert S.job_state(finished, {}, set()) == ("done", "")  # forgotten by SLURM: the markers say done
    assert S.job_state(finished, {"7": ("FAILED", "NonZeroExitCode")}, set())[0] == "failed"  # SLURM's word first
