#!/usr/bin/env bash
# Every GPU check of the project in one call, written to one Markdown report: the GPU tests, the soft-DTW
# tables, SCORE training throughput of a random-weight HuBERT Base in fp32 and bf16 (extrapolated to the
# paper's 3,600 updates) and the QbE search on CUDA. Made for a machine with one NVIDIA GPU, torch,
# torchaudio and transformers preinstalled and no network: what else it needs comes as wheel files.
#
#   benchmarks/gpu_check.sh --fetch-wheels          # here, with network: the wheels -> .whl/ (git-ignored)
#   benchmarks/gpu_check.sh                         # there: install .whl/, run every check -> gpu_check/report.md
#   benchmarks/gpu_check.sh --dry-run               # CPU, tiny sizes, seconds: the test suite runs this
#
# Options (default in brackets):
#   --out DIR            report folder [gpu_check]
#   --wheels DIR         wheel folder [.whl]
#   --python-version V   --fetch-wheels: the target machine's Python [3.12]
#   --budget S           seconds per step before it is stopped (the whole GPU run stays under 8 min) [150; dry run: 600]
#   --dry-run / --fetch-wheels   see above
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out=gpu_check; wheels=.whl; pyver=3.12; budget=; dry=false; fetch=false
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --wheels) wheels="$2"; shift 2 ;;
    --python-version) pyver="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --dry-run) dry=true; shift ;;
    --fetch-wheels) fetch=true; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
cd "$root"
py="${SCORE_PY:-python3}"
# the dry run's budget only guards against a hang: a loaded CPU must not fail it
[ -n "$budget" ] || { [ "$dry" = true ] && budget=600 || budget=150; }
# what the package imports beyond torch, torchaudio and transformers (s3prl is a source package: pure Python)
NEEDS="s3prl==0.4.18 soundfile pyyaml tqdm scipy pandas tensorboardX editdistance dtw-python lxml omegaconf filelock pytest"

if [ "$fetch" = true ]; then
  mkdir -p "$wheels"
  grep -qx "/$wheels/" .git/info/exclude 2>/dev/null || echo "/$wheels/" >> .git/info/exclude
  for pkg in $NEEDS; do
    if [ "${pkg%%==*}" = s3prl ]; then  # sdist only on PyPI; installed from the archive with --no-build-isolation
      "$py" -m pip download -q --no-deps --no-binary :all: -d "$wheels" "$pkg"
    else
      "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$wheels" "$pkg"
    fi
  done
  ls "$wheels"
  exit 0
fi

mkdir -p "$out"
report="$out/report.md"
start=$SECONDS
if [ "$dry" = false ] && [ -d "$wheels" ] && ls "$wheels"/* >/dev/null 2>&1; then
  # a fresh folder per run: a fixed one would mix in whatever an earlier run or another user left there
  site="$(mktemp -d "${TMPDIR:-/tmp}/score_site.XXXXXX")"
  trap 'rm -rf "$site"' EXIT
  "$py" -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" "$wheels"/* \
    || { echo "gpu_check.sh: installing $wheels into $site failed" >&2; exit 2; }
  export PYTHONPATH="$site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$root:${PYTHONPATH:-}" PYTHONUNBUFFERED=1

# step TITLE COMMAND...: runs COMMAND under the time budget, appends its output to the report as a block.
# A step that fails, times out or prints nothing is recorded and the next step runs: GPU time is scarce,
# so one broken step must not cost the others (nothing in here may trip `set -e`).
step() {
  local title="$1" t0=$SECONDS rc=0 log; shift
  echo "== $title" >&2
  log="$(mktemp "${TMPDIR:-/tmp}/gpu_check_step.XXXXXX")"
  timeout "$budget" "$@" > "$log" 2>&1 || rc=$?
  {
    printf '\n## %s\n\n`%s` (exit %s, %s s)\n\n```\n' "$title" "$*" "$rc" "$(( SECONDS - t0 ))"
    { grep -v -e 'Warning' -e 'WeightNorm.apply' "$log" || [ -s "$log" ] || echo "(no output)"; } | tail -n 60
    printf '```\n'
  } >> "$report" || true
  rm -f "$log"
  if [ "$rc" = 124 ]; then
    failed+=" $title (exit 124, time budget);"
  elif [ "$rc" != 0 ]; then
    failed+=" $title (exit $rc);"
  fi
  return 0
}

failed=""
{
  echo "# GPU check"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M:%S') UTC, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$([ "$dry" = true ] && echo ', DRY RUN (CPU, tiny sizes)')"
  echo
  echo '```'
  "$py" -c 'import torch, platform; print("torch", torch.__version__, "cuda", torch.version.cuda, "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device", "|", platform.python_version())' || echo "no torch for $py: set SCORE_PY"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  echo '```'
} > "$report"

if [ "$dry" = true ]; then
  step "GPU tests (collected only)" "$py" -m pytest -q --co -m gpu -p no:cacheprovider tests/test_soft_dtw_triton.py
  step "soft-DTW" "$py" benchmarks/bench_soft_dtw.py --device cpu --sizes 20x16 --batch 2 --methods ours --repeats 1
  step "SCORE training throughput (tiny model, fp32)" "$py" benchmarks/bench_train.py --device cpu --updates 1
  step "QbE search" "$py" benchmarks/bench_qbe.py --queries 2 --docs 4 --dim 16 --query-frames 8,12 \
    --doc-frames 20,30 --s3prl-queries 1 --workers 1
else
  step "GPU tests" "$py" -m pytest -q -m gpu -p no:cacheprovider tests/
  step "soft-DTW (B=16, N=M=1000 table, lengths to 2,000, latency probe)" "$py" benchmarks/bench_soft_dtw.py \
    --device cuda --sizes 250x250,500x500,1000x1000,2000x2000 --batch 16 --repeat-budget 5 --max-seconds 20 --breakdown
  for prec in fp32 bf16; do
    step "SCORE training throughput, random HuBERT Base, $prec" "$py" benchmarks/bench_train.py --device cuda \
      --model random-base --updates 3 --precision "$prec"
  done
  step "QbE search (CPU and CUDA rows)" "$py" benchmarks/bench_qbe.py --queries 100 --docs 400 --s3prl-queries 2
fi
printf '\nTotal %s s.%s\n' "$(( SECONDS - start ))" "${failed:+ Failed or stopped at the time budget:$failed}" >> "$report"
echo "report: $report ($(( SECONDS - start )) s)" >&2
[ -z "$failed" ]
