#!/usr/bin/env bash
# SUPERB phoneme recognition (s3prl `ctc` downstream, libriphone): frozen upstream, weighted sum of
# hidden states, Linear(D, 256) then a linear CTC head over 71 phones, best on dev-clean, PER on test-clean.
#
#   recipes/pr.sh --upstream score_hubert --ckpt exp/score/score_hubert.pt --librispeech data/LibriSpeech \
#       --lexicon "data/librispeech-lexicon.txt data/g2p-lexicon.txt" --expdir exp/superb/score_hubert \
#       [--seeds "0 1 2"]
#
# Stages (--stage N --stop-stage M; a stage reruns when the content of its inputs changed, clearing what it
# wrote before, and is skipped otherwise; --force true redoes it); stages 2-4 run once per downstream seed,
# into EXPDIR/pr/seed<S>/ (with --lrs of several rates: once per rate and seed, into EXPDIR/pr/lr<LR>/seed<S>/);
# EXPDIR/pr/manifest.json lists the seeds of the last run (score-results: mean and sd) and, for a sweep, the
# rate chosen on dev (lowest mean over seeds of the best dev PER) whose test PER the tables report:
#   1 data preparation: check LibriSpeech + lexicon, resolve the config -> EXPDIR/pr/data/config.yaml
#   2 train:            score-s3prl -m train -d ctc --seed S            -> EXPDIR/pr/seed<S>/dev-best.ckpt
#   3 test:             score-s3prl -m evaluate -t test                 -> EXPDIR/pr/seed<S>/test.log
#   4 score:            test PER                                        -> EXPDIR/pr/seed<S>/result.json
#
# Options (default in brackets):
#   --upstream NAME       s3prl upstream name: score_hubert, hubert_local, ... [hubert_local]
#   --ckpt PATH           upstream checkpoint passed as -k [required]
#   --librispeech DIR     LibriSpeech root with train-clean-100/ dev-clean/ test-clean/ [data/LibriSpeech]
#   --lexicon "P1 P2"     lexicon files, earlier ones win: the OpenSLR 11 librispeech-lexicon.txt, then
#                         optional g2p lexicons for the words it lacks; repeatable (one file each, for paths
#                         with spaces) [LIBRISPEECH/../librispeech-lexicon.txt]
#   --expdir DIR          experiment dir of this model; PR goes to EXPDIR/pr [exp/superb/model]
#   --config PATH         base downstream config [score_upstream/s3prl/superb/pr/config.yaml]
#   --device DEV          cuda, cpu or auto [auto]
#   --seeds "S1 S2"       downstream seeds (s3prl --seed), one training run each; 1337 is s3prl's default [1337]
#   --jobs N              seeds run at the same time, each with its share of the cores [1]
#   --layer N             train on hidden state N only (0 = CNN output); empty = SUPERB's weighted sum of all []
#   --lr LR               Adam learning rate; s3prl's default is 1e-2, the SCORE authors use 5e-4 [5e-4]
#   --lrs "LR1 LR2"       learning rates to sweep (SUPERB chooses each downstream's on dev), over --lr; one
#                         value behaves as --lr []
#   --run-lr LR           of --lrs, run only LR (one job per rate under SLURM; stage 4 with all rates chooses) []
#   --max-steps N         training updates (also sets eval/save steps to N); empty = config's 100k []
#   --batch-size N        utterances per batch; empty = config's 16 []
#   --num-workers N       DataLoader worker processes [2]
#   -o OVERRIDE           s3prl override, repeatable: -o config.runner.gradient_accumulate_steps=1 (no paths:
#                         s3prl splits it on ,, and = and evaluates each value) [none]
#   --force BOOL          rerun stages already marked done [false]
#   --stage N / --stop-stage M   first and last stage to run [1 / 4]
#
# The checkpoint is checked by the project's safe readers before s3prl sees it (score_upstream/s3prl/vet.py).
# Method and protocol: docs/protocol.md.
set -euo pipefail
SCORE_RECIPE=pr
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

