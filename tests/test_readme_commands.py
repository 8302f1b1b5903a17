"""Every command the READMEs document exists as written, and each one is run by some test on tiny stand-ins.

``COVERAGE`` maps each documented command (README.md and recipes/README.md, ```bash blocks) to the tests that
run it with its paths replaced by tiny stand-ins; a command without an entry, or an entry naming a test that
does not exist, fails here. The cheap guards check, for each command, that its entry point exists, that every
option it shows appears in the entry point's ``--help`` (and, for our shell scripts, in the options they
parse), that the repository paths it names exist, and that its ``key=value`` overrides are keys of the recipe
it names. The commands no test covers yet run here, on the tiny corpus and tiny models (the longer ones
``slow``: the LASER, SPIN and WavLM Base recipes, torchrun, the SUPERB block of recipes/README.md).
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from test_recipes import REPO, RECIPES, _env, _run

READMES = ("README.md", "recipes/README.md")
BIN = Path(sys.executable).parent

# signature (a substring of the normalised command) -> tests that run it on tiny stand-ins
COVERAGE = {
    "./run_superb.sh --demo": ["tests/test_recipes.py::test_run_superb_demo_fills_every_cell"],
    "./run_tests.sh -m": [".ci/run (CI runs it in the oldest set)", "tests/test_setup_env.py"],
    "./run_tests.sh": [".ci/run (CI runs it)", "tests/test_setup_env.py"],
    "pip install -e .": ["tests/test_readme_commands.py::test_documented_options_exist (options only: no index offline)"],
    "source recipes/lib/setup_env.sh": ["tests/test_setup_env.py"],
    "score_setup_env": ["tests/test_setup_env.py"],
    "score-train recipes/score/hubert_base.yaml --data /data/LibriSpeech --out exp/score_hubert_base model.init=":
        ["tests/test_readme_commands.py::test_score_train_base_recipe_on_a_tiny_model"],
    "score-train recipes/score/hubert_base.yaml --data /data/LibriSpeech --out exp/score_hubert_base resume=true":
        ["tests/test_readme_commands.py::test_score_train_base_recipe_on_a_tiny_model", "tests/test_train.py::test_resume_gives_same_weights_as_uninterrupted"],
    "torchrun --nproc_per_node 4 -m score_upstream.training.train":
        ["tests/test_readme_commands.py::test_torchrun_two_processes", "tests/test_train.py::test_two_process_gloo_matches_one_process"],
    "score-convert /models/hubert_base_ls960.pt exp/hubert_base.pt --to s3prl":
        ["tests/test_formats.py::test_fairseq_layout_loads_without_fairseq", "tests/test_formats.py::test_convert_cli"],
    "--model hubert:hubert_local:exp/hubert_base.pt --model score:score_hubert:exp/score_hubert_base/score_hubert.pt --model spin:spin:":
        ["tests/test_matrix.py::test_cell", "tests/test_readme_commands.py::test_run_superb_as_documented"],
    "--model hubert:hubert_local:exp/hubert_base.pt --model score:score_hubert:exp/score_hubert_base/score_hubert.pt --model spin:hubert_local:":
        ["tests/test_readme_commands.py::test_run_superb_as_documented", "tests/test_matrix.py::test_cell"],
    "score-train recipes/laser/hubert_base.yaml": ["tests/test_readme_commands.py::test_score_train_base_recipe_on_a_tiny_model"],
    "score-train recipes/spin/hubert_base.yaml": ["tests/test_readme_commands.py::test_score_train_base_recipe_on_a_tiny_model"],
    "score-s3prl -m train -u score_hubert": ["tests/test_s3prl_cli.py::test_asr_train_then_evaluate"],
    "S3PRLUpstream(\"score_hubert\"": ["tests/test_upstream.py::test_s3prl_upstream_by_name", "tests/test_train.py::test_tiny_run_lowers_loss_and_writes_loadable_model"],
    "score-train recipes/score/wavlm_base_plus.yaml": ["tests/test_readme_commands.py::test_score_train_base_recipe_on_a_tiny_model"],
    "score-s3prl -m train -u score_wavlm": ["tests/test_wavlm.py::test_trained_checkpoint_through_score_s3prl"],
    "./run_superb.sh ... --model wavlm:auto:": ["tests/test_matrix.py::test_cell", "tests/test_wavlm.py::test_run_superb_auto_upstream_from_the_checkpoint"],
    "score-convert /models/WavLM-Base+.pt exp/wavlm_hf --to hf": ["tests/test_wavlm.py::test_formats_detected_and_round_trips_lossless"],
    "recipes/pretrain/run.sh": ["tests/test_readme_commands.py::test_documented_options_exist (63 min: options and paths only)",
                                "tests/test_pretrained.py"],
    "score-pretrain recipes/pretrain/small_v2_iter1.yaml": ["tests/test_pretrain.py::test_resume_gives_the_same_weights",
                                                            "tests/test_readme_commands.py::test_documented_overrides_are_recipe_keys"],
    "recipes/pretrain/profile.sh": ["tests/test_layer_profile.py::test_profile_recipe_measures_every_layer_on_dev"],
    "score-convert /models/spin_hubert_2048.ckpt exp/spin.pt --to s3prl --base": ["tests/test_spin.py::test_score_convert_cli_with_base"],
    "recipes/pr.sh --upstream score_hubert": ["tests/test_readme_commands.py::test_run_superb_as_documented"],
    "./run_superb.sh --launcher slurm": ["tests/test_slurm.py::test_sweep_status_scancel_resubmit_same_tables_as_local",
                                         "tests/test_slurm_launch.py::test_dry_run_submission_writes_scripts_and_table"],
    "./run_superb.sh --status": ["tests/test_slurm.py::test_sweep_status_scancel_resubmit_same_tables_as_local"],
    "recipes/slurm/local_cluster.sh": ["tests/test_slurm.py::test_sweep_status_scancel_resubmit_same_tables_as_local"],
    "score-synth --out data/tiny --size tiny": ["tests/conftest.py (tiny_corpus: the same generator, size tiny)"],
    "recipes/slurm/train.sh": ["tests/test_slurm.py::test_torchrun_two_processes_through_srun_match_one_process"],
}
LAUNCHERS = ("sbatch", "srun")  # Slurm's own commands: their options are Slurm's; the script they start is checked
SLURM_OPTIONS = {"--dependency", "--requeue"}  # Slurm's, named in the prose


# ----------------------------------------------------------------------------------------- extraction


def documented_commands() -> list[tuple[str, str]]:
    """``(readme, command)`` for every command of every ```bash block and every ```python block (as one)."""
    out = []
    for name in READMES:
        text = (REPO / name).read_text()
        for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
            if lang == "python":
                out.append((name, " ".join(line.strip() for line in body.splitlines() if line.strip())))
                continue
            if lang not in ("bash", "sh", "shell"):
                continue
            joined = re.sub(r"\\\n\s*", " ", body)
            for line in joined.splitlines():
                line = re.sub(r"(^|\s)#.*$", "", line).strip()
                for part in line.split("&&"):
                    part = " ".join(part.split())
                    if part:
                        out.append((name, part))
    return out


_ENTRY = r"^(\./\S+\.sh|recipes/\S+\.sh|score-[a-z0-9]+|python -m \S+|torchrun|pip) "


def inline_commands() -> list[tuple[str, str]]:
    """``(readme, command)`` for each inline code span of the prose that starts with an entry point."""
    out = []
    for name in READMES:
        prose = re.sub(r"```.*?```", "", (REPO / name).read_text(), flags=re.S)
        for span in re.findall(r"`([^`]+)`", prose):
            span = " ".join(span.split())
            if re.match(_ENTRY, span):
                out.append((name, span))
    return out


def inline_options() -> list[tuple[str, str]]:
    """``(readme, option)`` for each inline code span of the prose that is an option, e.g. `--qbe-layer last`."""
    out = []
    for name in READMES:
        prose = re.sub(r"```.*?```", "", (REPO / name).read_text(), flags=re.S)
        out += [(name, m) for m in re.findall(r"`(--[a-z][a-z0-9-]*)[ =`]", prose)]
    return out


def _normalised(command: str) -> str:
    return " ".join(command.split())


@functools.cache
def _help(entry: tuple[str, ...]) -> str:
    """``ENTRY --help``: a console script or ``python -m`` module of ours in this process (its ``main(argv)``),
    anything else in a subprocess."""
    import contextlib
    import importlib
    import io
    from importlib.metadata import entry_points

    target = None
    if len(entry) == 1 and Path(entry[0]).name.startswith("score-"):
        eps = [ep for ep in entry_points(group="console_scripts") if ep.name == Path(entry[0]).name]
        target = eps[0].value if eps else None
    elif entry[:2] == (sys.executable, "-m") and entry[2].startswith("score_upstream"):
        target = f"{entry[2]}:main"
    if target is not None:
        module, _, func = target.partition(":")
        main = getattr(importlib.import_module(module), func or "main", None)
        if main is not None:
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), pytest.raises(SystemExit) as done:
                main(["--help"])
            assert done.value.code in (0, None), f"{' '.join(entry)} --help: {out.getvalue()[-1000:]}"
            return out.getvalue()
    proc = subprocess.run([*entry, "--help"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{' '.join(entry)} --help: {proc.stderr[-1000:]}"
    return proc.stdout + proc.stderr


@functools.cache
def _accepts(script: Path, option: str) -> bool:
    """Whether the script's own option parser takes ``option``: ``SCRIPT --opt=x --help`` (or ``-o x --help``) stops
    at --help with status 0 only when the parser took the option before it."""
    args = [option, "x"] if not option.startswith("--") else [f"{option}=x"]
    proc = subprocess.run([script, *args, "--help"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
    return proc.returncode == 0


def split_entry(tokens: list[str]) -> tuple[list[str], list[str], list[str]]:
    """``(entry point argv, options shown, the rest)`` of a tokenised command, without leading VAR=value."""
    while tokens and re.match(r"^[A-Z_]+=", tokens[0]):
        tokens = tokens[1:]
    if tokens[0] in LAUNCHERS:  # `sbatch [its options] SCRIPT ARGS...`: SCRIPT is the entry point
        i = next(k for k, t in enumerate(tokens) if t.endswith(".sh"))
        tokens = tokens[i:]
    if tokens[0] == "torchrun":
        i = tokens.index("-m")
        return ["torchrun", *tokens[i:i + 2]], tokens[1:i] + tokens[i + 2:], tokens
    if tokens[0] == "pip":
        return ["pip", tokens[1]], tokens[2:], tokens
    if tokens[0] == "python" and tokens[1] == "-m":
        return tokens[:3], tokens[3:], tokens
    return tokens[:1], tokens[1:], tokens


def _options(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if re.match(r"^--?[A-Za-z]", a)]


# ----------------------------------------------------------------------------------------- guards


def test_every_documented_command_is_covered():
    """Each README command has tests in COVERAGE, and each test named there exists."""
    commands = documented_commands()
    assert len(commands) >= 25, commands  # both READMEs' blocks were found
    uncovered = [c for _, c in commands if not any(sig in _normalised(c) for sig in COVERAGE)]
    assert not uncovered, f"README commands without a test in COVERAGE: {uncovered}"
    for tests in COVERAGE.values():
        for ref in tests:
            path, _, func = ref.split(" ", 1)[0].partition("::")
            if not path.startswith("tests/"):
                continue
            assert (REPO / path).is_file(), ref
            if func:
                assert re.search(rf"^def {re.escape(func)}\(", (REPO / path).read_text(), re.M), ref


def test_documented_options_exist():
    """Every entry point a README shows runs --help, and every option it shows is in that help (and parsed)."""
    problems = []
    for readme, command in documented_commands() + inline_commands():
        if command.startswith("import ") or "S3PRLUpstream" in command:
            continue
        tokens = shlex.split(command.replace("|", " "))  # `--to s3prl|hf`: alternatives
        entry, args, _ = split_entry(tokens)
        head = entry[0]
        if head == "source":
            if not (REPO / args[0]).is_file():
                problems.append(f"{readme}: `{command}`: {args[0]} does not exist")
            continue
        if head == "score_setup_env":
            if "score_setup_env()" not in (RECIPES / "lib" / "setup_env.sh").read_text():
                problems.append(f"{readme}: `{command}`: no score_setup_env in recipes/lib/setup_env.sh")
            continue
        if head == "./run_tests.sh":  # it builds the environment first; its arguments go to pytest
            help_text, parsed = _help((sys.executable, "-m", "pytest")), None
        elif head.endswith(".sh"):
            script = REPO / head.removeprefix("./")
            if not script.is_file():
                problems.append(f"{readme}: `{command}`: {head} does not exist")
                continue
            # our option parser (recipes/lib/common.sh) is asked directly; a wrapper that forwards its arguments
            # (recipes/slurm/train.sh -> score-train) is checked against its help only
            help_text, parsed = _help((str(script),)), script if "parse_options" in script.read_text() else None
        elif head == "torchrun":
            help_text = _help((str(BIN / "torchrun"),)) + _help((sys.executable, "-m", entry[2]))
            parsed = None
        elif head == "python":
            help_text, parsed = _help((sys.executable, "-m", entry[2])), None
        elif head == "pip":
            help_text, parsed = _help((sys.executable, "-m", "pip", entry[1])), None
        elif head.startswith("score-"):
            exe = BIN / head
            if not exe.is_file():
                problems.append(f"{readme}: `{command}`: entry point {head} is not installed")
                continue
            help_text, parsed = _help((str(exe),)), None
        else:
            problems.append(f"{readme}: `{command}`: unknown kind of entry point {head}")
            continue
        for opt in _options(args):
            if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", help_text):
                problems.append(f"{readme}: `{command}`: {opt} is not in `{' '.join(entry)} --help`")
            elif parsed is not None and opt not in ("-h", "--help") and not _accepts(parsed, opt):
                problems.append(f"{readme}: `{command}`: {opt} is in the help of {head} but its parser rejects it")
        for token in args:  # repository paths the command names
            if re.match(r"^(recipes|score_upstream)/", token) and not (REPO / token).exists():
                problems.append(f"{readme}: `{command}`: {token} does not exist")
    assert not problems, "\n".join(problems)


# documented commands that fail as written: signature -> why (the test of each is xfail(strict=True))
KNOWN_BROKEN: dict[str, str] = {}


def test_options_named_in_the_prose_exist():
    """An option the prose names alone (`--qbe-layer last`, `--seeds "0 1 2"`) is parsed by one of our entry points."""
    known = set()
    for exe in sorted(BIN.glob("score-*")):
        known |= set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]*)", _help((str(exe),))))
    scripts = [REPO / "run_superb.sh", RECIPES / "asr.sh", RECIPES / "pr.sh", RECIPES / "qbe.sh"]
    missing = [f"{readme}: `{opt}`" for readme, opt in inline_options()
               if opt not in known | SLURM_OPTIONS and not any(_accepts(script, opt) for script in scripts)]
    assert len(inline_options()) >= 5
    assert not missing, f"options the READMEs name that no entry point parses: {missing}"


def _training_commands():
    for readme, command in documented_commands():
        entry, args, _ = split_entry(shlex.split(command))
        if entry[-1] in ("score-train", "score-pretrain", "score_upstream.training.train"):
            marks = [pytest.mark.xfail(strict=True, reason=why) for sig, why in KNOWN_BROKEN.items() if sig in command]
            yield pytest.param(entry[-1], args, id=f"{readme}:{' '.join(args[:1] + args[-1:])}", marks=marks)


@pytest.mark.parametrize("entry,args", list(_training_commands()))
def test_documented_overrides_are_recipe_keys(entry, args):
    """The recipe and ``key=value`` overrides of a documented score-train / score-pretrain command load as written
    (unknown keys, wrong types and missing required keys fail here as they would at the start of the command)."""
    from score_upstream.pretrain.config import load_pretrain_config
    from score_upstream.training.config import load_config

    recipe = next(a for a in args if a.endswith(".yaml"))
    overrides = [a for a in args if re.match(r"^[a-z_.]+=", a)]
    (load_pretrain_config if entry == "score-pretrain" else load_config)(REPO / recipe, overrides)


# ----------------------------------------------------------------------------------------- commands run here


@pytest.mark.parametrize("recipe", ["score/hubert_base.yaml", *(pytest.param(r, marks=pytest.mark.slow) for r in (
    "laser/hubert_base.yaml", "spin/hubert_base.yaml", "score/wavlm_base_plus.yaml"))])
def test_score_train_base_recipe_on_a_tiny_model(recipe, tiny_corpus, tiny_hubert_ckpt, tmp_path):
    """`score-train recipes/M/hubert_base.yaml --data D --out O model.init=CKPT` (and resume=true): the Base
    recipes as documented, on a tiny model of the family and the tiny corpus, for one update of 2 utterances."""
    if "wavlm" in recipe:
        from score_upstream.models.wavlm import new_wavlm, save_s3prl, tiny_cfg

        init = save_s3prl(new_wavlm(tiny_cfg(), seed=0), tmp_path / "wavlm.pt")
    else:
        init = tiny_hubert_ckpt
    small = ["optim.total_steps=1", "optim.warmup_steps=0", "data.utterances_per_update=2", "progress=false", "device=cpu"]
    small += [] if recipe.startswith("spin/") else ["perturb.pitch_method=fast"]  # SPIN's views are Praat's
    small += ["data.pack_seconds=6", "data.crop_seconds=3"] if recipe.startswith("spin/") else []  # 256 s > the corpus
    out = tmp_path / "out"
    argv = [BIN / "score-train", RECIPES / recipe, "--data", tiny_corpus, "--out", out, f"model.init={init}", *small]
    proc = _run(argv, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = out / ("score_wavlm.pt" if "wavlm" in recipe else "score_hubert.pt")
    assert final.is_file()
    again = _run([*argv, "resume=true"], timeout=600)  # resume of a finished run (model.init given: KNOWN_BROKEN)
    assert again.returncode == 0, again.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_two_processes(tiny_corpus, tmp_path):
    """`torchrun --nproc_per_node N -m score_upstream.training.train RECIPE --data D --out O model.init=...`, on
    CPU (gloo) with 2 processes and the tiny recipe."""
    out = tmp_path / "ddp"
    env = _env()
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run(
        [BIN / "torchrun", "--nproc_per_node", "2", "-m", "score_upstream.training.train", RECIPES / "score" / "tiny.yaml",
         "--data", tiny_corpus, "--out", out, "optim.total_steps=1", "optim.warmup_steps=0", "data.utterances_per_update=2",
         "perturb.pitch_method=fast", "progress=false", "device=cpu"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "score_hubert.pt").is_file()


@pytest.mark.slow
def test_run_superb_as_documented(tiny_corpus, tiny_hubert_ckpt, tmp_path):
    """recipes/README.md's SUPERB block: score-convert of the base and of a SPIN checkpoint (--base), run_superb.sh
    with three models (hubert_local, score_hubert, the converted SPIN through hubert_local) and two lexicon
    files, then `recipes/pr.sh ... --lexicon L --expdir E --stage 2` on one of them. QbE with --qbe-layer last and
    PR with 2 updates keep it short (ASR runs in tests/test_matrix.py)."""
    from test_matrix import _micro_librispeech
    from test_spin import SAFE_LOADING, make_spin

    if not SAFE_LOADING:
        pytest.skip("SPIN conversion needs torch >= 2.6")
    micro = _micro_librispeech(tiny_corpus, tmp_path / "data")
    words = (micro / "librispeech-lexicon.txt").read_text().splitlines(keepends=True)
    half = len(words) // 2
    (micro / "lexicon-a.txt").write_text("".join(words[:half]))
    (micro / "lexicon-b.txt").write_text("".join(words[half:]))
    spin_ckpt, _ = make_spin(tmp_path, tiny_hubert_ckpt)
    base, spin = tmp_path / "exp" / "hubert_base.pt", tmp_path / "exp" / "spin.pt"
    for src, dst, extra in ((tiny_hubert_ckpt, base, []), (spin_ckpt, spin, ["--base", base])):
        proc = _run([BIN / "score-convert", src, dst, "--to", "s3prl", *extra])
        assert proc.returncode == 0, proc.stderr[-2000:]
    exproot, results = tmp_path / "exp" / "superb", tmp_path / "results"
    proc = _run([REPO / "run_superb.sh", "--librispeech", micro / "LibriSpeech", "--quesst", tiny_corpus / "quesst14Database",
                 "--lexicon", f"{micro / 'lexicon-a.txt'} {micro / 'lexicon-b.txt'}",
                 "--model", f"hubert:hubert_local:{base}", "--model", f"score:score_hubert:{base}",
                 "--model", f"spin:hubert_local:{spin}", "--device", "cpu", "--tasks", "pr qbe", "--pr-steps", "2",
                 "--seeds", "0", "--qbe-layer", "last", "--exproot", exproot, "--out", results], timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (results / "superb.md").read_text()
    for name in ("HuBERT", "SCORE", "SPIN"):
        assert f"| {name} |" in table, table
        qbe = json.loads((exproot / name.lower() / "qbe" / "qbe_result.json").read_text())
        assert (qbe["layer"], qbe["protocol"]) == (12, "fixed-layer")
    pr = _run([RECIPES / "pr.sh", "--upstream", "score_hubert", "--ckpt", base, "--librispeech", micro / "LibriSpeech",
               "--lexicon", micro / "librispeech-lexicon.txt", "--expdir", tmp_path / "exp" / "superb" / "score2",
               "--stop-stage", "1"])
    assert pr.returncode == 0, pr.stderr[-2000:]
    pr = _run([RECIPES / "pr.sh", "--upstream", "score_hubert", "--ckpt", base, "--librispeech", micro / "LibriSpeech",
               "--lexicon", micro / "librispeech-lexicon.txt", "--expdir", tmp_path / "exp" / "superb" / "score2",
               "--stage", "2", "--max-steps", "1", "--device", "cpu", "--seeds", "0"])
    assert pr.returncode == 0, pr.stderr[-2000:]
    assert json.loads((tmp_path / "exp" / "superb" / "score2" / "pr" / "seed0" / "result.json").read_text())["metric"] == "per"
