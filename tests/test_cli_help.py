"""Every console script's and recipe's --help, and a table of wrong invocations.

--help: exit 0, no reStructuredText markup, defaults shown one way (in brackets), an example, and every
repository path it names exists. A wrong invocation: a non-zero status and one line saying what to do.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
RECIPES = [REPO / "run_superb.sh", REPO / "recipes" / "asr.sh", REPO / "recipes" / "pr.sh", REPO / "recipes" / "qbe.sh",
           REPO / "recipes" / "pretrain" / "run.sh", REPO / "recipes" / "pretrain" / "profile.sh"]
MARKUP = re.compile(r"``|:(func|class|mod|meth|data):`")
# inputs in the repository a help text names (outputs such as results/demo excepted); each must exist (placeholders such as <name> or METHOD excepted)
REPO_PATH = re.compile(r"(?<![\w/.])((?:recipes|score_upstream|docs)/[\w./-]+)")


def _env() -> dict:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(BIN.parent))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _script(name: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run console script NAME through its entry point (also one not installed in .venv/bin yet)."""
    module, func = SCRIPTS[name].split(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {func}; sys.exit({func}(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=300)


def _paths_exist(text: str) -> None:
    for path in REPO_PATH.findall(text):
        path = path.rstrip(".,)")
        if any(mark in path for mark in ("<", "METHOD", "NAME", "*", "{")) or not path.split("/")[-1]:
            continue
        assert (REPO / path).exists(), f"--help names {path}, which is not in the repository"


def test_every_console_script_is_listed():
    assert "score-paired" in SCRIPTS and SCRIPTS["score-paired"] == "score_upstream.report.paired:main"


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_help(name):
    proc = _script(name, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert text.startswith("usage: " + name), text[:200]
    assert not MARKUP.search(text), MARKUP.search(text).group(0)
    assert "Examples:" in text or f"{name} -m" in text, "no example in --help"
    assert ".py" not in text.splitlines()[0]
    _paths_exist(text)
    if name in ("score-synth", "score-results", "score-qbe", "score-invariance", "score-twv"):
        assert re.search(r" \[[^\]]+\]\n", text), "no default shown"  # these have options with defaults
    if name != "score-s3prl":  # s3prl's own option list shows no defaults; ours all end in brackets
        assert not re.search(r"\(default[: ]", text), "a default shown another way than [X]"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_recipe_help(recipe):
    proc = subprocess.run([recipe, "--help"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert not MARKUP.search(text)
    assert re.search(r"^ {2}(\./|recipes/|[A-Z]+=)", text, re.M) or "run_superb.sh" in text, "no example"
    _paths_exist(text)
    options = text.split("Options (default in brackets):", 1)
    if len(options) == 2:
        block = options[1].split("\n\n")[0]
        entries = re.split(r"\n(?=  -)", block.strip("\n"))
        for entry in entries:
            assert re.search(r"\[[^\]]*\]", entry), f"no default shown for: {entry.strip()[:80]}"


def test_asr_and_pr_help_name_the_packaged_configs():
    for task in ("asr", "pr"):
        text = subprocess.run([REPO / "recipes" / f"{task}.sh", "--help"], capture_output=True, text=True).stdout
        assert f"[score_upstream/s3prl/superb/{task}/config.yaml]" in text
        assert (REPO / "score_upstream" / "s3prl" / "superb" / task / "config.yaml").is_file()


def _one_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_wrong_invocations_end_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    _one_line(_script("score-train", "recipes/score/small.yaml", "--data", str(tmp_path), "--out", str(tmp_path / "u"),
                      "model.init=/nonexistent.pt"), "model.init", "/nonexistent.pt")
    _one_line(_script("score-results", str(tmp_path / "empty"), "--otu", str(tmp_path / "o")),
              "unknown option --otu", "did you mean --out?")
    _one_line(_script("score-results", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--no-reported"),
              "no model.json")
    _one_line(_script("score-qbe", "--quesst-rot", "x", "--out", str(tmp_path / "q")), "did you mean --quesst-root?")
    _one_line(_script("score-twv", str(tmp_path / "empty"), str(tmp_path / "empty")), "stdlist.xml", "system output")
    run = lambda *a: subprocess.run([str(x) for x in a], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)  # noqa: E731
    _one_line(run(REPO / "run_superb.sh", "--demo", "--out", tmp_path / "o"), "--out is not used by --demo")
    _one_line(run(REPO / "run_superb.sh", "--demo", "--device", "cuda"), "--device is not used by --demo")
    _one_line(run(REPO / "recipes" / "qbe.sh", "--quesst-rot", tmp_path), "did you mean --quesst-root?")
    _one_line(run(REPO / "recipes" / "pr.sh", "--max-step", "3"), "did you mean --max-steps?")
    _one_line(run(REPO / "run_superb.sh", "--asr-step", "3"), "did you mean --asr-max-steps?")


def test_old_option_names_work_with_a_notice(tmp_path):
    proc = subprocess.run([REPO / "recipes" / "qbe.sh", "--quesst", tmp_path / "none", "--layer", "last",
                           "--stop-stage", "1", "--expdir", tmp_path / "e"], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=120)
    assert "warning: qbe: --quesst is deprecated; use --quesst-root" in proc.stderr
    assert "warning: qbe: --layer is deprecated; use --qbe-layer" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: qbe: missing QUESST 2014 database")
