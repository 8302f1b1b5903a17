# The launchers of run_superb.sh: `local` runs each task recipe here, `slurm` submits it as SLURM jobs.
#
#   source recipes/lib/slurm.sh          # before the defaults block: sets launcher=local and the SLURM options
#   OPTIONS+=" $LAUNCH_OPTIONS"; parse_options "$@"
#   launch_check                         # --status EXPROOT prints the jobs and exits; checks --launcher
#   launch_begin                         # slurm: starts a submission in $exproot
#   launch_task pr recipes/pr.sh --expdir exp/m --seeds "0 1" ...   # local: runs it; slurm: submits its jobs
#   launch_gather score-results exp/m ... --out results/x          # local: runs it; slurm: the final job
#
# With --launcher slurm every task of every model becomes SLURM jobs running the same recipes with
# --stage/--stop-stage (the recipes stay the only description of the work):
#   MODEL.TASK.prep       ASR/PR stage 1 (data preparation, shared by the seeds)    resources block `prep`
#   MODEL.TASK.seedS      ASR/PR stages 2-3 of seed S (train, test), after prep      block `asr` / `pr`
#   MODEL.TASK.collect    ASR/PR stage 4 of every seed + manifest.json, after them   block `collect`
#   MODEL.qbe             QbE stages 1-4                                             block `qbe`
#   gather                score-results over every model, after every collect/qbe    block `gather`
# chained with --dependency=afterok (a job whose dependency failed is cancelled: --kill-on-invalid-dep).
# A learning-rate sweep (--lrs of two or more rates) makes one job per rate and seed, MODEL.TASK.lrR.seedS
# (the recipe's --run-lr R --seeds S), and `collect` (stage 4 of every run) chooses the rate on dev.
# score_upstream.launch.slurm writes the sbatch scripts into EXPROOT/slurm/scripts/, the logs go to
# EXPROOT/slurm/logs/NAME.JOBID.out and EXPROOT/slurm/jobs.json lists the submission.

launcher=local     # local | slurm
status=            # EXPROOT: print the state of its SLURM jobs and exit
partition="${SCORE_SLURM_PARTITION:-}"   # slurm: sbatch --partition for every job
account="${SCORE_SLURM_ACCOUNT:-}"       # slurm: sbatch --account
qos="${SCORE_SLURM_QOS:-}"               # slurm: sbatch --qos
sbatch_flags="${SCORE_SLURM_FLAGS:-}"    # slurm: further sbatch flags for every job ("--exclusive --mail-type=END")
slurm_resources="${SCORE_SLURM_RESOURCES:-}"  # slurm: per-job resources; empty = recipes/slurm/resources.yaml
LAUNCH_OPTIONS="launcher status partition account qos sbatch_flags slurm_resources"
LAUNCH_LAST=()     # slurm: the jobs the final gather job waits on
LAUNCH_COUNT=0     # slurm: jobs of this submission

_launch_py() { "$(score_python)" -m score_upstream.launch.slurm "$@"; }

# launch_check: right after parse_options: --status EXPROOT prints the state of its jobs and exits; checks
# --launcher (slurm: not with --demo, sbatch and squeue on PATH).
launch_check() {
  if [ -n "$status" ]; then
    _launch_py status "$status" || exit 2
    exit 0
  fi
  case "$launcher" in
    local) return 0 ;;
    slurm) ;;
    *) die "--launcher must be local or slurm, got '$launcher'" ;;
  esac
  [ "${demo:-false}" != true ] || die "--launcher slurm runs --model sweeps; the demo (--demo) runs with --launcher local"
  require_cmd sbatch "--launcher slurm needs SLURM's sbatch and squeue on this host (recipes/slurm/local_cluster.sh start brings up a local one)"
  require_cmd squeue
  [ -z "$slurm_resources" ] || require_file "$slurm_resources" "SLURM resources file (--slurm-resources)"
}

# launch_begin: before the first launch_task; slurm: begins a submission in $exproot (jobs of the previous one
# still queued or running are kept when submitted again unchanged).
launch_begin() {
  [ "$launcher" = slurm ] || return 0
  _launch_py begin --exproot "$exproot" || exit 2
}

