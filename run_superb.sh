#!/usr/bin/env bash
# SUPERB ASR, PR and QbE for a list of upstreams, then the table of relative improvements.
#
#   ./run_superb.sh --demo        # synthetic corpus, the shipped small pre-trained HuBERT, SCORE, LASER and
#                                 # SPIN, CPU: 13 min on 2 cores (--methods score: SCORE alone)
#
#   ./run_superb.sh --librispeech /data/LibriSpeech --quesst-root /data/quesst14Database \
#       --lexicon /data/librispeech-lexicon.txt \
#       --model hubert:hubert_local:exp/hubert_base.pt \
#       --model score:score_hubert:exp/score_hubert_base/score_hubert.pt \
#       --model spin:spin:/models/spin_hubert_2048.ckpt \
#       --model wavlm:auto:/models/WavLM-Base+.pt --model score_wavlm:auto:exp/score_wavlm/score_wavlm.pt
#
# Each --model is NAME:UPSTREAM:CKPT (repeatable; a bare UPSTREAM:CKPT argument works too and is named
# after the upstream). UPSTREAM `spin` converts a SPIN Lightning checkpoint with score-convert and runs
# it as hubert_local; UPSTREAM `auto` picks score_hubert or score_wavlm from the checkpoint's content.
# Every model gets EXPROOT/NAME/ with model.json, asr/, pr/, qbe/; score-results turns them into
# OUT/superb.{md,csv,png}, rows grouped by model family (HuBERT, WavLM). Every --model is checked first
# (exists, loads with the project's safe readers, family and format fit its upstream), before any stage runs.
# The task settings and scoring: docs/protocol.md; the methods: docs/method.md.
#
# Options (default in brackets):
#   --demo BOOL           run the self-contained demo (corpus data/demo, experiments exp/demo, tables
#                         results/demo, CPU); it refuses --model, --librispeech, --quesst-root, --lexicon,
#                         --exproot, --out and --device, and honours the other options [false]
#   --model N:U:CKPT      a model to evaluate, repeatable [none]
#   --librispeech DIR     LibriSpeech root [data/LibriSpeech]
#   --quesst-root DIR     quesst14Database folder; old name: --quesst [data/quesst14Database]
#   --lexicon "P1 P2"     PR lexicon files (OpenSLR 11 librispeech-lexicon.txt + optional g2p) [LIBRISPEECH/../librispeech-lexicon.txt]
#   --exproot DIR         experiment root, one folder per model (recipes' --expdir) [exp/superb]
#   --out DIR             where score-results writes the table [results/superb]
#   --tasks "asr pr qbe"  tasks to run; the demo's default leaves ASR out (see README) [asr pr qbe; demo: pr qbe]
#   --device DEV          cuda, cpu or auto [auto]
#   --asr-max-steps N / --pr-max-steps N   the recipes' --max-steps of ASR / PR; old names: --asr-steps,
#                         --pr-steps; empty = the SUPERB configs' [config's / config's; demo: 1000 / 400]
#   --seeds "S1 S2 S3"    ASR and PR downstream seeds, one training run each (EXPDIR/{asr,pr}/seed<S>/); the
#                         table gives mean ± sd over them; empty = the recipes' default [1337; demo: 0 1 2 3 4 5]
#   --lrs "LR1 LR2"       ASR and PR downstream learning rates to sweep: each model's rate chosen on dev (lowest
#                         mean over seeds), its test value reported, the table says which; one value = that rate,
#                         no sweep; empty = the recipes' (PR 5e-4, ASR the config's 1e-4) [none]
#   --asr-lrs "..." / --pr-lrs "..."   the same for one task, over --lrs [none]
#   --jobs N              downstream seeds trained at the same time, each with its share of the cores [1; demo: 3]
#   --methods "M1 M2"     with --demo: methods fine-tuned from the starting model, side by side,
#                         recipes/METHOD/small.yaml [score laser spin]
#   --qbe-layer L         best (SUPERB protocol) | last (SCORE authors) | N (qbe.sh --qbe-layer) [best]
#   --demo-size SIZE      score-synth size of the demo corpus [demo]
#   --spin-base PATH      the HuBERT checkpoint SPIN models started from (SPIN stores only its own weights);
#                         empty = the base path recorded in the SPIN checkpoint [none]
#   --setup BOOL          with --demo: build or refresh .venv first (false: use the active environment) [true]
#   --launcher L          local: run every recipe here; slurm: submit them as SLURM jobs chained by dependencies,
#                         return at once (README "SUPERB on a SLURM cluster"; recipes/lib/slurm.sh) [local]
#   --status EXPROOT      print each SLURM job of EXPROOT as done / queued / running / failed, and exit [none]
#   --partition P / --account A / --qos Q / --sbatch-flags "F..."   sbatch settings of every job
#                         [$SCORE_SLURM_PARTITION / _ACCOUNT / _QOS / _FLAGS]
#   --slurm-resources YAML   GPUs, CPUs, memory, time per kind of job [recipes/slurm/resources.yaml]
set -euo pipefail
SCORE_RECIPE=run_superb
DEMO_ASR_STEPS=1000  # demo ASR updates (small BLSTM; fewer leave WER at 100 %)
DEMO_SEEDS="0 1 2 3 4 5"  # demo downstream seeds: PR's paired intervals narrow with n (see run_demo)
root="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$root/recipes/lib/common.sh"
source "$root/recipes/lib/slurm.sh"  # --launcher, --status and the SLURM options, with their defaults