stage=1            # first stage to run
stop_stage=4       # last stage to run
upstream=hubert_local   # s3prl upstream name (-u)
ckpt=              # upstream checkpoint (-k)
librispeech=data/LibriSpeech  # LibriSpeech root
lexicon=           # lexicon files (space separated); empty = LIBRISPEECH/../librispeech-lexicon.txt
expdir=exp/superb/model       # experiment dir of this model
config=            # base downstream config; empty = packaged pr/config.yaml
device=auto        # cuda | cpu | auto
seeds=1337         # downstream seeds, one run each (s3prl's default seed is 1337)
jobs=1             # seeds trained at the same time
layer=             # one hidden state (s3prl -l); empty = weighted sum of all (SUPERB)
lr=5.0e-4          # Adam learning rate (SCORE authors)
lrs=               # learning rates to sweep, chosen on dev; empty = --lr alone
run_lr=            # of --lrs, run only this rate
max_steps=         # training updates; empty = the config's
batch_size=        # batch size; empty = the config's
num_workers=2      # DataLoader worker processes
overrides=         # s3prl overrides collected from -o
force=false        # rerun finished stages
OPTIONS="stage stop_stage upstream ckpt librispeech lexicon expdir config device seeds jobs layer lr lrs run_lr max_steps batch_size num_workers force"
LIST_OPTIONS="lexicon"
parse_options "$@"
[ ${#ARGS[@]} -eq 0 ] || die "unexpected argument: ${ARGS[0]} (see --help)"
check_seeds
check_lrs
check_count max_steps batch_size num_workers jobs

recipe_paths pr
librispeech="$(abspath "$librispeech")"
# lexicon files: each --lexicon value is one file when it names one (spaces and all), else a list split on spaces
lexicons=()
if [ -z "$lexicon" ]; then
  lexicons=("$(dirname "$librispeech")/librispeech-lexicon.txt")
else
  while IFS= read -r value; do
    [ -n "$value" ] || continue
    read -ra parts <<< "$value"
    whole=true
    if [ ! -e "$value" ]; then for part in "${parts[@]}"; do [ -e "$part" ] && whole=false; done; fi
    if [ "$whole" = true ]; then lexicons+=("$value"); else lexicons+=("${parts[@]}"); fi
  done <<< "$lexicon"
fi
for i in "${!lexicons[@]}"; do lexicons[i]="$(abspath "${lexicons[i]}")"; done
[ -n "$config" ] || config="$("$py" -c 'from score_upstream.s3prl.superb import asset_path; print(asset_path("pr/config.yaml"))')"
# the checkpoint, read by our safe readers before any stage and before s3prl sees it
[ "$stop_stage" -lt 2 ] || [ "$stage" -gt 3 ] || { require_ckpt "$ckpt"; vet_ckpt "$upstream" "$ckpt"; }
lexicon_hint="get librispeech-lexicon.txt from OpenSLR 11 (https://www.openslr.org/11/) plus optional g2p lexicons (librispeech-lexicon-200k-g2p.txt, librispeech-lexicon-allothers-g2p.txt) and pass them with --lexicon"

stage_prepare() {
  require_dir "$librispeech" "LibriSpeech root (--librispeech)" "download LibriSpeech from OpenSLR 12 or generate one with score-synth"
  local lex
  for lex in "${lexicons[@]}"; do
    require_file "$lex" "lexicon (--lexicon)" "$lexicon_hint"
  done
  [ ${#lexicons[@]} -gt 0 ] || die "missing lexicon (--lexicon): $lexicon_hint"
  local args=(--librispeech "$librispeech" --lexicon "${lexicons[@]}" --out "$dir/data/config.yaml" --config "$config")
  "$py" -m score_upstream.s3prl.superb.pr.prepare "${args[@]}" || exit 2  # it printed one error line
}

stage_train() {
  resolve_device
  require_ckpt "$ckpt"
  stage_done 1 || die "missing resolved config $dir/data/config.yaml (stage 1 did not finish): run with --stage 1"
  require_file "$dir/data/config.yaml" "resolved PR config of stage 1" "run with --stage 1"
  train_downstream ctc "$dir/data/config.yaml" corpus "" "$settings"
}

stage_test() {
  resolve_device
  stage_done 2 || die "missing finished training run in $run_dir (no stage-2 marker): the train stage did not finish; rerun with --stage 2"
  require_file "$run_dir/dev-best.ckpt" "best-on-dev checkpoint" "the train stage did not evaluate on dev; rerun with --stage 2"
  run_logged "$run_dir/test.log" score-s3prl -m evaluate -e "$run_dir/dev-best.ckpt" -t test --device "$device"
}

stage_score() {
  require_file "$run_dir/test.log" "test output" "the test stage did not run; rerun with --stage 3"
  score_log "$run_dir/test.log" per "$run_dir/result.json"
}

lexicon_inputs=()
for lex in "${lexicons[@]}"; do lexicon_inputs+=(--file "lexicon $((${#lexicon_inputs[@]} / 2 + 1))=$lex"); done
stage_inputs --tree "train-clean-100=$librispeech/train-clean-100" --tree "dev-clean=$librispeech/dev-clean" \
  --tree "test-clean=$librispeech/test-clean" --file "base config=$config" ${lexicon_inputs[@]+"${lexicon_inputs[@]}"}
stage_outputs "$dir/data"
run_stage 1 "data preparation: $librispeech + [${lexicons[*]}] -> $dir/data/config.yaml" stage_prepare
# stages 2-4 of one run (run_paths has set lr and seed); stages 3 and 4 depend on stage 2 through its key
run_seed() {
  settings="$(downstream_settings corpus "config.optimizer.lr=$lr")"  # s3prl overrides that decide the result
  stage_inputs --value "upstream=$upstream" --file "upstream checkpoint=$ckpt" \
    --file "downstream config=$dir/data/config.yaml" --value "settings=$settings" --value "seed=$seed" \
    --value "layer=${layer:-weighted sum}"
  stage_outputs "$run_dir"
  run_stage 2 "train (seed $seed, lr $lr${layer:+, layer $layer}): $upstream $ckpt + train-clean-100 -> $run_dir" stage_train
  stage_outputs "$run_dir/test.log" "$run_dir/test-hyp.ark" "$run_dir/test-ref.ark" "$run_dir/result.json"
  run_stage 3 "test: $run_dir/dev-best.ckpt + test-clean -> $run_dir/test.log" stage_test
  stage_outputs "$run_dir/result.json"
  run_stage 4 "score: $run_dir/test.log -> $run_dir/result.json" stage_score
}
for_each_run run_seed
write_manifest pr
log "done: $dir/$([ "$sweep" != true ] || echo 'lr<LR>/')seed<S> for seeds $seeds${lrs:+, lr $lrs} (manifest: $dir/manifest.json)"
