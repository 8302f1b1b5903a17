#!/usr/bin/env bash
# SUPERB ASR (s3prl `asr` downstream): frozen upstream, weighted sum of hidden states, 2-layer BLSTM,
# character CTC on LibriSpeech train-clean-100, best on dev-clean, WER on test-clean.
#
#   recipes/asr.sh --upstream score_hubert --ckpt exp/score/score_hubert.pt \
#       --librispeech data/LibriSpeech --expdir exp/superb/score_hubert [--device cuda] [--seeds "0 1 2"]
#
# Stages (--stage N --stop-stage M; a stage reruns when the content of its inputs changed, clearing what it
# wrote before, and is skipped otherwise; --force true redoes it); stages 2-4 run once per downstream seed,
# into EXPDIR/asr/seed<S>/ (with --lrs of several rates: once per rate and seed, into EXPDIR/asr/lr<LR>/seed<S>/);
# EXPDIR/asr/manifest.json lists the seeds of the last run (score-results: mean and sd) and, for a sweep, the
# rate chosen on dev (lowest mean over seeds of the best dev-clean WER) whose test WER the tables report:
#   1 data preparation: check LibriSpeech, write length files and the config with the data paths
#                                                                    -> EXPDIR/asr/data/{len/,config.yaml}
#   2 train:            score-s3prl -m train --seed S               -> EXPDIR/asr/seed<S>/dev-clean-best.ckpt
#   3 test:             score-s3prl -m evaluate -t test-clean       -> EXPDIR/asr/seed<S>/test-clean.log
#   4 score:            test WER                                    -> EXPDIR/asr/seed<S>/result.json
#
# Options (default in brackets):
#   --upstream NAME       s3prl upstream name: score_hubert, hubert_local, ... [hubert_local]
#   --ckpt PATH           upstream checkpoint passed as -k [required]
#   --librispeech DIR     LibriSpeech root with train-clean-100/ dev-clean/ test-clean/ [data/LibriSpeech]
#   --expdir DIR          experiment dir of this model; ASR goes to EXPDIR/asr [exp/superb/model]
#   --config PATH         downstream config [score_upstream/s3prl/superb/asr/config.yaml]
#   --device DEV          cuda, cpu or auto [auto]
#   --seeds "S1 S2"       downstream seeds (s3prl --seed), one training run each; 1337 is s3prl's default [1337]
#   --jobs N              seeds run at the same time, each with its share of the cores [1]
#   --layer N             train on hidden state N only (0 = CNN output); empty = SUPERB's weighted sum of all []
#   --lr LR               Adam learning rate; empty = the config's (SUPERB: 1e-4) []
#   --lrs "LR1 LR2"       learning rates to sweep (SUPERB chooses each downstream's on dev), over --lr; one
#                         value behaves as --lr []
#   --run-lr LR           of --lrs, run only LR (one job per rate under SLURM; stage 4 with all rates chooses) []
#   --max-steps N         training updates (also sets eval/save steps to N); empty = config's 200k []
#   --batch-size N        utterances per batch; empty = config's 32 []
#   --num-workers N       DataLoader worker processes [2]
#   -o OVERRIDE           s3prl override, repeatable: -o config.runner.gradient_clipping=1 (no paths: s3prl splits
#                         it on ,, and = and evaluates each value) [none]
#   --force BOOL          rerun stages already marked done [false]
#   --stage N / --stop-stage M   first and last stage to run [1 / 4]
#
# The checkpoint is checked by the project's safe readers before s3prl sees it (score_upstream/s3prl/vet.py).
# Method and protocol: docs/protocol.md.
set -euo pipefail
SCORE_RECIPE=asr
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