demo=false         # self-contained demo
model=             # NAME:UPSTREAM:CKPT lines (repeatable --model)
librispeech=       # LibriSpeech root; empty = data/LibriSpeech (refused with --demo)
quesst_root=       # QUESST 2014 folder; empty = data/quesst14Database (refused with --demo)
lexicon=           # PR lexicons; empty = LIBRISPEECH/../librispeech-lexicon.txt
exproot=           # one folder per model; empty = exp/superb (exp/demo for --demo)
out=               # score-results output; empty = results/superb (results/demo for --demo)
tasks=            # tasks to run; empty = "asr pr qbe" ("pr qbe" for --demo)
device=            # cuda | cpu | auto; empty = auto (cpu for --demo)
asr_max_steps=     # ASR training updates; empty = config's
pr_max_steps=      # PR training updates; empty = config's
seeds=             # ASR/PR downstream seeds ("0 1 2"); empty = the recipes' default
jobs=              # seeds trained at the same time; empty = 1 (3 for --demo)
lrs=               # ASR/PR learning rates to sweep, chosen on dev; empty = the recipes'
asr_lrs=           # ASR learning rates, over --lrs
pr_lrs=            # PR learning rates, over --lrs
methods="score laser spin"  # --demo: methods fine-tuned from the starting model (recipes/METHOD/small.yaml)
qbe_layer=best     # QbE layer protocol
demo_size=demo     # score-synth size for --demo
setup=true         # --demo: build/refresh .venv with score_setup_env first
spin_base=         # HuBERT checkpoint a SPIN model started from (score-convert --base)
OPTIONS="spin_base setup demo model librispeech quesst_root lexicon exproot out tasks device asr_max_steps pr_max_steps seeds jobs lrs asr_lrs pr_lrs methods qbe_layer demo_size"
ALIASES="quesst=quesst_root asr_steps=asr_max_steps pr_steps=pr_max_steps"  # old names, accepted with a notice
LIST_OPTIONS="model"
OPTIONS+=" $LAUNCH_OPTIONS"
parse_options "$@"
[ -n "$asr_lrs" ] || asr_lrs="$lrs"
[ -n "$pr_lrs" ] || pr_lrs="$lrs"
launch_check  # --status EXPROOT: prints the state of its SLURM jobs and exits
for spec in "${ARGS[@]}"; do
  [[ "$spec" == *:* ]] || die "unexpected argument: $spec (expected UPSTREAM:CKPT or --model NAME:UPSTREAM:CKPT)"
  model="${model:+$model$'\n'}${spec%%:*}:$spec"
done

