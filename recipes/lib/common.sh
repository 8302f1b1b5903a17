#!/usr/bin/env bash
# Shared shell functions of the SUPERB recipes (recipes/{asr,pr,qbe}.sh, run_superb.sh).
#
#   source "$(dirname "$0")/lib/common.sh"
#   stage=1; stop_stage=4; expdir=exp/demo      # defaults, one comment each
#   parse_options "$@"                           # --stage 2 --expdir x -o "config.a=1" ...
#   run_stage 1 "data preparation: $data -> $expdir/pr/config.yaml" stage_prepare
#
# Everything heavy is Python; these functions only orchestrate: option parsing, one log line per
# stage, `.done` markers so a rerun skips finished stages, and input checks that stop with one line.

# The demo's phone recognition, shared by run_superb.sh --demo and recipes/pretrain/profile.sh: DEMO_PR_STEPS
# updates of a linear head on cached features, 8 utterances a batch, no DataLoader workers (forking them every
# epoch costs more than it saves on 2 cores), s3prl's default learning rate (1e-2) rather than the SCORE
# authors' 5e-4 (a few hundred updates must show something on CPU), decayed linearly to 0 (s3prl's
# linear_schedule_with_warmup, no warm-up): on dev, 400 updates gave PER 42.8 +/- 1.6 (HuBERT, 5 seeds) instead
# of 43.9 +/- 2.9 (3 seeds) at a constant rate.
DEMO_PR_STEPS=400
DEMO_PR_OPTS=(--batch-size 8 --lr 1e-2 --num-workers 0 -o "config.runner.gradient_accumulate_steps=1"
  -o "config.scheduler.name=linear_schedule_with_warmup" -o "config.scheduler.num_warmup_steps=0")

# Prints "[recipe time] message" to stderr.
log() {
  printf '[%s %s] %s\n' "${SCORE_RECIPE:-$(basename "$0" .sh)}" "$(date '+%Y-%m-%d %H:%M:%S')" "$*" >&2
}

# Stops the recipe with one line on stderr, exit status 2.
die() {
  printf 'error: %s: %s\n' "${SCORE_RECIPE:-$(basename "$0" .sh)}" "$*" >&2
  exit 2
}

# require_file PATH WHAT [HINT]: stops unless PATH is a file.
require_file() {
  [ -f "$1" ] || die "missing $2: $1${3:+; $3}"
}

# require_dir PATH WHAT [HINT]: stops unless PATH is a directory.
require_dir() {
  [ -d "$1" ] || die "missing $2: $1${3:+; $3}"
}

# require_ckpt PATH: stops unless the upstream checkpoint given with --ckpt is set and is a file.
require_ckpt() {
  [ -n "$1" ] || die "missing upstream checkpoint: pass --ckpt PATH"
  require_file "$1" "upstream checkpoint (--ckpt)"
}

# require_cmd NAME [HINT]: stops unless NAME is on PATH.
require_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "command not found: $1${2:+; $2}"
}

# Prints the usage: the comment block that opens the calling script (after the shebang).
usage() {
  awk 'NR == 1 && /^#!/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
}

