#!/usr/bin/env bash
# SUPERB query-by-example spoken term detection on QUESST 2014 (English): frozen upstream, one hidden
# layer at a time, subsequence DTW (s3prl `quesst14_dtw` scores, computed by score-qbe), MTWV by score-twv.
#
#   recipes/qbe.sh --upstream score_hubert --ckpt exp/score/score_hubert.pt \
#       --quesst-root data/quesst14Database --expdir exp/superb/score_hubert [--qbe-layer last]
#
# Protocol (docs/protocol.md): --qbe-layer best (SUPERB) searches every hidden layer on dev, keeps the best by
# dev MTWV and reports it on eval; --qbe-layer last / N reports a fixed layer (the SCORE authors use the last).
# The last layer's eval MTWV is reported beside the chosen one either way (SCORE moves only the last
# layers, which the best-layer protocol may not pick), each eval MTWV with a bootstrap interval over queries.
#
# Stages (--stage N --stop-stage M; a stage reruns when the content of its inputs changed (checkpoint bytes,
# upstream, layer protocol, QUESST tree), clearing what it wrote before, and is skipped otherwise; --force true
# redoes it):
#   1 data preparation: check the QUESST 2014 tree and its ground truth
#   2 dev search:       score-qbe + TWV on dev, every layer (or the fixed one) -> EXPDIR/qbe/dev/layer<L>/
#   3 test:             score-qbe on eval with the chosen and the last layer       -> EXPDIR/qbe/eval/layer<L>/
#   4 score:            TWV on eval, bootstrap intervals over queries              -> EXPDIR/qbe/qbe_result.json
#
# Options (default in brackets):
#   --upstream NAME       s3prl upstream name: score_hubert, hubert_local, ... [hubert_local]
#   --ckpt PATH           upstream checkpoint [required]
#   --quesst-root DIR     quesst14Database folder (Audio/, dev_queries/, eval_queries/, scoring/); old name:
#                         --quesst [data/quesst14Database]
#   --expdir DIR          experiment dir of this model; QbE goes to EXPDIR/qbe [exp/superb/model]
#   --qbe-layer L         best (SUPERB: best dev layer), last, or a layer index (old name: --layer) [best]
#   --device DEV          cuda, cpu or auto [auto]
#   --official BOOL       also run the QUESST Java scorer (scoring/score-TWV-Cnxe.sh) when present [true]
#   --force BOOL          rerun stages already marked done [false]
#   --stage N / --stop-stage M   first and last stage to run [1 / 4]
#
# The checkpoint is checked by the project's safe readers before s3prl sees it (score_upstream/s3prl/vet.py).
set -euo pipefail
SCORE_RECIPE=qbe
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