# vet UPSTREAM CKPT: "UPSTREAM FAMILY score|vanilla" from the project's safe readers (stdout only; its one
# error line goes to stderr and stops the script): the file loads without running code, its config strings
# parse within bounds, and its family and format fit UPSTREAM.
# Further arguments go to the checker (--base BASE for a SPIN checkpoint).
vet() {
  "$(score_python)" -m score_upstream.s3prl.vet --upstream "$1" "$2" "${@:3}" || exit 2
}

# split_model LINE: NAME UPSTREAM CKPT of a --model line into name, upstream, ckpt; stops on a bad one.
split_model() {
  local rest
  name="${1%%:*}"; rest="${1#*:}"; upstream="${rest%%:*}"; ckpt="${rest#*:}"
  [ -n "$name" ] && [ -n "$upstream" ] && [ -n "$ckpt" ] && [ "$rest" != "$upstream" ] \
    || die "bad model '$1': expected NAME:UPSTREAM:CKPT"
  [[ "$name" =~ ^[A-Za-z0-9._+-]+$ ]] || die "model name '$name' must be letters, digits, . _ + -"
}

# check_models: every --model (and --spin-base) exists, loads with the safe readers and fits its upstream,
# before the first stage of the first model runs.
check_models() {
  local line name upstream ckpt
  [ -z "$spin_base" ] || { [ -e "$spin_base" ] || die "missing --spin-base checkpoint: $spin_base"; vet score_hubert "$spin_base" >/dev/null; }
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    split_model "$line"
    [ -e "$ckpt" ] || die "missing checkpoint of model '$name': $ckpt"
    if [ "$upstream" = spin ]; then
      vet spin "$ckpt" ${spin_base:+--base "$spin_base"} >/dev/null
    else
      vet "$upstream" "$ckpt" >/dev/null
    fi
  done <<< "$model"
}

