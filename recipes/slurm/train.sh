#!/usr/bin/env bash
# SCORE / LASER / SPIN fine-tuning across nodes under SLURM: srun starts one torchrun agent per task (one task per
# node), the agents meet through torchrun's c10d rendezvous on the job's first node, and each starts
# SCORE_NPROC_PER_NODE training processes (default: the GPUs SLURM gave the node, else 1).
#
#   sbatch --nodes 2 --gpus-per-node 8 --cpus-per-task 64 --time 04:00:00 recipes/slurm/train.sh \
#       recipes/score/hubert_base.yaml --data /data/LibriSpeech --out exp/score_2nodes \
#       model.init=/models/hubert_base_ls960.pt
#
# Arguments are score-train's (config, --data, --out, key=value overrides); resume=auto is added, so a job
# that SLURM requeues (preemption, node failure; --requeue is on) or that is submitted again continues from
# the newest state-NNNNNN.pt of --out. Every update's utterances are split across all processes (the
# update is the same as on one process: score_upstream.training.train), so 2 nodes x 8 GPUs train the
# recipe's updates 16-way. Logs: score-train.JOBID.out in the submit folder (sbatch --output overrides).
# Environment: SCORE_NPROC_PER_NODE (training processes per agent), SCORE_MASTER_PORT (rendezvous port;
# default 20000 + job id mod 20000), SCORE_PY (the Python with this package; default: python3 on PATH, the
# environment sbatch was called from). Two agents on one machine (--ntasks-per-node 2) train on CPU with
# gloo: how the tests check it on a one-node cluster.
#SBATCH --job-name=score-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --requeue
#SBATCH --output=score-train.%j.out
set -euo pipefail

if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then
  awk 'NR == 1 { next } /^#SBATCH/ { exit } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"
  exit 0
fi
if [ -z "${SLURM_JOB_ID:-}" ]; then
  echo "error: train.sh: not inside a SLURM job; submit it with sbatch (see the comment at the top of $0)" >&2
  exit 2
fi
[ $# -ge 1 ] || { echo "error: train.sh: missing score-train arguments (CONFIG --data DIR --out DIR ...)" >&2; exit 2; }
py="${SCORE_PY:-$(command -v python3)}"
# the rendezvous runs on the first node of the allocation (torchrun's c10d backend hosts its store there)
master="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
port="${SCORE_MASTER_PORT:-$(( 20000 + SLURM_JOB_ID % 20000 ))}"
agents="${SLURM_NTASKS:-$SLURM_JOB_NUM_NODES}"
nproc="${SCORE_NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}"
[ "$nproc" -ge 1 ] 2>/dev/null || nproc=1
# each training process gets its share of the task's CPUs
export OMP_NUM_THREADS=$(( ${SLURM_CPUS_PER_TASK:-1} / nproc > 0 ? ${SLURM_CPUS_PER_TASK:-1} / nproc : 1 ))
echo "[train.sh] job $SLURM_JOB_ID: $agents agent(s) x $nproc process(es), rendezvous $master:$port" >&2
srun --kill-on-bad-exit=1 "$py" -m torch.distributed.run --nnodes "$agents" --nproc-per-node "$nproc" \
  --rdzv-backend c10d --rdzv-endpoint "$master:$port" --rdzv-id "$SLURM_JOB_ID" --max-restarts 0 \
  -m score_upstream.training.train "$@" resume=auto
