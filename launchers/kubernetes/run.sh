#!/usr/bin/env bash
# Apply kiln-job.yaml's Jobs in order, waiting for each: prepare, the
# Indexed Job of tasks, commit.   run.sh [kiln-job.yaml] [TIMEOUT, default 24h]
set -euo pipefail
manifest=${1:-$(dirname "$0")/kiln-job.yaml}
timeout=${2:-24h}
job() {
    # The named Job alone, then wait for it (a failed Job ends the wait
    # only at the timeout: watch `kubectl get jobs`).
    kubectl create -f <(awk -v name="$1" 'BEGIN{RS="\n---\n"} $0 ~ "name: " name "\n" {print}' "$manifest")
    kubectl wait --for=condition=complete "job/$1" --timeout="$timeout"
}
kubectl apply -f <(awk 'BEGIN{RS="\n---\n"} /kind: ConfigMap/ {print}' "$manifest")
job kiln-prepare
job kiln-tasks
job kiln-commit