# evaluate_model NAME UPSTREAM CKPT: the three task recipes for one model, into $exproot/NAME.
evaluate_model() {
  local name="$1" upstream="$2" ckpt="$3" expdir="$exproot/$1" task
  [ -e "$ckpt" ] || die "missing checkpoint of model '$name': $ckpt"
  mkdir -p "$expdir"
  if [ "$upstream" = spin ]; then
    # converted again whenever the SPIN checkpoint's or the base's content differs from what made it
    local spin_key
    spin_key="$("$(score_python)" -m score_upstream.stages key --file "spin=$ckpt" --file "base=$spin_base")" || exit 2
    if [ ! -f "$expdir/spin_s3prl.pt" ] || [ "$(cat "$expdir/spin_s3prl.key" 2>/dev/null)" != "$spin_key" ]; then
      log "converting SPIN checkpoint $ckpt -> $expdir/spin_s3prl.pt"
      score-convert "$ckpt" "$expdir/spin_s3prl.pt" --to s3prl ${spin_base:+--base "$spin_base"} \
        || exit 2  # it printed one error line
      printf '%s\n' "$spin_key" > "$expdir/spin_s3prl.key"
    fi
    upstream=hubert_local; ckpt="$expdir/spin_s3prl.pt"
  fi
  # the upstream (auto resolved), family and SCORE or not, from the checkpoint's content (stdout only)
  local info detected family trained
  info="$(vet "$upstream" "$ckpt")" || exit 2
  read -r detected family trained <<< "$info"
  upstream="$detected"
  # model.json as score-results reads it; kind from the name, else from the upstream
  "$(score_python)" - "$expdir/model.json" "$name" "$2" "$upstream" "$(abspath "$ckpt")" "$(abspath "$3")" \
    "$family" "$trained" <<'PY'
import json, sys
from score_upstream.atomic import atomic_write_bytes
from score_upstream.stages import path_digest
path, name, given, upstream, ckpt, source, family, trained = sys.argv[1:]
display = {"hubert": "HuBERT", "wavlm": "WavLM", "score": "SCORE", "spin": "SPIN", "laser": "LASER"}
kind = name.lower() if name.lower() in display else ("score" if trained == "score" else family) if given == "auto" else (
    "spin" if given == "spin" else "score" if given.startswith("score") else "hubert" if given.startswith("hubert")
    else "wavlm" if given.startswith("wavlm") else "other")
# the bytes a row measured: SHA-256 of the evaluated checkpoint (and of the given one when it was converted)
info = {"name": display.get(name.lower(), name), "upstream": upstream, "ckpt": ckpt, "kind": kind, "source_ckpt": source,
        "ckpt_sha256": path_digest(ckpt).split()[0].removeprefix("sha256:")}
info.update({"source_ckpt_sha256": path_digest(source).split()[0].removeprefix("sha256:")} if source != ckpt else {})
info.update({"family": family} if family not in ("", "other") else {})
atomic_write_bytes((json.dumps(info, indent=2) + "\n").encode(), path)
PY
  local common=(--upstream "$upstream" --ckpt "$ckpt" --expdir "$expdir" --device "$device")
  # the demo's processes of one model share each utterance's hidden states through a folder (deleted after)
  [ "$share_features" != true ] || local -x SCORE_UPSTREAM_CACHE_DIR="$expdir/feature-cache"
  # each recipe's failure stops this function even where it runs in a subshell tested by `||` or `if`
  # (bash then ignores set -e): `|| return` on every step
  for task in $tasks; do
    case "$task" in
      asr) launch_task asr "$root/recipes/asr.sh" "${common[@]}" --librispeech "$librispeech" ${asr_max_steps:+--max-steps "$asr_max_steps"} \
             ${seeds:+--seeds "$seeds"} ${jobs:+--jobs "$jobs"} ${asr_opts[@]+"${asr_opts[@]}"} \
             ${asr_lrs:+--lrs "$asr_lrs"} || return ;;
      pr) launch_task pr "$root/recipes/pr.sh" "${common[@]}" --librispeech "$librispeech" ${lexicon:+--lexicon "$lexicon"} \
            ${pr_max_steps:+--max-steps "$pr_max_steps"} ${seeds:+--seeds "$seeds"} ${jobs:+--jobs "$jobs"} \
            ${pr_opts[@]+"${pr_opts[@]}"} ${pr_lrs:+--lrs "$pr_lrs"} || return ;;
      qbe) launch_task qbe "$root/recipes/qbe.sh" "${common[@]}" --quesst-root "$quesst_root" --qbe-layer "$qbe_layer" || return ;;
      *) die "unknown task '$task' in --tasks; expected asr, pr, qbe" ;;
    esac
  done
  [ "$share_features" != true ] || rm -rf "$expdir/feature-cache"
}

run_models() {
  [ -n "$model" ] || die "missing models: pass --model NAME:UPSTREAM:CKPT (or --demo)"
  local line name upstream ckpt expdirs=()
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    split_model "$line"
    if [[ " $EVALUATED " == *" $name "* ]]; then
      log "model $name: evaluated above"
    else
      log "model $name: $upstream $ckpt -> $exproot/$name"
      evaluate_model "$name" "$upstream" "$ckpt"
    fi
    expdirs+=("$exproot/$name")
  done <<< "$model"
  log "table: ${expdirs[*]} -> $out"
  # the QUESST eval ground truth lets the summary compare MTWVs by a paired bootstrap over queries
  local gt="$quesst_root/scoring/groundtruth_quesst14_eval" gt_opts=()
  [[ " $tasks " != *" qbe "* ]] || [ ! -d "$gt" ] || gt_opts=(--groundtruth "$gt")
  launch_gather score-results "${expdirs[@]}" --out "$out" ${gt_opts[@]+"${gt_opts[@]}"} ${results_opts[@]+"${results_opts[@]}"} \
    || die "score-results failed (see above)"
}