stage=1            # first stage to run
stop_stage=4       # last stage to run
upstream=hubert_local   # s3prl upstream name (-u)
ckpt=              # upstream checkpoint (-k)
librispeech=data/LibriSpeech  # LibriSpeech root
expdir=exp/superb/model       # experiment dir of this model
config=            # downstream config; empty = packaged asr/config.yaml
device=auto        # cuda | cpu | auto
seeds=1337         # downstream seeds, one run each (s3prl's default seed is 1337)
jobs=1             # seeds trained at the same time
layer=             # one hidden state (s3prl -l); empty = weighted sum of all (SUPERB)
lr=                # learning rate; empty = the config's (SUPERB: 1e-4)
lrs=               # learning rates to sweep, chosen on dev; empty = --lr alone
run_lr=            # of --lrs, run only this rate
max_steps=         # training updates; empty = the config's
batch_size=        # batch size; empty = the config's
num_workers=2      # DataLoader worker processes
overrides=         # s3prl overrides collected from -o
force=false        # rerun finished stages
OPTIONS="stage stop_stage upstream ckpt librispeech expdir config device seeds jobs layer lr lrs run_lr max_steps batch_size num_workers force"
parse_options "$@"
[ ${#ARGS[@]} -eq 0 ] || die "unexpected argument: ${ARGS[0]} (see --help)"
check_seeds
check_lrs
check_count max_steps batch_size num_workers jobs

recipe_paths asr
librispeech="$(abspath "$librispeech")"
[ -n "$config" ] || config="$("$py" -c 'from score_upstream.s3prl.superb import asset_path; print(asset_path("asr/config.yaml"))')"
dict_path="$("$py" -c 'from score_upstream.s3prl.superb import asset_path; print(asset_path("asr/char.dict"))')"
# the checkpoint, read by our safe readers before any stage and before s3prl sees it
[ "$stop_stage" -lt 2 ] || [ "$stage" -gt 3 ] || { require_ckpt "$ckpt"; vet_ckpt "$upstream" "$ckpt"; }

stage_prepare() {
  require_dir "$librispeech" "LibriSpeech root (--librispeech)" "download LibriSpeech from OpenSLR 12 or generate one with score-synth"
  local split
  for split in train-clean-100 dev-clean test-clean; do
    require_dir "$librispeech/$split" "LibriSpeech split $split"
  done
  "$py" -m score_upstream.s3prl.superb.lengths --librispeech "$librispeech" --out "$dir/data/len" \
    --splits train-clean-100 dev-clean test-clean
  # data paths go into the config file, never into s3prl's -o string (split on ,, and =, values evaluated)
  "$py" -m score_upstream.s3prl.superb.resolve "$config" "$dir/data/config.yaml" \
    --set "downstream_expert.datarc.libri_root=$librispeech" --set "downstream_expert.datarc.bucket_file=$dir/data/len" \
    --set "downstream_expert.datarc.dict_path=$dict_path" || exit 2  # it printed one error line
}

stage_train() {
  resolve_device
  require_ckpt "$ckpt"
  stage_done 1 || die "missing length files of stage 1 in $dir/data/len: run with --stage 1"
  require_file "$dir/data/config.yaml" "resolved ASR config of stage 1" "run with --stage 1"
  train_downstream asr "$dir/data/config.yaml" datarc "" "$settings"
}

# Best-on-dev checkpoint; the last one when dev never beat s3prl's initial best (a very short run).
test_checkpoint() {
  if [ -f "$run_dir/dev-clean-best.ckpt" ]; then
    echo "$run_dir/dev-clean-best.ckpt"
  else
    log "no dev-clean-best.ckpt in $run_dir (dev WER never improved on 100%); testing the last checkpoint"
    local f n best=-1 last=
    for f in "$run_dir"/states-*.ckpt; do  # the highest step, whatever characters the folder's path holds
      n="${f##*/states-}"; n="${n%.ckpt}"
      [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -gt "$best" ] && { best="$n"; last="$f"; }
    done
    printf '%s\n' "$last"
  fi
}

stage_test() {
  resolve_device
  stage_done 2 || die "missing finished training run in $run_dir (no stage-2 marker): the train stage did not finish; rerun with --stage 2"
  local best; best="$(test_checkpoint)"
  run_logged "$run_dir/test-clean.log" score-s3prl -m evaluate -e "$best" -t test-clean --device "$device"
}

stage_score() {
  require_file "$run_dir/test-clean.log" "test output" "the test stage did not run; rerun with --stage 3"
  score_log "$run_dir/test-clean.log" wer "$run_dir/result.json"
}

stage_inputs --tree "train-clean-100=$librispeech/train-clean-100" --tree "dev-clean=$librispeech/dev-clean" \
  --tree "test-clean=$librispeech/test-clean" --file "downstream config=$config" --file "character dictionary=$dict_path"
stage_outputs "$dir/data/len" "$dir/data/config.yaml"
run_stage 1 "data preparation: $librispeech -> $dir/data/{len,config.yaml}" stage_prepare
# stages 2-4 of one run (run_paths has set lr and seed); stages 3 and 4 depend on stage 2 through its key
run_seed() {
  settings="$(downstream_settings datarc ${lr:+"config.optimizer.lr=$lr"})"  # s3prl overrides that decide the result
  stage_inputs --value "upstream=$upstream" --file "upstream checkpoint=$ckpt" \
    --file "downstream config=$dir/data/config.yaml" --value "settings=$settings" --value "seed=$seed" \
    --value "layer=${layer:-weighted sum}"
  stage_outputs "$run_dir"
  run_stage 2 "train (seed $seed${lr:+, lr $lr}${layer:+, layer $layer}): $upstream $ckpt + $librispeech/train-clean-100 -> $run_dir" stage_train
  stage_outputs "$run_dir/test-clean.log" "$run_dir"/test-clean-*.ark "$run_dir/result.json"
  run_stage 3 "test: $run_dir (best on dev-clean) + test-clean -> $run_dir/test-clean.log" stage_test
  stage_outputs "$run_dir/result.json"
  run_stage 4 "score: $run_dir/test-clean.log -> $run_dir/result.json" stage_score
}
for_each_run run_seed
write_manifest asr
log "done: $dir/$([ "$sweep" != true ] || echo 'lr<LR>/')seed<S> for seeds $seeds${lrs:+, lr $lrs} (manifest: $dir/manifest.json)"
