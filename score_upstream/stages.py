"""What a recipe stage's result depends on, by content: stage keys and ``.done`` markers.

The recipes (``recipes/lib/common.sh``) call it once per stage::

    python -m score_upstream.stages check --dir EXP/pr/seed0 --parent EXP/pr --stage 2 --what "train (seed 0)" \\
        --value upstream=hubert_local --file "upstream checkpoint=/models/a.pt" --value seed=0 --clean EXP/pr/seed0
    python -m score_upstream.stages manifest --dir EXP/pr --task pr --seeds "0 1 2" [--lrs "1e-4 1e-3"] --last-stage 4
    python -m score_upstream.stages hash /models/a.pt          # SHA-256 of a file (cached)

A stage's key is the SHA-256 of its inputs: ``--value`` text (settings), ``--file`` content (a checkpoint, a
config; SHA-256, cached by path, size, mtime, ctime and inode in ``$XDG_CACHE_HOME/score-upstream/sha256.json``),
``--tree`` a data folder (its path and a listing of its files with their sizes: cheap, not a content hash), the
keys of the earlier stages (in ``--dir`` or, for the stages all seeds share, ``--parent``) and the code version.
``check`` prints ``ACTION<TAB>WHY`` and acts:

* ``skip``: ``.stageN.done`` holds this key and every earlier stage is done.
* ``resume``: ``.stageN.inprogress`` holds this key: an interrupted run from the same inputs may resume.
* ``run``: anything else. Files the stage made from other inputs (``--clean`` paths) are removed first and WHY
  says which inputs changed. ``.stageN.inprogress`` then holds the new key; the shell renames it to
  ``.stageN.done`` when the stage succeeds.

Nothing here imports torch or s3prl: each call is one short process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from score_upstream.atomic import atomic_write_bytes

logger = logging.getLogger(__name__)

_CACHE_ENTRIES = 1000  # files remembered by the hash cache (one entry per path), least recently hashed out first


class StageError(ValueError):
    """Bad input to a stage check (an unparsable option, a path to clear outside the stage's folder)."""


# ---------------------------------------------------------------- content identity


def cache_file() -> Path:
    """The SHA-256 cache: ``$XDG_CACHE_HOME/score-upstream/sha256.json`` (default ``~/.cache/...``)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "score-upstream" / "sha256.json"


def _stat_id(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read once per (size, mtime, ctime, inode): later calls read the cache.

    The cache is rewritten atomically (temp file + rename); a writer that loses a race to another only
    loses its entry, which costs one more hashing later. An unwritable cache is skipped with a warning.
    """
    real = os.path.realpath(path)
    st = os.stat(real)
    cache_path = cache_file()
    entry = _read_cache(cache_path).get(real)
    if isinstance(entry, dict) and entry.get("stat") == _stat_id(st) and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    h = hashlib.sha256()
    with open(real, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    digest = h.hexdigest()
    cache = _read_cache(cache_path)  # read again: keep what other processes added meanwhile
    cache.pop(real, None)
    cache[real] = {"stat": _stat_id(st), "sha256": digest}
    cache = dict(list(cache.items())[-_CACHE_ENTRIES:])
    try:
        atomic_write_bytes((json.dumps(cache, indent=0) + "\n").encode(), cache_path)
    except OSError as e:
        logger.warning("%s: cannot write the hash cache (%s); %s will be hashed again next time", cache_path, e, real)
    return digest


def path_digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a file, or of a folder's files (relative path and content hash of each)."""
    p = Path(path)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(f"{f.relative_to(p).as_posix()}\0{file_sha256(f)}\n".encode())
        return f"sha256:{h.hexdigest()} (folder)"
    return f"sha256:{file_sha256(p)}"


def tree_fingerprint(path: str | os.PathLike) -> str:
    """A data folder's identity, cheap enough for LibriSpeech: its resolved path, file count, total size and
    a SHA-256 over every file's relative path and size (file contents are not read)."""
    root = Path(path).resolve()
    h, n, size = hashlib.sha256(), 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        for name in sorted(filenames):
            try:
                st = os.stat(os.path.join(dirpath, name))
            except OSError:
                continue
            h.update(f"{rel}/{name}\0{st.st_size}\n".encode())
            n, size = n + 1, size + st.st_size
    return f"{root} ({n} files, {size} bytes, listing sha256:{h.hexdigest()[:16]})"


def code_version() -> str:
    """The versions of the code a result depends on (this package and s3prl)."""
    out = []
    for pkg in ("score-upstream", "s3prl"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            out.append(f"{pkg} not installed")
    return ", ".join(out)


def describe_input(kind: str, name: str, value: str) -> str:
    """The value a key records for one input: ``value`` (text), ``file`` (content hash), ``tree``."""
    if kind == "value":
        return value
    if not value:
        return "none"
    if not os.path.exists(value):
        return f"missing {value}"
    return path_digest(value) if kind == "file" else tree_fingerprint(value)


def stage_key(inputs: dict[str, str]) -> str:
    """SHA-256 over the sorted ``{name: value}`` inputs."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- markers and decisions


def read_marker(path: Path) -> dict | None:
    """A marker's ``{"key", "inputs", "what"}``; a marker from before keys (plain text) reads as ``{"what"}``."""
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    return data if isinstance(data, dict) and "key" in data else {"key": None, "inputs": None, "what": text.strip()}


def _short(value: str) -> str:
    if value.startswith("sha256:"):
        return value[7:15] + ".."
    if len(value) == 64 and all(c in "0123456789abcdef" for c in value):  # an earlier stage's key
        return value[:8] + ".."
    return value if len(value) <= 60 else value[:57] + "..."


def changes(old: dict | None, new: dict) -> str:
    """One phrase naming the inputs that differ, e.g. ``upstream checkpoint content 3f2a1b2c.. -> 9b1c4d5e..``."""
    if not old:
        return "no record of the inputs that made the files there"
    parts = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, "none"), new.get(name, "none")
        if a == b:
            continue
        if ",," in a + b:  # s3prl override lists: only the overrides that differ
            sa, sb = set(a.split(",,")), set(b.split(",,"))
            a, b = ",,".join(sorted(sa - sb)) or "-", ",,".join(sorted(sb - sa)) or "-"
        label = f"{name} content" if b.startswith("sha256:") or a.startswith("sha256:") else name
        parts.append(f"{label} {_short(a)} -> {_short(b)}")
    return "; ".join(parts) or "same inputs"


def earlier_keys(directory: Path, parent: Path | None, stage: int) -> dict[str, str]:
    """``{"stage K": key or "missing"}`` for K < ``stage``, from ``directory`` or else ``parent``."""
    out = {}
    for k in range(1, stage):
        found = [read_marker(d / f".stage{k}.done") for d in (directory, parent) if d is not None]
        marker = next((m for m in found if m is not None), None)
        out[f"stage {k}"] = (marker or {}).get("key") or "missing"
    return out


def _clear(paths: list[Path]) -> list[Path]:
    cleared = []
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
            cleared.append(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
            cleared.append(p)
    return cleared


def _retire_markers(directory: Path, stage: int) -> None:
    """Stage ``stage``'s markers go; the later stages' become ``.stageK.stale``: not done any more, but still
    saying what made their files, so that their rerun can say what changed."""
    for p in list(directory.glob(".stage*.done")) + list(directory.glob(".stage*.inprogress")):
        number = p.name[len(".stage"):].split(".")[0]
        if number.isdigit() and int(number) == stage:
            p.unlink(missing_ok=True)
        elif number.isdigit() and int(number) > stage:
            p.replace(directory / f".stage{number}.stale")


def check(directory: Path, stage: int, what: str, inputs: dict[str, str], clean: list[Path],
          parent: Path | None = None, force: bool = False) -> tuple[str, str]:
    """Decide whether stage ``stage`` of ``directory`` runs, and prepare its folder; returns ``(action, why)``.

    ``inputs`` are the described inputs (:func:`describe_input`); the code version and the earlier stages'
    keys are added here. Files in ``clean`` are removed when they may come from other inputs: never while an
    earlier stage is missing (the stage stops on its own check, and nothing is lost).
    """
    directory = directory.resolve()
    for p in clean:
        if not p.resolve().is_relative_to(directory):
            raise StageError(f"{p}: a path to clear must lie inside the stage's folder {directory}; fix the recipe")
    earlier = earlier_keys(directory, parent.resolve() if parent else None, stage)
    inputs = {**inputs, "code": code_version(), **earlier}
    key = stage_key(inputs)
    done = read_marker(directory / f".stage{stage}.done")
    running = read_marker(directory / f".stage{stage}.inprogress")
    recorded = done or running or read_marker(directory / f".stage{stage}.stale") or {}
    chain = "missing" not in earlier.values()
    if chain and not force and done and done["key"] == key:
        return "skip", ""
    action, why = "run", ""
    present = [p for p in clean if p.exists() or p.is_symlink()]
    if not chain:
        pass
    elif not force and running and running["key"] == key:
        action, why = "resume", "resuming an interrupted run made from the same inputs"
    else:
        if force:
            reason = "--force true"
        elif not recorded.get("key"):
            reason = "no record of the inputs that made its files"
        elif recorded.get("key") == key:
            reason = "an earlier stage was redone"
        else:
            reason = f"inputs changed ({changes(recorded.get('inputs'), inputs)})"
        if present:
            _clear(present)
            why = f"{reason}: clearing {', '.join(map(str, present))} and rerunning"
        elif recorded:
            why = f"{reason}: rerunning"
    _retire_markers(directory, stage)
    (directory / f".stage{stage}.stale").unlink(missing_ok=True)
    record = {"stage": stage, "key": key, "what": what, "inputs": inputs}
    atomic_write_bytes((json.dumps(record, indent=2) + "\n").encode(), directory / f".stage{stage}.inprogress")
    return action, why


# ---------------------------------------------------------------- command line


def _pairs(items: list[str] | None, kind: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise StageError(f"--{kind} {item!r}: expected NAME=VALUE")
        out[name] = describe_input(kind, name, value)
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m score_upstream.stages {check,manifest,hash,key} ...`` (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m score_upstream.stages", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("check", "key"):
        p = sub.add_parser(name)
        p.add_argument("--value", action="append", help="NAME=TEXT input (a setting)")
        p.add_argument("--file", action="append", help="NAME=PATH input: the file's (or folder's) content")
        p.add_argument("--tree", action="append", help="NAME=DIR input: a data folder's path and file listing")
    c = sub.choices["check"]
    c.add_argument("--dir", required=True, help="the stage's folder (markers, outputs)")
    c.add_argument("--parent", default=None, help="folder of the stages all seeds share")
    c.add_argument("--stage", type=int, required=True)
    c.add_argument("--what", default="", help="the stage's description (kept in the marker for people)")
    c.add_argument("--clean", action="append", default=[], help="output to remove when made from other inputs")
    c.add_argument("--force", action="store_true", help="rerun even when done (clears --clean paths)")
    m = sub.add_parser("manifest")
    m.add_argument("--dir", required=True)
    m.add_argument("--task", required=True)
    m.add_argument("--seeds", required=True, help='"0 1 2"')
    m.add_argument("--last-stage", type=int, default=4)
    m.add_argument("--lrs", default="", help='learning rates of the run ("1e-4 1e-3": a sweep, chosen on dev)')
    h = sub.add_parser("hash")
    h.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.cmd == "hash":
            for p in args.paths:
                print(f"{path_digest(p)[7:]}  {p}")
        elif args.cmd == "manifest":
            from score_upstream.runs import write_manifest  # it imports this module

            write_manifest(Path(args.dir), args.task, [int(s) for s in args.seeds.split()], args.last_stage,
                           args.lrs.split())
        else:
            inputs = {**_pairs(args.value, "value"), **_pairs(args.file, "file"), **_pairs(args.tree, "tree")}
            if args.cmd == "key":
                print(stage_key(inputs))
            else:
                action, why = check(Path(args.dir), args.stage, args.what, inputs, [Path(p) for p in args.clean],
                                    Path(args.parent) if args.parent else None, args.force)
                print(f"{action}\t{why}")
    except (StageError, OSError) as e:
        print(f"error: stages: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