# fine_tune METHOD: recipes/METHOD/small.yaml from the starting model into $exproot/METHOD/score_hubert.pt, rerun
# (with --overwrite) whenever the starting model, the recipe, the corpus or the code changed since the model
# there was made (score_upstream/stages.py keys it, as the recipes' stages), skipped otherwise.
fine_tune() {
  local m="$1" dir="$exproot/$1" decision why force=()
  mkdir -p "$dir"
  [ -f "$dir/score_hubert.pt" ] || force=(--force)
  decision="$("$(score_python)" -m score_upstream.stages check --dir "$dir" --stage 1 \
    --what "fine-tuning by $m: recipes/$m/small.yaml + $init -> $dir/score_hubert.pt" \
    --file "starting model=$init" --file "recipe=recipes/$m/small.yaml" --tree "corpus=$data/LibriSpeech" \
    --value "device=$device" ${force[@]+"${force[@]}"})" || exit 2  # it printed one error line
  if [ "${decision%%$'\t'*}" = skip ]; then
    log "fine-tuning by $m: done for this starting model, recipe and corpus (remove $dir/.stage1.done to redo)"
    return 0
  fi
  why="${decision#*$'\t'}"
  [ -z "$why" ] || [ "$why" = "$decision" ] || log "fine-tuning by $m: $why"
  score-train "recipes/$m/small.yaml" --data "$data" --out "$dir" --overwrite "model.init=$init" "device=$device" \
    || die "fine-tuning by $m failed (see above)"
  mv -f "$dir/.stage1.inprogress" "$dir/.stage1.done"
}

# demo_refuse OPTION VALUE: --demo makes its own corpus and models; a data or model option would be ignored.
demo_refuse() {
  [ -z "$2" ] || die "--$1 is not used by --demo (corpus data/demo, experiments exp/demo, tables results/demo, CPU); drop it, or run without --demo"
}

