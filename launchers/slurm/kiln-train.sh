#!/usr/bin/env bash
#SBATCH --job-name=kiln-train
# Data-parallel `kiln train` as one Slurm job: one task a rank, started by
# srun, each with PyTorch's environment (RANK from SLURM_PROCID, WORLD_SIZE
# from SLURM_NTASKS, LOCAL_RANK from SLURM_LOCALID: the GPU a rank uses),
# rank 0 on the job's first node.
#
#   sbatch --nodes=2 --ntasks-per-node=4 --gpus-per-node=4 launchers/slurm/kiln-train.sh TRAIN.toml [kiln train args]
#   sbatch --ntasks=2 --cpus-per-task=8 launchers/slurm/kiln-train.sh TRAIN.toml
#
# The output folder must be one every node sees (checkpoints are written by
# rank 0, and with ZeRO by every rank). A job that failed (a node lost)
# resumes from its last checkpoint: submit it again with `--resume OUT` and
# the same number of tasks. Environment: KILN (the kiln binary, default
# `kiln` on PATH), MASTER_PORT (default derived from the job id).
set -euo pipefail
KILN=${KILN:-kiln}
: "${SLURM_JOB_ID:?run this with sbatch}"
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
MASTER_PORT=${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export MASTER_ADDR MASTER_PORT KILN
# A rank that fails ends the job's other tasks too (they fail fast anyway).
exec srun --kill-on-bad-exit=1 bash -c '
    export RANK=$SLURM_PROCID WORLD_SIZE=$SLURM_NTASKS LOCAL_RANK=$SLURM_LOCALID
    export LOCAL_WORLD_SIZE=${SLURM_NTASKS_PER_NODE:-$SLURM_NTASKS}
    if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then
        export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-$SLURM_CPUS_PER_TASK}
        export MATMUL_NUM_THREADS=${MATMUL_NUM_THREADS:-$SLURM_CPUS_PER_TASK}
    fi
    exec "$KILN" train "$@"' kiln-train "$@"
