#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment and system tools.
#
#   source recipes/lib/setup_env.sh && score_setup_env
#
# SCORE_VENV overrides the location (default: <repo>/.venv). SCORE_LOCK picks the pinned set, a path
# (absolute, or relative to the repository) (default: requirements.lock, the set we test and run with;
# requirements-min.lock is the oldest supported set, see README "Install into your own environment").
# The environment is rebuilt only when pyproject.toml, the lock or this script changed since the last
# successful set-up, so a second call costs a fraction of a second.

score_repo_root() { cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd; }

score_setup_espeak() {
  command -v espeak-ng >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] installing espeak-ng (Debian package) for speech synthesis" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng) >/dev/null 2>&1 || true
  fi
  command -v espeak-ng >/dev/null 2>&1 && return 0
  echo "[setup] espeak-ng not found and could not be installed here: run 'sudo apt-get install espeak-ng'" \
       "(Debian/Ubuntu) or 'brew install espeak-ng' (macOS); only score-synth and the tests that need speech use it" >&2
  return 0
}

score_setup_env() {
  local root venv py stamp want lock
  root="$(score_repo_root)"
  venv="${SCORE_VENV:-$root/.venv}"
  lock="${SCORE_LOCK:-requirements.lock}"
  [[ "$lock" == /* ]] || lock="$root/$lock"
  py="${SCORE_PYTHON:-python3.11}"
  command -v "$py" >/dev/null 2>&1 || py=python3
  [ -f "$lock" ] || {
    echo "[setup] SCORE_LOCK=${SCORE_LOCK:-} names no file ($lock); expected requirements.lock or requirements-min.lock" >&2
    return 1
  }
  want="$(cat "$root/pyproject.toml" "$lock" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
  stamp="$venv/.score-setup-stamp"
  score_setup_espeak
  if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
    return 0
  fi
  echo "[setup] building the environment in $venv from $(basename "$lock") (first run: about a minute)" >&2
  "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || {
    echo "[setup] Python 3.11 is required, found $("$py" --version 2>&1) at $(command -v "$py"); set SCORE_PYTHON" >&2
    return 1
  }
  # every step checks its own status: callers write `score_setup_env || die`, and bash ignores `set -e`
  # inside a function called on the left of `||`; the stamp goes first, so a build that fails or is
  # interrupted is never taken for a finished one
  rm -f "$stamp"
  [ -x "$venv/bin/python" ] || "$py" -m venv "$venv" \
    || { echo "[setup] could not create a virtual environment in $venv with $py" >&2; return 1; }
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "uv==0.13.9" \
    || { echo "[setup] could not install uv into $venv (pip failed above; is PyPI reachable?)" >&2; return 1; }
  "$venv/bin/uv" pip install -q --python "$venv/bin/python" -r "$lock" \
    || { echo "[setup] installing $lock into $venv failed (see above); the environment is not marked ready" >&2; return 1; }
  "$venv/bin/uv" pip install -q --python "$venv/bin/python" --no-deps -e "$root" \
    || { echo "[setup] installing the project itself into $venv failed (see above)" >&2; return 1; }
  # every module's .pyc written once here (about a minute): where PYTHONDONTWRITEBYTECODE is set, as on
  # many CI machines, Python would otherwise recompile thousands of modules in every process (~10 s per
  # s3prl run, dozens of runs in the demo and the tests)
  "$venv/bin/python" -m compileall -q -j 0 "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true  # a stray file that does not compile is harmless
  echo "$want" > "$stamp"
  export PATH="$venv/bin:$PATH" VIRTUAL_ENV="$venv"
}