run_demo() {
  demo_refuse model "$model"; demo_refuse librispeech "$librispeech"; demo_refuse quesst-root "$quesst_root"
  demo_refuse lexicon "$lexicon"; demo_refuse exproot "$exproot"; demo_refuse out "$out"; demo_refuse device "$device"
  if [ "$setup" = true ]; then
    # shellcheck source=recipes/lib/setup_env.sh
    source "$root/recipes/lib/setup_env.sh"
    score_setup_env || die "could not build the environment (see above)"
  fi
  cd "$root"
  local data=data/demo start=$SECONDS init=score_upstream/pretrained/hubert_small_synth.pt
  exproot=exp/demo out=results/demo device=cpu
  librispeech="$data/LibriSpeech" quesst_root="$data/quesst14Database" lexicon="$data/librispeech-lexicon.txt"
  require_file "$init" "shipped pre-trained model" "make it with recipes/pretrain/run.sh (about 68 min on 2 cores)"
  vet score_hubert "$init" >/dev/null
  # six seeds: per-seed PER differences between two models have a dev sd of 1.5-3 points on the demo's
  # 32 dev utterances whatever the PR settings (400 or 1,600 updates, lr 3e-3 or 1e-2, projection 64 or
  # 256), so the paired interval narrows mainly with n; each seed costs ~30 CPU s per model, and six keep
  # the demo within 15 minutes on 2 cores (eight: ~16)
  [ -n "$seeds" ] || seeds="$DEMO_SEEDS"
  # three seeds side by side, one thread each: s3prl's runner over cached features is bound by one
  # Python thread, so on 2 cores this takes about half the time of one run after the other
  [ -n "$jobs" ] || jobs=3
  # ASR is left out by default: the demo's BLSTM needs more CPU minutes per run than the whole demo has
  # before its WER leaves 100 % (README); --tasks "asr pr qbe" adds it
  [ -n "$tasks" ] || tasks="pr qbe"
  [ -n "$asr_max_steps" ] || asr_max_steps=$DEMO_ASR_STEPS
  [ -n "$pr_max_steps" ] || pr_max_steps=$DEMO_PR_STEPS
  # a small BLSTM keeps the demo's ASR within CPU minutes; the SUPERB config is used otherwise
  # no DataLoader worker processes: with the upstream's features cached, forking workers every epoch costs
  # more than it saves on 2 cores (PR train stage 38 s instead of 78 s, same PER)
  # lr 1e-3 rather than SUPERB's 1e-4: at 1e-4 the BLSTM still emits only blanks (WER 100 %) after 400 updates;
  # 1,000 updates at 1e-3 gave test WER 81.6 % for the shipped model (one seed, ~17 CPU minutes)
  asr_opts=(-o "config.downstream_expert.modelrc.RNNs.dim=[128,128]" -o "config.optimizer.lr=1e-3" --batch-size 8 --num-workers 0)
  pr_opts=("${DEMO_PR_OPTS[@]}")  # the demo's PR settings (recipes/lib/common.sh)
  results_opts=(--no-reported --title "SUPERB demo: SCORE, LASER and SPIN vs their starting HuBERT" \
    --banner "DEMO numbers: synthetic speech, a 3M-parameter HuBERT pre-trained on 3 h of it, CPU budgets; not HuBERT Base on LibriSpeech")
  # every process on one thread, many side by side: the numbers do not depend on the machine's cores, and
  # no multi-threaded process spins while it waits for a core
  export OMP_NUM_THREADS=1
  # the upstream is frozen in every downstream run: compute each utterance's hidden states once per run,
  # and once per model across its runs (the seeds, the test runs and QbE's dev and eval searches)
  export SCORE_UPSTREAM_CACHE_MB="${SCORE_UPSTREAM_CACHE_MB:-1024}"
  share_features=true
  log "Stage 1: synthetic corpus: score-synth --size $demo_size --seed 0 -> $data"
  score-synth --out "$data" --size "$demo_size" --seed 0 --overwrite || die "score-synth failed (see above)"
  log "Stage 2: starting model: $init (pre-trained by recipes/pretrain/run.sh on voices the demo never uses)"
  "$(score_python)" - "$init" <<'PY'
import sys
from score_upstream.pretrained import provenance
p = provenance(sys.argv[1])["pretrain"]
print(f"  {p['steps']} HuBERT updates on {p['train_hours']:.2f} h of synthetic speech, {p['labels']['features']} "
      f"units (K={p['labels']['clusters']}); held-out masked accuracy {p['valid'].get('acc_m', float('nan')):.3f}")
PY
  local m names=() invariance=(--model "HuBERT=$init") trained=()
  model="hubert:score_hubert:$init"
  for m in $methods; do
    require_file "recipes/$m/small.yaml" "small-model recipe of method '$m' (--methods)" "expected one of: score laser spin"
    # every model through score_hubert (same hidden states as hubert_local for the same checkpoint; it has the cache)
    model+=$'\n'"$m:score_hubert:$exproot/$m/score_hubert.pt"
    invariance+=(--model "${m^^}=$exproot/$m/score_hubert.pt")
    trained+=("$exproot/$m")
    names+=("$m")
  done
  log "Stage 3: fine-tuning of the starting model by ${names[*]} (recipes/METHOD/small.yaml + $data -> $exproot/METHOD/score_hubert.pt), each then evaluated (Stage 4)"
  # one pipeline per method, all side by side: fine-tuning, then SUPERB $tasks as soon as it ends (a method
  # that finishes early is evaluated while SCORE still trains); the starting model is evaluated meanwhile.
  # Evaluations run at a lower CPU priority than fine-tuning: the longest fine-tuning, then its own
  # evaluation, is the demo's critical path, and the evaluations fill whatever core the training leaves.
  # lower_priority: this subshell and what it starts run at nice 10 (below the fine-tuning)
  lower_priority() { renice -n 10 -p "$BASHPID" >/dev/null || true; }
  _train_and_evaluate() {
    fine_tune "$1"
    touch "$exproot/$1/.demo-ready"  # this run's model is in place (Stage 6 waits for it)
    log "Stage 4: SUPERB $tasks (seeds $seeds) for $1 -> $exproot/$1"
    lower_priority
    evaluate_model "$1" score_hubert "$exproot/$1/score_hubert.pt"
  }
  local pipelines_pid=
  for m in "${names[@]}"; do rm -f "$exproot/$m/.demo-ready"; done
  if [ ${#names[@]} -gt 0 ]; then
    run_parallel "${#names[@]}" "$exproot" method- _train_and_evaluate "${names[@]}" &
    pipelines_pid=$!
  fi
  # Stage 6 needs only the checkpoints: it starts when the last fine-tuning of this run has ended (checked
  # every few seconds), beside the evaluations, instead of after them on one core; a model left by an earlier
  # run may be about to be replaced, so it waits for this run's marker, not for the file
  _invariance_once_trained() {
    local m
    for m in "${names[@]}"; do
      while [ ! -f "$exproot/$m/.demo-ready" ]; do
        kill -0 "$pipelines_pid" 2>/dev/null || { echo "no model from $m: its fine-tuning failed"; return 1; }
        sleep 5
      done
    done
    lower_priority
    score-invariance "${invariance[@]}" --split "$librispeech/test-clean" --out "$out" --banner "DEMO numbers on synthetic speech"
  }
  log "Stage 6: invariance to speed and pitch per layer on $librispeech/test-clean once every model is trained -> $out/invariance.{md,csv,png} (log: $exproot/invariance.out)"
  mkdir -p "$exproot"
  _invariance_once_trained > "$exproot/invariance.out" 2>&1 &
  local invariance_pid=$!
  log "Stage 4: SUPERB $tasks (seeds $seeds) for the starting model while the methods train -> $exproot/hubert"
  # in the background, then waited for: a subshell on the left of `||` would run with set -e ignored
  ( lower_priority; evaluate_model hubert score_hubert "$init" ) &
  wait $! || die "evaluation of the starting model failed (see above)"
  [ -z "$pipelines_pid" ] || wait "$pipelines_pid" || die "fine-tuning or evaluation of a method failed (see above)"
  EVALUATED+=" hubert ${names[*]}"
  run_models
  log "Stage 5: paired differences vs the starting model (seeds for PR, bootstrap over queries for QbE) -> $out/paired.{md,csv}"
  "$(score_python)" -m score_upstream.report.paired "$exproot/hubert" "${trained[@]}" --out "$out" \
    --groundtruth "$quesst_root/scoring/groundtruth_quesst14_eval" --banner "DEMO numbers on synthetic speech" >/dev/null \
    || die "paired differences failed (see above)"
  wait "$invariance_pid" || die "score-invariance failed: see $exproot/invariance.out (last line: $(tail -n 1 "$exproot/invariance.out"))"
  cat <<EOF

==========================================================================================
 DEMO NUMBERS ON SYNTHETIC SPEECH: a 3M-parameter HuBERT pre-trained by this project on 3 h of
 espeak-ng speech, SCORE / LASER / SPIN fine-tuning scaled to it, CPU-sized downstream budgets. They
 show what the methods do at this scale and how the tables are made; they are not HuBERT Base / LibriSpeech /
 QUESST 2014 numbers.
==========================================================================================
EOF
  cat "$out/superb.md"
  cat "$out/paired.md"
  cat "$out/invariance.md"
  log "demo finished in $(( SECONDS - start )) s: $out/superb.{md,csv,png}, $out/paired.{md,csv}, $out/invariance.{md,csv,png}"
}

EVALUATED=        # models already evaluated by run_demo, skipped by run_models
share_features=false  # run_demo: the processes evaluating one model share hidden states on disk
asr_opts=()
pr_opts=()
results_opts=()
if [ "$demo" = true ]; then
  run_demo
else
  [ -n "$tasks" ] || tasks="asr pr qbe"
  [ -n "$librispeech" ] || librispeech=data/LibriSpeech
  [ -n "$quesst_root" ] || quesst_root=data/quesst14Database
  [ -n "$exproot" ] || exproot=exp/superb
  [ -n "$out" ] || out=results/superb
  [ -n "$device" ] || device=auto
  [ -n "$lexicon" ] || lexicon="$(dirname "$(abspath "$librispeech")")/librispeech-lexicon.txt"
  [ -n "$model" ] || die "missing models: pass --model NAME:UPSTREAM:CKPT (or --demo)"
  check_models
  launch_begin
  run_models
fi