# _launch_submit NAME KIND [--after N]... [--done PATH]... -- CMD...: one job; prints nothing, dies on failure
_launch_submit() {
  local name="$1" kind="$2" id; shift 2
  id="$(_launch_py submit --exproot "$exproot" --name "$name" --kind "$kind" \
    ${slurm_resources:+--resources "$slurm_resources"} --partition "$partition" --account "$account" \
    --qos "$qos" --sbatch-flags "$sbatch_flags" "$@")" || exit 2  # it printed one error line
  LAUNCH_COUNT=$(( LAUNCH_COUNT + 1 ))
  log "job $name: SLURM job $id"
}

# _launch_arg NAME ARGS...: the value of the last `--NAME VALUE` in ARGS (empty when absent)
_launch_arg() {
  local name="$1" value=; shift
  while [ $# -gt 0 ]; do
    if [ "$1" = "--$name" ] && [ $# -ge 2 ]; then value="$2"; shift 2; else shift; fi
  done
  printf '%s' "$value"
}

# launch_task TASK RECIPE ARGS...: runs RECIPE ARGS (local), or submits the jobs of TASK (asr, pr, qbe) for
# the model whose --expdir ARGS name (slurm). Later options win in the recipes' parser: the jobs append
# --stage/--stop-stage/--seeds/--jobs to ARGS.
launch_task() {
  local task="$1" recipe="$2"; shift 2
  if [ "$launcher" = local ]; then
    "$recipe" "$@"
    return
  fi
  local expdir model seeds lrs r s after=() done=()
  expdir="$(_launch_arg expdir "$@")"; model="$(basename "$expdir")"
  case "$task" in
    asr|pr)
      seeds="$(_launch_arg seeds "$@")"
      # empty = the recipe's own default (its `seeds=` line)
      [ -n "$seeds" ] || seeds="$(sed -n 's/^seeds=\([0-9 ]*[0-9]\).*/\1/p' "$recipe" | head -n 1)"
      lrs="$(_launch_arg lrs "$@")"
      _launch_submit "$model.$task.prep" prep --done "$expdir/$task/.stage1.done" \
        -- "$recipe" "$@" --stage 1 --stop-stage 1
      [ "$(wc -w <<< "$lrs")" -ge 2 ] || lrs=-  # one rate (or the recipe's): no sweep folders
      for r in $lrs; do
        # a sweep: one job per (rate, seed), in EXPDIR/TASK/lr<R>/seed<S>; the recipe's stage 4 chooses on dev
        local name="$model.$task" sub="$expdir/$task" only=()
        [ "$r" = - ] || { name+=".lr$r"; sub+="/lr$r"; only=(--run-lr "$r"); }
        for s in $seeds; do
          _launch_submit "$name.seed$s" "$task" --after "$model.$task.prep" \
            --done "$sub/seed$s/.stage2.done" --done "$sub/seed$s/.stage3.done" \
            -- "$recipe" "$@" ${only[@]+"${only[@]}"} --seeds "$s" --jobs 1 --stage 2 --stop-stage 3
          after+=(--after "$name.seed$s")
          done+=(--done "$sub/seed$s/.stage4.done")
        done
      done
      _launch_submit "$model.$task.collect" collect "${after[@]}" "${done[@]}" --done "$expdir/$task/manifest.json" \
        -- "$recipe" "$@" --seeds "$seeds" --jobs 1 --stage 4 --stop-stage 4
      LAUNCH_LAST+=(--after "$model.$task.collect") ;;
    qbe)
      _launch_submit "$model.qbe" qbe --done "$expdir/qbe/.stage1.done" --done "$expdir/qbe/.stage2.done" \
        --done "$expdir/qbe/.stage3.done" --done "$expdir/qbe/.stage4.done" -- "$recipe" "$@"
      LAUNCH_LAST+=(--after "$model.qbe") ;;
    *) die "unknown task '$task' for the SLURM launcher; expected asr, pr, qbe" ;;
  esac
}

# launch_gather CMD ARGS...: runs the table command (local), or submits it as the final job after every
# task's last job and says how to follow the submission (slurm). ARGS hold the table's --out.
launch_gather() {
  if [ "$launcher" = local ]; then
    "$@"
    return
  fi
  local out; out="$(_launch_arg out "$@")"
  _launch_submit gather gather ${LAUNCH_LAST[@]+"${LAUNCH_LAST[@]}"} --done "$out/superb.csv" -- "$@"
  log "submitted $LAUNCH_COUNT SLURM jobs (scripts and logs in $exproot/slurm/); follow them with:"
  log "  $0 --status $exproot"
  log "tables in $out/superb.{md,csv,png} once job 'gather' is done; after a failure or scancel, the same command again continues"
}