# parse_options "$@": sets the shell variable of each `--name value` / `--name=value` option.
# Dashes in names become underscores (--stop-stage -> stop_stage). Only variables listed in
# $OPTIONS (space separated) are accepted; anything else stops the recipe, naming the nearest known option.
# $ALIASES ("old=new ...", underscores) lists old names still accepted, each with a one-line notice.
# `-o VALUE` appends an s3prl override to $overrides (joined with ',,', s3prl's separator) in scripts that
# declare it. `-h/--help` prints the usage.
# A flag option (a listed variable whose default is "false") may be given without a value.
# Options also listed in $LIST_OPTIONS are repeatable: their values are joined with newlines.
# Leftover positional arguments land in the array ARGS.
parse_options() {
  ARGS=()
  local opt name value
  while [ $# -gt 0 ]; do
    opt="$1"
    case "$opt" in
      -h|--help) usage; exit 0 ;;
      -o)
        [ -n "${overrides+set}" ] || die "unknown option: -o (this script takes no s3prl overrides; see --help)"
        [ $# -ge 2 ] || die "option -o needs a value (an s3prl override such as config.runner.total_steps=10)"
        overrides="${overrides:+$overrides,,}$2"; shift 2; continue ;;
      --) shift; ARGS+=("$@"); break ;;
      --*=*) name="${opt%%=*}"; value="${opt#*=}"; name="$(_score_option_name "${name#--}")"; shift ;;
      --*)
        name="$(_score_option_name "${opt#--}")"
        if [ "${!name-}" = "false" ] && { [ $# -lt 2 ] || [[ "$2" == -* ]]; }; then
          value=true; shift
        else
          [ $# -ge 2 ] || die "option $opt needs a value"
          value="$2"; shift 2
        fi ;;
      -*) die "unknown option: $opt$(_score_suggest "${opt#-}") (see --help)" ;;
      *) ARGS+=("$opt"); shift; continue ;;
    esac
    if [[ " ${LIST_OPTIONS:-} " == *" $name "* ]] && [ -n "${!name-}" ]; then
      printf -v "$name" '%s\n%s' "${!name}" "$value"   # repeatable option: one value per line
    else
      printf -v "$name" '%s' "$value"
    fi
  done
  if _score_is_option stage; then
    [[ "$stage" =~ ^[0-9]+$ ]] || die "--stage must be a non-negative integer, got '$stage'"
    [[ "$stop_stage" =~ ^[0-9]+$ ]] || die "--stop-stage must be a non-negative integer, got '$stop_stage'"
  fi
}

# _score_option_name NAME: the variable of option --NAME (dashes -> underscores, an alias -> its new name);
# stops with one line naming the nearest known option when there is none.
_score_option_name() {
  local name="${1//-/_}" pair new
  for pair in ${ALIASES:-}; do
    if [ "${pair%%=*}" = "$name" ]; then
      new="${pair#*=}"
      printf 'warning: %s: --%s is deprecated; use --%s\n' "${SCORE_RECIPE:-$(basename "$0" .sh)}" \
        "${name//_/-}" "${new//_/-}" >&2
      name="$new"
    fi
  done
  _score_is_option "$name" || die "unknown option: --${1}$(_score_suggest "$1") (see --help)"
  printf '%s\n' "$name"
}

# _score_suggest WORD: "; did you mean --X?" for the known option (or old name, shown as its new one) nearest to
# WORD by edit distance, or nothing.
_score_suggest() {
  local o
  { for o in $OPTIONS; do printf '%s %s\n' "$o" "$o"; done
    for o in ${ALIASES:-}; do printf '%s %s\n' "${o%%=*}" "${o#*=}"; done; } | tr '_' '-' | awk -v w="${1//_/-}" '
    function dist(a, b,   i, j, la, lb, d, c) {
      la = length(a); lb = length(b)
      for (i = 0; i <= la; i++) d[i, 0] = i
      for (j = 0; j <= lb; j++) d[0, j] = j
      for (i = 1; i <= la; i++) for (j = 1; j <= lb; j++) {
        c = d[i-1, j-1] + (substr(a, i, 1) != substr(b, j, 1))
        if (d[i-1, j] + 1 < c) c = d[i-1, j] + 1
        if (d[i, j-1] + 1 < c) c = d[i, j-1] + 1
        d[i, j] = c
      }
      return d[la, lb]
    }
    { s = dist(w, $1); if (index($1, w) == 1 || index(w, $1) == 1) s = s < 2 ? s : 2
      if (best == "" || s < bs) { best = $2; bs = s } }
    END { if (best != "" && bs <= (length(w) > 6 ? 4 : 2)) printf "; did you mean --%s?", best }'
}

_score_is_option() {
  [[ " ${OPTIONS} " == *" $1 "* ]]
}

# vet_ckpt UPSTREAM CKPT: stops with one line unless the project's safe readers accept CKPT for UPSTREAM
# (weights-only load, the conv front-end string parsed with bounds, layer count, family and format;
# score_upstream/s3prl/vet.py), before s3prl's upstream, which unpickles the file and eval()s that string,
# ever sees it.
vet_ckpt() {
  "$(score_python)" -m score_upstream.s3prl.vet --upstream "$1" "$2" >/dev/null || exit 2  # it printed one line
}

# stage_inputs [--value NAME=TEXT | --file NAME=PATH | --tree NAME=DIR]...: what the next run_stage's result
# depends on: settings as text, a checkpoint or config by its content (SHA-256, cached), a data folder by its
# path and file listing. The code version and the earlier stages' keys are added by score_upstream.stages.
stage_inputs() { STAGE_INPUTS=("$@"); }

# stage_outputs PATH...: what the next run_stage writes (inside STAGE_DIR); removed before it runs when those
# files may come from other inputs (another key recorded, no record, or --force true).
stage_outputs() { STAGE_OUTPUTS=("$@"); }

# run_stage N DESCRIPTION FUNCTION [ARGS...]: runs FUNCTION when stage <= N <= stop_stage, unless it is done:
# $STAGE_DIR/.stageN.done holds the key of the inputs (stage_inputs) it was made from, and every earlier
# stage is done. The key is computed by one `python -m score_upstream.stages check` call, which also
# removes the outputs (stage_outputs) when the key changed, saying why in one log line, and records the key in
# .stageN.inprogress; that file becomes .stageN.done when FUNCTION succeeds. An interrupted run with the same
# key resumes (STAGE_ACTION=resume; train_downstream passes s3prl's -a only then). DESCRIPTION is for people
# (kept in the marker), never part of the key. A per-seed run (run_paths) finds the markers of the stages
# its seeds share (data preparation) in STAGE_PARENT.
run_stage() {
  local n="$1" what="$2" fn="$3"; shift 3
  local inputs=(${STAGE_INPUTS[@]+"${STAGE_INPUTS[@]}"}) outputs=() o decision why
  for o in ${STAGE_OUTPUTS[@]+"${STAGE_OUTPUTS[@]}"}; do outputs+=(--clean "$o"); done
  STAGE_INPUTS=(); STAGE_OUTPUTS=()
  if [ "$n" -lt "$stage" ] || [ "$n" -gt "$stop_stage" ]; then
    return 0
  fi
  local marker="${STAGE_DIR:?STAGE_DIR must be set before run_stage}/.stage${n}.done"
  decision="$("$(score_python)" -m score_upstream.stages check --dir "$STAGE_DIR" ${STAGE_PARENT:+--parent "$STAGE_PARENT"} \
    --stage "$n" --what "$what" ${inputs[@]+"${inputs[@]}"} ${outputs[@]+"${outputs[@]}"} \
    $([ "${force:-false}" != true ] || echo --force))" || exit 2  # it printed one error line
  STAGE_ACTION="${decision%%$'\t'*}"; why="${decision#*$'\t'}"
  if [ "$STAGE_ACTION" = skip ]; then
    log "Stage $n: $what (done, skipping; remove $marker to redo)"
    return 0
  fi
  [ -z "$why" ] || log "Stage $n: $why"
  log "Stage $n: $what"
  "$fn" "$@"
  mv -f "$STAGE_DIR/.stage$n.inprogress" "$marker"
}

# write_manifest TASK: records in $dir/manifest.json the runs this run wrote (each with its key) and their
# settings, once the last stage (4) ran; score-results and report.paired read exactly these seed folders. With
# several learning rates (--lrs) it chooses the rate on dev (lowest mean over seeds of each run's best dev value;
# score_upstream/runs.py) and lists that rate's runs. Not written by a run of one rate of a sweep (--run-lr).
write_manifest() {
  [ "$stop_stage" -ge 4 ] && [ "$stage" -le 4 ] || return 0
  if [ -n "${run_lr:-}" ] && [ "$sweep" = true ]; then
    log "manifest not written: --run-lr $run_lr ran one rate of the sweep; run stage 4 with every rate to choose"
    return 0
  fi
  "$(score_python)" -m score_upstream.stages manifest --dir "$dir" --task "$1" --seeds "$seeds" --lrs "${lrs:-}" \
    --last-stage 4 || exit 2
}

# stage_done N: true when stage N of this experiment (or, for a per-seed run, of the stages its seeds
# share in STAGE_PARENT) has its marker.
stage_done() {
  [ -f "${STAGE_DIR:?}/.stage$1.done" ] || { [ -n "${STAGE_PARENT:-}" ] && [ -f "$STAGE_PARENT/.stage$1.done" ]; }
}

# check_seeds: stops unless $seeds is a list of distinct non-negative integers ("0 1 2").
check_seeds() {
  local s seen=" "
  [ -n "${seeds// /}" ] || die "--seeds is empty; give one or more downstream seeds, e.g. --seeds \"0 1 2\""
  for s in $seeds; do
    [[ "$s" =~ ^[0-9]+$ ]] || die "--seeds must be non-negative integers separated by spaces, got '$seeds'"
    [[ "$seen" != *" $s "* ]] || die "--seeds lists seed $s twice: '$seeds'"
    seen+="$s "
  done
}

# check_count NAME...: stops unless each named option is empty or a non-negative integer.
check_count() {
  local name
  for name in "$@"; do
    [ -z "${!name}" ] || [[ "${!name}" =~ ^[0-9]+$ ]] \
      || die "--${name//_/-} must be a non-negative integer, got '${!name}'"
  done
}

# check_lrs: the learning rates of this run, from --lrs or else --lr (empty: the config's): each a positive
# number, none twice; sweep=true when there are two or more (runs in $dir/lr<LR>/seed<S>, the rate chosen on dev
# by write_manifest), false otherwise (runs in $dir/seed<S>, as without --lrs). --run-lr LR runs only that rate
# of the sweep (one SLURM job per rate), in the sweep's folders.
check_lrs() {
  local x seen=" " n=0
  [ -n "${lrs// /}" ] || lrs="$lr"
  for x in $lrs; do
    [[ "$x" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]] && [[ ! "$x" =~ ^[0.]+([eE].*)?$ ]] \
      || die "--lrs must be positive numbers separated by spaces (\"1e-4 5e-4 1e-3\"), got '$lrs'"
    [[ "$seen" != *" $x "* ]] || die "--lrs lists $x twice: '$lrs'"
    seen+="$x "; n=$(( n + 1 ))
  done
  sweep=false; [ "$n" -lt 2 ] || sweep=true
  [ -z "${run_lr:-}" ] || [[ "$seen" == *" $run_lr "* ]] || die "--run-lr $run_lr is not one of --lrs '$lrs'"
}

# run_paths LR SEED: the downstream run of one (learning rate, seed): lr=LR, seed=SEED and run_dir=$dir/seedSEED
# ($dir/lrLR/seedSEED in a sweep), which holds the run's checkpoints, logs, result.json and the markers of its
# stages (STAGE_DIR); the stages all runs share keep theirs in $dir (STAGE_PARENT).
run_paths() {
  lr="$1"; seed="$2"
  if [ "$sweep" = true ]; then run_dir="$dir/lr$1/seed$2"; else run_dir="$dir/seed$2"; fi
  STAGE_DIR="$run_dir"
  STAGE_PARENT="$dir"
}

# run_parallel N OUTDIR LABEL FN ITEM...: runs `FN ITEM` for each ITEM, N at a time, each in a subshell with
# its output in OUTDIR/LABEL<ITEM>.out (a line says so) and an equal share of OMP_NUM_THREADS (default: the
# core count; at least 1). A frozen upstream and a small head leave s3prl's runner bound by one Python
# thread, so runs side by side on two cores take about the time of one. After every run ended, prints the
# last "test KEY: VALUE" line of each and stops if any failed, naming its output file.
run_parallel() {
  local n="$1" outdir="$2" label="$3" fn="$4" item out failed=
  shift 4
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive integer, got '$n'"
  local threads=$(( ${OMP_NUM_THREADS:-$(nproc)} / n ))
  [ "$threads" -ge 1 ] || threads=1
  mkdir -p "$outdir"
  for item in "$@"; do
    while [ "$(jobs -rp | wc -l)" -ge "$n" ]; do wait -n || true; done
    out="$outdir/$label$item.out"
    log "$label$item: running in the background ($n at a time, $threads thread(s) each) -> $out"
    rm -f "$out.rc"
    ( ( export OMP_NUM_THREADS="$threads"; "$fn" "$item" ) >"$out" 2>&1; echo $? >"$out.rc" ) &
  done
  wait
  for item in "$@"; do
    out="$outdir/$label$item.out"
    if [ "$(cat "$out.rc" 2>/dev/null || echo 1)" != 0 ]; then
      log "$label$item failed: $(grep -v '^\s*$' "$out" | tail -n 1 | cut -c1-300)"
      failed+=" $out"
    else
      log "$label$item: done$(grep -E '^test [a-z]+: ' "$out" | tail -n 1 | sed 's/^/, /')"
    fi
    rm -f "$out.rc"
  done
  [ -z "$failed" ] || die "runs failed; see$failed"
}

# for_each_run FN: runs FN once per downstream run (after run_paths LR SEED): every seed in $seeds of every rate
# in $lrs (--run-lr: that one), $jobs of them at a time (default 1; run_parallel, outputs in $dir/seed<S>.out,
# or $dir/lr<LR>.seed<S>.out in a sweep, when jobs > 1).
for_each_run() {
  local fn="$1" s r items=() label=seed
  local rates="${run_lr:-$lrs}"
  [ -n "${rates// /}" ] || rates="-"  # no rate given: the config's (run_paths gets an empty lr)
  for r in $rates; do
    [ "$r" != - ] || r=
    for s in $seeds; do
      if [ "${jobs:-1}" = 1 ]; then
        run_paths "$r" "$s"; "$fn"
      elif [ "$sweep" = true ]; then
        items+=("$r.seed$s"); label=lr
      else
        items+=("$s"); _RUN_LR="$r"
      fi
    done
  done
  [ "${jobs:-1}" != 1 ] || return 0
  _RUN_FN="$fn"  # globals: run_parallel's own locals would shadow a local of this function
  _one_run() {
    if [ "$sweep" = true ]; then run_paths "${1%.seed*}" "${1##*.seed}"; else run_paths "${_RUN_LR:-}" "$1"; fi
    "$_RUN_FN"
  }
  run_parallel "$jobs" "$dir" "$label" _one_run "${items[@]}"
}

# abspath PATH: prints PATH made absolute (the file need not exist).
abspath() {
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$(pwd)" "$1" ;;
  esac
}

# recipe_paths TASK: what every SUPERB recipe derives from its options: py (the Python for
# `python -m` calls), expdir and ckpt made absolute, and dir=EXPDIR/TASK, which also holds the stage
# markers (STAGE_DIR) of the stages before any per-seed run (run_paths).
recipe_paths() {
  py="$(score_python)"
  expdir="$(abspath "$expdir")"
  dir="$expdir/$1"
  STAGE_DIR="$dir"
  STAGE_PARENT=
  [ -z "$ckpt" ] || ckpt="$(abspath "$ckpt")"
}

# downstream_settings SECTION [OVERRIDES]: the s3prl overrides that decide an ASR or PR run's result, in the
# order applied: the recipe's own OVERRIDES (e.g. the learning rate), then the options both recipes share:
# --max-steps (total, eval and save steps; log every min(N, 100)) and --batch-size under
# config.downstream_expert.SECTION, and last the user's -o overrides. Part of the training stage's key.
downstream_settings() {
  local section="$1" o="${2-}"
  if [ -n "$max_steps" ]; then
    o+=",,config.runner.total_steps=$max_steps,,config.runner.eval_step=$max_steps,,config.runner.save_step=$max_steps"
    o+=",,config.runner.log_step=$(( max_steps < 100 ? max_steps : 100 ))"
  fi
  [ -z "$batch_size" ] || o+=",,config.downstream_expert.$section.batch_size=$batch_size"
  [ -z "$overrides" ] || o+=",,$overrides"
  printf '%s\n' "${o#,,}"
}

# train_downstream DOWNSTREAM CONFIG SECTION DATA_OVERRIDES SETTINGS: score-s3prl -m train --seed $seed of
# $upstream/$ckpt into $run_dir (run_paths), with DATA_OVERRIDES (data paths; their identity is stage 1's
# key), --num-workers under config.downstream_expert.SECTION, then SETTINGS (downstream_settings); --layer
# trains on one hidden state instead of SUPERB's weighted sum of all (s3prl -l). s3prl's -a (resume from the
# newest states-*.ckpt, whose stored arguments replace ours) is passed only when run_stage found an interrupted
# run from the same inputs; its output is then added to train.log, which keeps the dev values printed before the
# interruption (a sweep chooses the learning rate from them). Stops when no checkpoint was written.
train_downstream() {
  local downstream="$1" config="$2" section="$3" o="$4" settings="$5" resume=()
  local append=()
  [ "${STAGE_ACTION:-run}" != resume ] || { resume=(-a); append=(--append); }
  o="${o:+$o,,}config.downstream_expert.$section.num_workers=$num_workers${settings:+,,$settings}"
  run_logged ${append[@]+"${append[@]}"} "$run_dir/train.log" score-s3prl -m train ${resume[@]+"${resume[@]}"} \
    -u "$upstream" -k "$ckpt" -d "$downstream" -c "$config" -p "$run_dir" --seed "${seed:?run_paths must run first}" --device "$device" \
    ${layer:+-l "$layer"} -o "$o"
  ls "$run_dir"/states-*.ckpt >/dev/null 2>&1 || die "training wrote no checkpoint in $run_dir; see $run_dir/train.log"
}

# resolve_device: turns device=auto into cuda or cpu (imports torch, so only stages that need it call it).
resolve_device() {
  [ "${device:-auto}" != auto ] || device="$("$(score_python)" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')"
}

# Picks the Python of the active environment (or the repo's .venv) for `python -m ...` calls.
score_python() {
  if [ -n "${SCORE_PY:-}" ]; then
    printf '%s\n' "$SCORE_PY"
  elif [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
    printf '%s\n' "$VIRTUAL_ENV/bin/python"
  else
    command -v python3 || command -v python
  fi
}

# run_logged [--append] LOG CMD [ARGS...]: runs CMD with its output shown and saved to LOG (added to its end
# with --append); on failure stops with one line naming the command, its exit status and the log.
run_logged() {
  local tee_opts=()
  [ "$1" != --append ] || { tee_opts=(-a); shift; }
  local logfile="$1"; shift
  mkdir -p "$(dirname "$logfile")"
  local rc
  ( set +e; "$@" 2>&1; echo $? > "$logfile.rc" ) | tee ${tee_opts[@]+"${tee_opts[@]}"} "$logfile"
  rc="$(cat "$logfile.rc")"; rm -f "$logfile.rc"
  [ "$rc" -eq 0 ] || die "$1 failed (exit $rc); see $logfile (last line: $(grep -v '^\s*$' "$logfile" | tail -n 1 | cut -c1-200))"
}

# score_log LOG KEY OUT_JSON: reads the test metric that s3prl printed ("<split> KEY: VALUE") with the
# parser score-results uses, writes {"metric", "value", "log"} to OUT_JSON and prints it; stops with
# one line when the log holds no such line (the test run did not finish).
score_log() {
  "$(score_python)" - "$@" <<'PY' || die "missing '$2' result in $1: the test stage did not finish; rerun with --stage 3"
import json, sys
from score_upstream.atomic import atomic_write_bytes
from score_upstream.report.results import parse_s3prl_log
log, key, out = sys.argv[1:]
value = parse_s3prl_log(log, key)
if value is None:
    sys.exit(1)
atomic_write_bytes((json.dumps({"metric": key, "value": value, "log": log}) + "\n").encode(), out)
print(f"test {key}: {value}")
PY
}