stage=1            # first stage to run
stop_stage=4       # last stage to run
upstream=hubert_local   # s3prl upstream name
ckpt=              # upstream checkpoint
quesst_root=data/quesst14Database  # QUESST 2014 database folder
expdir=exp/superb/model       # experiment dir of this model
qbe_layer=best     # best | last | N
device=auto        # cuda | cpu | auto
official=true      # also run the official Java scorer when the database ships it
force=false        # rerun finished stages
OPTIONS="stage stop_stage upstream ckpt quesst_root expdir qbe_layer device official force"
ALIASES="layer=qbe_layer quesst=quesst_root"  # old names, accepted with a notice
parse_options "$@"
[ ${#ARGS[@]} -eq 0 ] || die "unexpected argument: ${ARGS[0]} (see --help)"
[[ "$qbe_layer" =~ ^(best|last|[0-9]+)$ ]] || die "--qbe-layer must be best, last or a layer index, got '$qbe_layer'"
layer="$qbe_layer"
# the checkpoint, read by our safe readers before any stage and before s3prl sees it
[ "$stop_stage" -lt 2 ] || [ "$stage" -gt 3 ] || { require_ckpt "$ckpt"; vet_ckpt "$upstream" "$ckpt"; }

recipe_paths qbe
quesst_root="$(abspath "$quesst_root")"
protocol=best-dev-layer
[ "$layer" = best ] || protocol=fixed-layer

# score_split SPLIT: TWV of every searched layer of SPLIT (score-twv's code; the Java tool too if asked).
score_split() {
  local split="$1" gt="$quesst_root/scoring/groundtruth_quesst14_$1" d
  # score-twv's computation for all layers in one process (one interpreter start instead of 13)
  "$py" -m score_upstream.s3prl.superb.qbe.protocol score "$dir/$split" "$gt" | tee "$dir/$split/twv.log" \
    || exit 2  # the scorer printed one error line
  if [ "$official" = true ] && [ -f "$quesst_root/scoring/score-TWV-Cnxe.sh" ]; then
    for d in "$dir/$split"/layer[0-9]*; do
      "$py" -c 'import sys; from score_upstream.qbe.twv import run_official_scorer as r; print(r(sys.argv[1], sys.argv[2], sys.argv[3]))' \
        "$d" "$quesst_root/scoring" "groundtruth_quesst14_$split" > "$d/official.log" 2>&1 \
        || log "official scorer failed on $d (see $d/official.log); keeping score-twv's numbers"
    done
  fi
}

stage_prepare() {
  require_dir "$quesst_root" "QUESST 2014 database (--quesst-root)" "the quesst14Database folder, or generate one with score-synth"
  "$py" -m score_upstream.s3prl.superb.qbe.prepare "$quesst_root" || exit 2  # it printed one error line
}

stage_dev() {
  resolve_device
  require_ckpt "$ckpt"
  stage_done 1 || die "missing checked QUESST tree (stage 1 did not finish): run with --stage 1"
  local layers="$layer" last
  last="$("$py" -m score_upstream.s3prl.superb.qbe.protocol last-layer "$ckpt")" || exit 2
  printf '%s\n' "$last" > "$dir/last_layer.txt"
  case "$layer" in
    best) layers=all ;;
    last) layers="$last" ;;
  esac
  rm -rf "$dir/dev"
  run_logged "$dir/dev.log" score-qbe --upstream "$upstream" --ckpt "$ckpt" --quesst-root "$quesst_root" \
    --split dev --layers "$layers" --device "$device" --out "$dir/dev"
  score_split dev
  "$py" -m score_upstream.s3prl.superb.qbe.protocol select "$dir/dev" > "$dir/dev_layer.txt" \
    || exit 2
}

stage_eval() {
  resolve_device
  stage_done 2 || die "missing dev layer selection in $dir (stage 2 did not finish): rerun with --stage 2"
  require_file "$dir/dev_layer.txt" "chosen dev layer" "rerun with --stage 2"
  require_file "$dir/last_layer.txt" "last layer index" "rerun with --stage 2"
  local chosen last layers; chosen="$(cat "$dir/dev_layer.txt")"; last="$(cat "$dir/last_layer.txt")"
  layers="$chosen"
  [ "$last" = "$chosen" ] || layers="$chosen,$last"
  log "layer $chosen ($protocol) and the last layer $last"
  rm -rf "$dir/eval"
  run_logged "$dir/eval.log" score-qbe --upstream "$upstream" --ckpt "$ckpt" --quesst-root "$quesst_root" \
    --split eval --layers "$layers" --device "$device" --out "$dir/eval"
}

stage_score() {
  stage_done 3 || die "missing eval search output in $dir/eval (stage 3 did not finish): rerun with --stage 3"
  score_split eval
  "$py" -m score_upstream.s3prl.superb.qbe.protocol report "$dir" --layer "$(cat "$dir/dev_layer.txt")" \
    --last-layer "$(cat "$dir/last_layer.txt")" --protocol "$protocol" --quesst-root "$quesst_root" || exit 2
}

stage_inputs --tree "QUESST database=$quesst_root"
run_stage 1 "data preparation: $quesst_root" stage_prepare
stage_inputs --value "upstream=$upstream" --file "upstream checkpoint=$ckpt" --value "layer=$layer"
# a stage's outputs include what later stages derived from them: no result of older inputs stays behind
stage_outputs "$dir/dev" "$dir/dev.log" "$dir/dev_layer.txt" "$dir/last_layer.txt" "$dir/eval" "$dir/eval.log" \
  "$dir/qbe_result.json"
run_stage 2 "dev search: $upstream $ckpt, layers $layer + $quesst_root dev -> $dir/dev" stage_dev
# the eval search reads the checkpoint again: its content is part of this stage's key too
stage_inputs --value "upstream=$upstream" --file "upstream checkpoint=$ckpt"
stage_outputs "$dir/eval" "$dir/eval.log" "$dir/qbe_result.json"
run_stage 3 "test: chosen and last layer + $quesst_root eval -> $dir/eval" stage_eval
stage_inputs --value "official scorer=$official"
stage_outputs "$dir/qbe_result.json"
run_stage 4 "score: $dir/{dev,eval} -> $dir/qbe_result.json" stage_score
log "done: $dir"
