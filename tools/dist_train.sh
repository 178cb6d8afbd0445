#!/usr/bin/env bash
# Train on several processes of this machine (or of several machines) with
# torchrun; every process runs tools/train.py --launcher pytorch.
#
#   tools/dist_train.sh CONFIG NPROC [train.py options]
#
# NPROC is the number of processes on this node: one per GPU, or any number
# on a CPU-only machine (gloo backend).  Multi-node: run it on every node
# with the same MASTER_ADDR/PORT, NNODES and this node's NODE_RANK.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG NPROC [train.py options]" >&2
    exit 2
fi
CONFIG=$1
NPROC=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
TOOLS=$(dirname "$0")

PYTHONPATH="$TOOLS/..${PYTHONPATH:+:$PYTHONPATH}" \
python -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --master_port="$PORT" \
    --nproc_per_node="$NPROC" \
    "$TOOLS/train.py" "$CONFIG" --launcher pytorch "${@:3}"
