"""SUPERB through a real one-node SLURM cluster (recipes/slurm/local_cluster.sh, started here when it is not
up; skipped with the reason when it cannot start): a sweep of 2 tiny models x PR and QbE x 2 seeds x 2 PR
learning rates (chosen on dev) through ``run_superb.sh --launcher slurm`` (``--status`` while it runs,
``scancel`` of a running job, the same command again finishing it without redoing finished stages, the same
tables as ``--launcher local``), and a
2-process torchrun training through ``srun`` (recipes/slurm/train.sh) that matches one process.

Marked ``slurm`` (off by default): ``python -m pytest tests/test_slurm.py -m slurm``; ``.ci/run`` runs them.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "recipes" / "slurm" / "local_cluster.sh"
BIN = Path(sys.executable).parent
NO_DROPOUT = ("model.tiny_overrides={dropout: 0.0, attention_dropout: 0.0, activation_dropout: 0.0, "
              "dropout_input: 0.0, dropout_features: 0.0}")
TRAIN = ["optim.total_steps=2", "optim.warmup_steps=1", NO_DROPOUT, "data.utterances_per_update=4",
         "perturb.pitch_method=fast", "progress=false"]


def _env(cluster_dir: Path | None = None) -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(BIN.parent)
    env["OMP_NUM_THREADS"] = "1"  # the local run as the SLURM jobs (one CPU each): the same numbers
    env["SCORE_SLURM_RESOURCES"] = str(REPO / "recipes" / "slurm" / "resources-cpu.yaml")
    if cluster_dir is not None:
        env["SLURM_CONF"] = str(cluster_dir / "slurm.conf")
    return env


@pytest.fixture(scope="module")
def cluster() -> dict:
    """The environment of a running local cluster: the one already up, else one started (and stopped) here."""
    cluster_dir = Path(os.environ.get("SCORE_SLURM_DIR", "/tmp/score-slurm"))
    env = _env(cluster_dir)
    up = subprocess.run([CLUSTER, "status"], env=env, capture_output=True, text=True).returncode == 0
    if not up:
        start = subprocess.run([CLUSTER, "start"], env=env, capture_output=True, text=True, timeout=900)
        if start.returncode == 3:
            pytest.skip(start.stderr.strip().splitlines()[-1])
        assert start.returncode == 0, start.stderr[-2000:]
    yield env
    if not up:
        subprocess.run([CLUSTER, "stop"], env=env, capture_output=True, timeout=120)


def _status(exproot: Path, env: dict) -> dict[str, tuple[str, str, str]]:
    """``{job name: (job id, state, detail)}`` from ``run_superb.sh --status``."""
    proc = subprocess.run([REPO / "run_superb.sh", "--status", exproot], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {}
    for line in proc.stdout.splitlines()[2:]:
        parts = line.split(None, 3)
        if len(parts) >= 3 and parts[0].isdigit():
            rows[parts[1]] = (parts[0], parts[2], parts[3] if len(parts) > 3 else "")
    return rows


def _wait(exproot: Path, env: dict, until, timeout: float, what: str) -> dict:
    end = time.monotonic() + timeout
    while True:
        rows = _status(exproot, env)
        if until(rows):
            return rows
        assert time.monotonic() < end, f"{what} not reached in {timeout} s: {rows}"
        time.sleep(0.5)


def _table(out: Path) -> list[dict]:
    with open(out / "superb.csv", newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def test_sweep_status_scancel_resubmit_same_tables_as_local(cluster, tiny_corpus, tiny_hubert_ckpt, tmp_path):
    from score_upstream.models.hubert import new_hubert, save_s3prl, tiny_model_cfg

    other = tmp_path / "tiny_hubert_seed1.pt"
    save_s3prl(new_hubert(tiny_model_cfg(), seed=1), other)
    sweep = ["--model", f"a:hubert_local:{tiny_hubert_ckpt}", "--model", f"b:hubert_local:{other}",
             "--tasks", "pr qbe", "--seeds", "0 1", "--lrs", "1e-2 5e-3", "--pr-max-steps", "2", "--device", "cpu",
             "--librispeech", tiny_corpus / "LibriSpeech", "--quesst-root", tiny_corpus / "quesst14Database",
             "--lexicon", tiny_corpus / "librispeech-lexicon.txt"]
    exproot, out = tmp_path / "exp_slurm", tmp_path / "results_slurm"
    submit = [REPO / "run_superb.sh", *sweep, "--launcher", "slurm", "--exproot", exproot, "--out", out]

    t0 = time.monotonic()
    first = subprocess.run(submit, cwd=tmp_path, env=cluster, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"--status {exproot}" in first.stderr and not (out / "superb.csv").exists()  # it returned at once
    runs = [f"lr{lr}.seed{s}" for lr in ("1e-2", "5e-3") for s in (0, 1)]  # one job per learning rate and seed
    names = {f"{m}.pr.{k}" for m in "ab" for k in ("prep", *runs, "collect")} | {"a.qbe", "b.qbe", "gather"}
    assert set(_status(exproot, cluster)) == names

    # while it runs: queued and running jobs side by side; then a running PR seed job is cancelled
    rows = _wait(exproot, cluster, lambda r: any(s == "running" and ".seed" in n for n, (_, s, _) in r.items())
                 and any(s == "queued" for _, s, _ in r.values()), 180, "a running seed job beside queued jobs")
    running = sorted((d.startswith("0/") is False, n) for n, (_, s, d) in rows.items() if s == "running" and ".seed" in n)
    victim = running[0][1]  # preferably one that has finished no stage yet
    subprocess.run(["scancel", rows[victim][0]], env=cluster, check=True)
    collect = ".".join(victim.split(".")[:2]) + ".collect"
    rows = _wait(exproot, cluster, lambda r: r[victim][1] == "failed" and r["gather"][1] == "failed", 120,
                 f"{victim} and its dependents failed")
    assert "cancelled" in rows[victim][2] and f"{victim}" in rows[collect][2], rows
    done_before = {p: p.stat().st_mtime_ns for p in exproot.rglob(".stage*.done")}

    # the same command again: jobs still queued or running are kept, the rest submitted again
    again = subprocess.run(submit, cwd=tmp_path, env=cluster, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    rows = _wait(exproot, cluster, lambda r: all(s in ("done", "failed") for _, s, _ in r.values()), 600,
                 "every job ended")
    slurm_s = time.monotonic() - t0
    assert all(s == "done" for _, s, _ in rows.values()), rows
    for marker, mtime in done_before.items():  # finished stages were skipped, not redone
        assert marker.stat().st_mtime_ns == mtime, marker
    table = json.loads((exproot / "slurm" / "jobs.json").read_text())
    kept = [j["name"] for j in table["jobs"] if j["kept"]]
    assert victim not in kept and "gather" not in kept
    for job in table["jobs"]:
        text = Path(job["log"]).read_text()
        if job["kept"]:
            continue
        if job["done"] and all(Path(d) in done_before for d in job["done"]):
            assert "(done, skipping" in text and not re.search(r"Stage \d: (?!.*done, skipping)", text), job["name"]
        elif job["name"] == victim:
            assert "Stage 2: train" in text  # the cancelled seed ran again
    # the same sweep run here, one process after the other: the same table
    t1 = time.monotonic()
    local = subprocess.run([REPO / "run_superb.sh", *sweep, "--exproot", tmp_path / "exp_local", "--out",
                            tmp_path / "results_local"], cwd=tmp_path, env=cluster, capture_output=True, text=True,
                           timeout=900)
    local_s = time.monotonic() - t1
    assert local.returncode == 0, local.stderr[-3000:]
    ours, theirs = _table(out), _table(tmp_path / "results_local")
    assert [r["model"] for r in ours] == [r["model"] for r in theirs] == ["a", "b"]
    for a, b in zip(ours, theirs):
        for key in ("mtwv", "mtwv_low", "mtwv_high", "qbe_layer", "mtwv_last", "qbe_last_layer"):
            assert a[key] == b[key], (key, a[key], b[key])  # QbE: deterministic, exactly equal
        assert a["per_lr"] in ("1e-2", "5e-3") and a["per_lr_dev"].startswith("1e-2: ")  # chosen on dev
        for key in ("per", "per_sd", "per_n", "per_lr", "per_lr_dev"):
            # one thread per run on both sides: PR's updates are bit for bit the same
            assert a[key] == b[key], (key, a[key], b[key])
    print(f"\nsweep wall time: slurm {slurm_s:.0f} s (with the scancel and resubmission), local {local_s:.0f} s")


def test_torchrun_two_processes_through_srun_match_one_process(cluster, tiny_corpus, tmp_path):
    recipe = REPO / "recipes" / "score" / "tiny.yaml"
    env = {**cluster, "SCORE_NPROC_PER_NODE": "1"}
    # two srun tasks on the one node, one torchrun agent each, meeting through the c10d rendezvous
    proc = subprocess.run(["sbatch", "--wait", "--ntasks-per-node", "2", "--cpus-per-task", "1", "-o",
                           tmp_path / "train.%j.out", REPO / "recipes" / "slurm" / "train.sh", recipe,
                           "--data", tiny_corpus, "--out", tmp_path / "two", *TRAIN],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    log = next(tmp_path.glob("train.*.out"), None)
    assert proc.returncode == 0, (proc.stderr, log.read_text()[-3000:] if log else "no log")
    text = log.read_text()
    assert re.search(r"2 agent\(s\) x 1 process\(es\), rendezvous \S+:\d+", text), text[-2000:]
    assert "2 process(es)" in text, text[-2000:]

    import score_upstream.training.train as T
    from score_upstream.models.hubert import load_hubert

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        T.train(recipe, tiny_corpus, tmp_path / "one", TRAIN)
    finally:
        torch.set_num_threads(threads)
    two = load_hubert(tmp_path / "two" / "score_hubert.pt").model.state_dict()
    one = load_hubert(tmp_path / "one" / "score_hubert.pt").model.state_dict()
    trained = [k for k in one if k.startswith(("encoder.layers.10.", "encoder.layers.11.", "encoder.layer_norm."))]
    assert trained
    for k in trained:  # 2 processes x 2 utterances give the update of 1 process x 4 (no dropout)
        assert torch.allclose(one[k], two[k], atol=1e-5, rtol=1e-4), k
