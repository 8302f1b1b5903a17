"""s3prl's downstream runner with the compatibility layer applied and our upstreams registered.

How to run (the arguments are s3prl's ``run_downstream.py`` arguments)::

    score-s3prl -m train -u score_hubert -k exp/score/score_hubert.pt -d asr -p exp/asr \\
        -c exp/asr/data/config.yaml     # data paths in the config (recipes/asr.sh stage 1), never inside -o
    score-s3prl -m evaluate -e exp/asr/dev-clean-best.ckpt -t test-clean
    score-s3prl -m train -e exp/asr                 # resume from the newest states-*.ckpt
    python -m score_upstream.s3prl.cli ...          # the same

Added to s3prl's behaviour:

* ``--device cpu`` when CUDA is absent and no ``--device`` is given (s3prl defaults to cuda);
* without ``-c``, a downstream we package a config for (``score_upstream/s3prl/superb/<name>/config.yaml``,
  ``asr`` -> ``asr``, ``ctc`` -> ``pr``, ``quesst14_dtw`` -> ``qbe``) uses it, and the asr ``dict_path`` defaults to the packaged ``char.dict``;
* a missing checkpoint, config or experiment, a checkpoint in no HuBERT/WavLM format, or one of the
  other family than the upstream (``score_hubert`` vs ``score_wavlm``), is reported in one line (exit status 2) before s3prl starts. Set ``SCORE_TRACEBACK=1`` to see tracebacks;
* every ``-k`` checkpoint passes :func:`score_upstream.s3prl.vet.vet` first (weights-only read, the conv
  front-end string parsed with bounds), also for s3prl's own ``hubert_local`` / ``wavlm_local``.

Checkpoints written by the runner record the upstream name (``score_hubert``); evaluate and resume
go through this same entry point, so the name resolves again.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import types
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)

OUR_UPSTREAMS = ("score_hubert", "score_local", "score_wavlm")
WAVLM_FORMATS = ("wavlm", "wavlm_hf")
# s3prl downstream name -> the folder of score_upstream/s3prl/superb/ holding its packaged config
PACKAGED_CONFIGS = {"asr": "asr", "ctc": "pr", "quesst14_dtw": "qbe"}


class CliError(ValueError):
    """Bad command-line input, reported in one line."""


def _value(argv: list[str], *flags: str) -> str | None:
    for i, a in enumerate(argv):
        for flag in flags:
            if a == flag and i + 1 < len(argv):
                return argv[i + 1]
            if flag.startswith("--") and a.startswith(flag + "="):
                return a.split("=", 1)[1]
    return None


def prepare_argv(argv: list[str]) -> list[str]:
    """Check the arguments we can check cheaply and add our defaults; returns s3prl's argv.

    Raises:
        CliError / CheckpointError: one-line messages for bad input.
    """
    from score_upstream.s3prl.compat import default_device_args
    from score_upstream.models.formats import detect_format

    argv = default_device_args(argv)
    past = _value(argv, "-e", "--past_exp")
    if past is not None:
        p = Path(past)
        if not p.exists():
            raise CliError(f"{past}: -e expects a runner checkpoint states-*.ckpt / *-best.ckpt or its directory; not found")
        if p.is_dir() and not list(p.glob("states-*.ckpt")):
            raise CliError(f"{past}: directory holds no states-*.ckpt to resume from")
        return argv
    upstream = _value(argv, "-u", "--upstream")
    ckpt = _value(argv, "-k", "--upstream_ckpt")
    if upstream in OUR_UPSTREAMS:
        if ckpt is None:
            raise CliError(f"-u {upstream} needs a checkpoint: pass -k CKPT (a SCORE, HuBERT or WavLM checkpoint)")
        found = "wavlm" if detect_format(ckpt) in WAVLM_FORMATS else "hubert"
        expected = "wavlm" if upstream == "score_wavlm" else "hubert"
        if found != expected:
            raise CliError(f"{ckpt}: a {found} checkpoint; -u {upstream} reads {expected} ones (use -u score_{found})")
    if ckpt is not None and upstream is not None and not ckpt.startswith("http"):
        from score_upstream.s3prl.vet import vet

        vet(ckpt, upstream)  # safe readers first: s3prl's own upstreams unpickle the file and eval() its config
    config = _value(argv, "-c", "--config")
    downstream = _value(argv, "-d", "--downstream")
    if config is None and downstream is not None:
        packaged = Path(__file__).resolve().parent / "superb" / PACKAGED_CONFIGS.get(downstream, downstream) / "config.yaml"
        if packaged.is_file():
            argv = argv + ["-c", str(packaged)]
            config = str(packaged)
    if config is not None:
        cfg_path = Path(config)
        if not cfg_path.is_file():
            raise CliError(f"{config}: downstream config not found (-c)")
        try:
            cfg = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError as e:
            raise CliError(f"{config}: not valid YAML ({str(e).splitlines()[0]})") from None
        if downstream == "asr":
            datarc = (cfg.get("downstream_expert") or {}).get("datarc") or {}
            if "dict_path" not in datarc:
                ours = f"config.downstream_expert.datarc.dict_path={Path(__file__).resolve().parent / 'superb' / 'asr' / 'char.dict'}"
                user = _value(argv, "-o", "--override")
                merged = ours if user in (None, "", "none", "None") else f"{ours},,{user}"
                argv = _drop(argv, "-o", "--override") + ["-o", merged]
    return argv


def _drop(argv: list[str], *flags: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in flags:
            skip = True
            continue
        if any(f.startswith("--") and a.startswith(f + "=") for f in flags):
            continue
        out.append(a)
    return out


def upstreams_only(hub) -> types.SimpleNamespace:
    """The upstream entry points of ``s3prl.hub`` (functions of a ``hubconf`` module, ours included),
    without the modules, classes and helpers it also holds (``os``, ``torch``, ``FileLock``, ...)."""
    names = [n for n in dir(hub) if not n.startswith("_")]
    return types.SimpleNamespace(**{
        n: getattr(hub, n) for n in names
        if inspect.isfunction(getattr(hub, n)) and getattr(hub, n).__module__.endswith("hubconf")
    })


def main(argv: list[str] | None = None) -> int:
    """Run s3prl's ``run_downstream`` main; returns the exit status."""
    from score_upstream.native import keep_freed_memory

    keep_freed_memory()  # before the first large tensor: freed activations are reused, not re-faulted
    argv = list(sys.argv[1:] if argv is None else argv)
    from score_upstream.s3prl.compat import CompatError
    from score_upstream.models.formats import CheckpointError

    debug = os.environ.get("SCORE_TRACEBACK", "") not in ("", "0")
    # s3prl warns at import time, in every run, that ESPnet is missing; only its espnet_hubert upstream
    # needs it, and that upstream says so itself when it is used
    logging.getLogger("s3prl.upstream.espnet_hubert.expert").setLevel(logging.ERROR)
    try:
        if any(a in ("-h", "--help") for a in argv):
            s3prl_argv = argv
        else:
            s3prl_argv = prepare_argv(argv)
        from score_upstream.s3prl.upstream.hubconf import register_upstreams

        register_upstreams()
        from s3prl import run_downstream

        saved, saved_hub = sys.argv, run_downstream.hub
        sys.argv = ["score-s3prl"] + s3prl_argv
        if s3prl_argv is argv:  # --help: s3prl lists every public name of s3prl.hub as an upstream
            run_downstream.hub = upstreams_only(saved_hub)
        try:
            run_downstream.main()
        except SystemExit as done:
            if s3prl_argv is argv and not done.code:  # after s3prl's option list: what we add, with examples
                from score_upstream.cliparse import strip_markup

                print("\n" + strip_markup(__doc__).strip())
            raise
        finally:
            sys.argv, run_downstream.hub = saved, saved_hub
    except (CliError, CheckpointError, CompatError, FileNotFoundError) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except AssertionError as e:
        # s3prl validates its inputs with bare asserts (e.g. a missing bucket_file directory).
        if debug:
            raise
        print(f"error: s3prl rejected the input: {e or 'assertion failed'} (SCORE_TRACEBACK=1 shows where)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
