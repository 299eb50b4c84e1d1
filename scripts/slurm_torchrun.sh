#!/usr/bin/env bash
# torchrun across the nodes of one Slurm allocation, for the native trainer:
#   srun --ntasks-per-node=1 scripts/slurm_torchrun.sh -m posttrain.cli train --dataset ... --output ...
# One task per node starts torchrun with one process per GPU of its node; the first node of the
# allocation hosts the c10d rendezvous. Used as the train rule's `launcher` resource in a
# multi-node Slurm profile (see profiles/slurm/profile.yaml). Arguments are passed to torchrun.
# Tested: rendezvous host / node count / rank derivation on a single-node local Slurm cluster;
# a real multi-node run is not (no such cluster here).
set -euo pipefail
: "${SLURM_JOB_NODELIST:?run inside a Slurm allocation (srun)}"
head_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
nodes="${SLURM_NNODES:-1}"
node_rank="${SLURM_NODEID:-0}"
# GPUs of this node: what Slurm exposes (CUDA_VISIBLE_DEVICES=0,1,...) else SLURM_GPUS_ON_NODE
if [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    gpus="$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c .)"
else
    gpus="${SLURM_GPUS_ON_NODE:-1}"
fi
port="${POSTTRAIN_RDZV_PORT:-29500}"
echo "slurm_torchrun: node $node_rank/$nodes, $gpus process(es), rendezvous $head_node:$port" >&2
exec torchrun --nnodes="$nodes" --node_rank="$node_rank" --nproc_per_node="$gpus" \
    --rdzv_backend=c10d --rdzv_endpoint="$head_node:$port" --rdzv_id="${SLURM_JOB_ID:-posttrain}" "$@"
