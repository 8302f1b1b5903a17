"""SLURM jobs of ``run_superb.sh --launcher slurm``: sbatch scripts, the job table and ``--status``.

The shell side (``recipes/lib/slurm.sh``) decides which jobs a sweep has and what each one runs (the task
recipes themselves, with ``--stage``/``--stop-stage``/``--seeds``); this module writes one sbatch script per
job, submits it with plain ``sbatch --parsable`` chained by ``--dependency=afterok``, records it in
``EXPROOT/slurm/jobs.json``, and tells the state of every job from the recipes' stage markers and
``squeue``/``scontrol`` (many small clusters run without accounting, so ``sacct`` is never needed)::

    python -m score_upstream.launch.slurm begin --exproot exp/superb
    python -m score_upstream.launch.slurm submit --exproot exp/superb --name hubert.pr.seed0 --kind pr \\
        --after hubert.pr.prep --done exp/superb/hubert/pr/seed0/.stage3.done -- recipes/pr.sh --seeds 0 ...
    python -m score_upstream.launch.slurm status exp/superb

Submitting again (after ``scancel``, a preemption or a node failure) continues: ``begin`` keeps the jobs of
the previous submission that are still queued or running with the same script (later jobs depend on their
ids), every other job is submitted again, and its recipe skips the stages whose ``.stageN.done`` marker holds
the key of the same inputs (:mod:`score_upstream.stages`). Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from score_upstream.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

TABLE = "jobs.json"
RESOURCES = Path(__file__).resolve().parents[2] / "recipes" / "slurm" / "resources.yaml"
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "STAGE_OUT",
          "SIGNALING", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "STOPPED", "PREEMPTED"}
NEVER = "DependencyNeverSatisfied"  # squeue's reason for a job whose dependency failed


class SlurmError(RuntimeError):
    """A submission that cannot go on: bad resources file, sbatch refused, a clash with running jobs."""


@dataclass
class Resources:
    """What one job asks SLURM for (``resources.yaml``: a ``default`` block, then one block per job kind)."""

    gpus: int = 0          # --gres=gpu:N (none when 0)
    cpus: int = 1          # --cpus-per-task; the job's OMP_NUM_THREADS
    mem: str = "4G"        # --mem
    time: str = "01:00:00"  # --time
    flags: list[str] = field(default_factory=list)  # further sbatch flags for this kind of job


def load_resources(path: str | os.PathLike, kind: str) -> Resources:
    """The resources of job kind ``kind``: its block over the ``default`` block of the YAML file ``path``.

    Raises:
        SlurmError: unreadable file, unknown key, wrong type, or no block for ``kind`` nor a default.
    """
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SlurmError(f"{path}: cannot read the SLURM resources ({e}); pass a YAML file like recipes/slurm/resources.yaml")
    if not isinstance(data, dict) or (kind not in data and "default" not in data):
        raise SlurmError(f"{path}: no '{kind}' block and no 'default' block; add one (gpus, cpus, mem, time, flags)")
    merged: dict = {}
    names = {f.name: f.type for f in fields(Resources)}
    for block in ("default", kind):
        for key, value in (data.get(block) or {}).items():
            if key not in names:
                raise SlurmError(f"{path}: unknown key '{block}.{key}'; expected one of {', '.join(names)}")
            merged[key] = value
    res = Resources(**merged)
    if not (isinstance(res.gpus, int) and res.gpus >= 0 and isinstance(res.cpus, int) and res.cpus >= 1):
        raise SlurmError(f"{path}: '{kind}' needs gpus >= 0 and cpus >= 1 as integers, found gpus={res.gpus!r} cpus={res.cpus!r}")
    if not isinstance(res.flags, list) or not all(isinstance(f, str) for f in res.flags):
        raise SlurmError(f"{path}: '{kind}.flags' must be a list of sbatch flags, found {res.flags!r}")
    res.mem, res.time = str(res.mem), str(res.time)
    return res


def sbatch_script(name: str, command: list[str], res: Resources, log: str, cwd: str) -> str:
    """The sbatch script of one job: resources as ``#SBATCH`` lines, the submitting environment's Python
    first on PATH, OMP_NUM_THREADS from the CPUs granted, then ``command``."""
    lines = ["#!/usr/bin/env bash", f"#SBATCH --job-name={name}", f"#SBATCH --output={log}",
             f"#SBATCH --chdir={cwd}", f"#SBATCH --cpus-per-task={res.cpus}", f"#SBATCH --mem={res.mem}",
             f"#SBATCH --time={res.time}"]
    if res.gpus:
        lines.append(f"#SBATCH --gres=gpu:{res.gpus}")
    bindir = os.path.dirname(sys.executable)
    lines += [
        "# written by run_superb.sh --launcher slurm (score_upstream.launch.slurm); run_superb.sh --status EXPROOT",
        "set -euo pipefail",
        f"export PATH={shlex.quote(bindir)}:\"$PATH\" SCORE_PY={shlex.quote(sys.executable)}",
        *([f"export VIRTUAL_ENV={shlex.quote(os.environ['VIRTUAL_ENV'])}"] if os.environ.get("VIRTUAL_ENV") else []),
        'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
        f'echo "[slurm] job $SLURM_JOB_ID on $(hostname) at $(date \'+%Y-%m-%d %H:%M:%S\'): {name}" >&2',
        shlex.join(command),
    ]
    return "\n".join(lines) + "\n"


def site_flags(partition: str = "", account: str = "", qos: str = "", extra: str = "") -> list[str]:
    """sbatch flags every job of a submission gets: partition, account, QoS, then ``extra`` (shell words)."""
    out = [f"--{k}={v}" for k, v in (("partition", partition), ("account", account), ("qos", qos)) if v]
    return out + shlex.split(extra)


# ---------------------------------------------------------------- the job table


def table_path(exproot: str | os.PathLike) -> Path:
    return Path(exproot) / "slurm" / TABLE


def read_table(exproot: str | os.PathLike) -> dict | None:
    """``EXPROOT/slurm/jobs.json`` or None when there is none."""
    path = table_path(exproot)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise SlurmError(f"{path}: unreadable job table ({e}); remove it and submit again")


def write_table(exproot: str | os.PathLike, table: dict) -> None:
    atomic_write_bytes((json.dumps(table, indent=2) + "\n").encode(), table_path(exproot))


def query(job_ids: list[str]) -> dict[str, tuple[str, str]] | None:
    """``{job id: (state, reason)}`` from ``squeue -t all`` (jobs SLURM still remembers), then ``scontrol show
    job`` for the ids squeue did not list; None when SLURM cannot be reached."""
    ids = [j for j in job_ids if j]
    if not ids:
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-u", getpass.getuser(), "-o", "%i|%T|%r"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        logger.warning("squeue failed (%s): job states from the stage markers only", e)
        return None
    if out.returncode != 0:
        logger.warning("squeue failed: %s; job states from the stage markers only", out.stderr.strip()[:200])
        return None
    found: dict[str, tuple[str, str]] = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[0] in ids:
            found[parts[0]] = (parts[1], parts[2])
    for j in ids:
        if j in found:
            continue
        sc = subprocess.run(["scontrol", "show", "job", "-o", j], capture_output=True, text=True, timeout=60)
        fields_ = dict(w.split("=", 1) for w in sc.stdout.split() if "=" in w) if sc.returncode == 0 else {}
        if "JobState" in fields_:
            found[j] = (fields_["JobState"], fields_.get("Reason", ""))
    return found


def begin(exproot: str | os.PathLike) -> dict:
    """Start a submission: the previous table's jobs still queued or running become ``previous`` (kept when
    submitted again with the same script); pending jobs whose dependency failed are cancelled."""
    old = read_table(exproot) or {"jobs": []}
    states = query([j["job_id"] for j in old["jobs"]]) or {}
    previous: dict[str, dict] = {}
    for job in old["jobs"]:  # in submission order: a job's dependencies come before it
        state, reason = states.get(job["job_id"], ("", ""))
        if state not in ACTIVE:
            continue
        # a pending job can still start only if each job it waits on is kept or ended well
        ok = state != "PENDING" or (reason != NEVER and all(
            a in previous or states.get(_id_of(old, a), ("", ""))[0] == "COMPLETED" for a in job["after"]))
        if ok:
            previous[job["name"]] = {"job_id": job["job_id"], "spec": job["spec"]}
        else:
            subprocess.run(["scancel", job["job_id"]], check=False)
    table = {"exproot": str(Path(exproot).resolve()), "submitted": time.strftime("%Y-%m-%d %H:%M:%S"),
             "user": getpass.getuser(), "jobs": [], "previous": previous}
    write_table(exproot, table)
    return table


def _id_of(table: dict, name: str) -> str:
    return next((j["job_id"] for j in table["jobs"] if j["name"] == name), "")


def submit(exproot: str | os.PathLike, name: str, kind: str, command: list[str], after: list[str], done: list[str],
           resources: str | os.PathLike, site: list[str], dry_run: bool = False) -> tuple[str, bool]:
    """Submit one job, or keep the previous submission's job of that name when it is still queued or running
    with the same script; returns ``(SLURM job id, kept)``.

    Args:
        after: names of jobs of this submission that must end successfully first (``afterok``).
        done: files whose existence says the job's work is done (the recipes' ``.stageN.done`` markers).
        site: sbatch flags of the whole submission (:func:`site_flags`).
        dry_run: write the script and record the job as ``dry-run-N`` without calling sbatch.
    """
    table = read_table(exproot)
    if table is None:
        raise SlurmError(f"{table_path(exproot)}: no submission begun; run `begin --exproot {exproot}` first")
    if any(j["name"] == name for j in table["jobs"]):
        raise SlurmError(f"job '{name}' submitted twice in one submission; give each (model, task, seed) job its own name")
    res = load_resources(resources, kind)
    cwd = os.getcwd()
    spec = hashlib.sha256(json.dumps([command, asdict(res), site, cwd, after]).encode()).hexdigest()
    by_name = {j["name"]: j for j in table["jobs"]}
    missing = [a for a in after if a not in by_name]
    if missing:
        raise SlurmError(f"job '{name}' waits on {missing}, which this submission has not submitted; submit those first")
    root = Path(exproot).resolve() / "slurm"
    log_pattern = str(root / "logs" / f"{name}.%j.out")
    (root / "logs").mkdir(parents=True, exist_ok=True)  # SLURM does not make the folder of --output
    record = {"name": name, "kind": kind, "after": after, "done": [str(Path(d).resolve()) for d in done],
              "command": command, "spec": spec, "kept": False}
    prev = table["previous"].get(name)
    if prev and prev["spec"] == spec:
        job_id = prev["job_id"]
        record["kept"] = True
    elif prev:
        raise SlurmError(f"job '{name}' (SLURM job {prev['job_id']}) of the previous submission is still queued or "
                         f"running with other settings; wait for it or `scancel {prev['job_id']}`, then submit again")
    else:
        script = root / "scripts" / f"{name}.sbatch"
        atomic_write_bytes(sbatch_script(name, command, res, log_pattern, cwd).encode(), script)
        deps = [by_name[a]["job_id"] for a in after]
        args = ["sbatch", "--parsable", *res.flags, *site]
        if deps:
            args += [f"--dependency=afterok:{':'.join(deps)}", "--kill-on-invalid-dep=yes"]
        if dry_run:
            job_id = f"dry-run-{len(table['jobs']) + 1}"
        else:
            out = subprocess.run([*args, str(script)], capture_output=True, text=True)
            if out.returncode != 0:
                raise SlurmError(f"sbatch refused job '{name}' ({out.stderr.strip()[:300]}); script: {script}")
            job_id = out.stdout.strip().split(";")[0]
        record["script"] = str(script)
    record.update(job_id=job_id, log=log_pattern.replace("%j", job_id))
    table["jobs"].append(record)
    write_table(exproot, table)
    return job_id, record["kept"]


# ---------------------------------------------------------------- status


def job_state(job: dict, slurm: dict[str, tuple[str, str]] | None, failed: set[str]) -> tuple[str, str]:
    """``(done | queued | running | failed, detail)`` of one job of the table.

    SLURM's word counts while it still knows the job (queued, running, or ended badly); after that the stage
    markers say whether its work is done. ``failed`` holds the names of jobs already found failed (a job
    cancelled because one of those failed names it).
    """
    markers = [Path(d) for d in job["done"]]
    have = sum(p.exists() for p in markers)
    progress = f"{have}/{len(markers)} stage markers" if markers else ""
    state, reason = (slurm or {}).get(job["job_id"], ("", ""))
    log = job["log"]
    if state in ("RUNNING", "COMPLETING", "CONFIGURING"):
        return "running", ", ".join(x for x in (progress, f"log {log}") if x)
    if state in ACTIVE:
        if reason == NEVER:
            return "failed", f"never starts: a job it waits on failed ({', '.join(job['after'])})"
        return "queued", reason if reason and reason != "None" else "waiting"
    if state == "COMPLETED" or (not state and markers and have == len(markers)):
        if markers and have < len(markers):
            return "failed", f"ended without its markers ({progress}); read {log}"
        return "done", ""
    if state:
        waits = [a for a in job["after"] if a in failed]
        if state == "CANCELLED" and waits:
            return "failed", f"not run: {', '.join(waits)} failed"
        return "failed", f"{state.lower()}{f' ({reason})' if reason and reason != 'None' else ''}; read {log}{_last_line(log)}"
    if slurm is None:
        return "unknown", f"SLURM not reachable; {progress}"
    return "failed", f"gone from SLURM without its markers ({progress}); read {log}{_last_line(log)}"


def _last_line(log: str) -> str:
    try:
        lines = [x for x in Path(log).read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return f" (last line: {lines[-1][:160]})" if lines else ""


def status(exproot: str | os.PathLike) -> tuple[str, dict[str, int]]:
    """The report ``run_superb.sh --status EXPROOT`` prints, and the count of jobs in each state."""
    table = read_table(exproot)
    if table is None:
        raise SlurmError(f"{table_path(exproot)}: no SLURM submission here; submit with run_superb.sh --launcher slurm")
    slurm = query([j["job_id"] for j in table["jobs"]])
    failed: set[str] = set()
    rows, counts = [], {}
    for job in table["jobs"]:
        state, detail = job_state(job, slurm, failed)
        if state == "failed":
            failed.add(job["name"])
        counts[state] = counts.get(state, 0) + 1
        rows.append((job["job_id"], job["name"], state, detail))
    width = max([len(r[1]) for r in rows] + [4])
    out = [f"{table['exproot']}: {len(rows)} jobs submitted {table['submitted']} (states from the stage markers "
           f"and squeue/scontrol)"]
    out += [f"  {'job':>8}  {'name':<{width}}  {'state':<8} detail"]
    out += [f"  {j:>8}  {n:<{width}}  {s:<8} {d}".rstrip() for j, n, s, d in rows]
    out.append("summary: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in ("done", "running", "queued", "failed"))
               + (f", {counts['unknown']} unknown" if counts.get("unknown") else ""))
    if counts.get("failed"):
        out.append("submit the same command again to continue: finished stages are skipped")
    return "\n".join(out), counts


def main(argv: list[str] | None = None) -> int:
    """``python -m score_upstream.launch.slurm {begin,submit,status} ...`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m score_upstream.launch.slurm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("begin")
    b.add_argument("--exproot", required=True)
    s = sub.add_parser("submit")
    s.add_argument("--exproot", required=True)
    s.add_argument("--name", required=True, help="job name, unique in the submission (MODEL.TASK.seedS)")
    s.add_argument("--kind", required=True, help="block of the resources file (prep, pr, asr, qbe, collect, gather)")
    s.add_argument("--after", action="append", default=[], help="name of a job that must succeed first")
    s.add_argument("--done", action="append", default=[], help="file that exists once the job's work is done")
    s.add_argument("--resources", default=os.environ.get("SCORE_SLURM_RESOURCES") or str(RESOURCES))
    s.add_argument("--partition", default=os.environ.get("SCORE_SLURM_PARTITION", ""))
    s.add_argument("--account", default=os.environ.get("SCORE_SLURM_ACCOUNT", ""))
    s.add_argument("--qos", default=os.environ.get("SCORE_SLURM_QOS", ""))
    s.add_argument("--sbatch-flags", default=os.environ.get("SCORE_SLURM_FLAGS", ""), help="further sbatch flags")
    s.add_argument("--dry-run", action="store_true", help="write the script, call no sbatch")
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    t = sub.add_parser("status")
    t.add_argument("exproot")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "begin":
            begin(args.exproot)
        elif args.cmd == "submit":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                raise SlurmError(f"job '{args.name}': no command after --")
            site = site_flags(args.partition, args.account, args.qos, args.sbatch_flags)
            job_id, kept = submit(args.exproot, args.name, args.kind, command, args.after, args.done,
                                  args.resources, site, args.dry_run)
            print(f"{job_id} (kept: still queued or running from the previous submission)" if kept else job_id)
        else:
            text, _ = status(args.exproot)
            print(text)
    except BrokenPipeError:  # a reader that stopped early (| head, grep -q): not an error of ours
        sys.stdout = open(os.devnull, "w")
    except (SlurmError, OSError, subprocess.SubprocessError) as e:
        print(f"error: slurm: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
