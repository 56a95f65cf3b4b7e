#!/usr/bin/env bash
# Run a kiln pipeline as a Slurm job: prepare once, an array of TASKS slots
# (at most PARALLEL running at a time), then commit. Before committing, the
# commit job asks `kiln status` which slots have unfinished tasks and
# resubmits just those (up to KILN_SLURM_ROUNDS rounds, default 3), followed
# by another commit job.
#
#   kiln-slurm.sh PIPELINE OUTPUT TASKS [PARALLEL] [-- SBATCH_OPTION...]
#
#   kiln-slurm.sh pipelines/text.toml s3://bucket/datasets/text 64 16 -- --partition=cpu --cpus-per-task=8
#
# OUTPUT is a URL (s3://, gs://, az://) or a folder every node sees. The
# slot count is passed to every task (`--tasks TASKS`): a resubmitted index
# reads its own number from SLURM_ARRAY_TASK_ID but not the job's size.
# Environment: KILN (the kiln binary, default `kiln` on PATH), KILN_ARGS
# (more `kiln run` arguments, such as "--threads 8"), the store's
# credentials (AWS_*, ...), which sbatch passes on to the jobs.
# Prints the ids of the jobs it submitted.
set -euo pipefail

KILN=${KILN:-kiln}
ROUNDS=${KILN_SLURM_ROUNDS:-3}
self=$(readlink -f "$0")

usage() {
    sed -n '2,20p' "$self" >&2
    exit 2
}

# A command line for --wrap, each word quoted for the shell.
quoted() {
    local out="" w
    for w in "$@"; do out+=" $(printf '%q' "$w")"; done
    printf '%s' "${out# }"
}

# sbatch with the user's options; prints the job id.
submit() {
    sbatch --parsable --kill-on-invalid-dep=yes "${SBATCH_OPTS[@]}" "$@"
}

# The array of slots $1 (an --array list), then the commit step of round $2.
submit_round() {
    local slots=$1 round=$2 array
    # shellcheck disable=SC2086
    array=$(submit --job-name=kiln-tasks --array="$slots%$PARALLEL" \
        ${DEPENDS:+--dependency=afterok:$DEPENDS} \
        --wrap="$(quoted "$KILN" run "$PIPELINE" --output "$OUTPUT" --task-from-env \
            --tasks "$TASKS" --no-commit -q) $KILN_ARGS")
    echo "kiln-slurm: tasks $array (slots $slots, round $round)" >&2
    commit=$(submit --job-name=kiln-commit --dependency="afterany:$array" \
        --wrap="$(quoted "$self" commit-step "$PIPELINE" "$OUTPUT" "$TASKS" "$PARALLEL" "$round" -- "${SBATCH_OPTS[@]}")")
    echo "kiln-slurm: commit $commit" >&2
    echo "$array $commit"
}

parse() {
    [ $# -ge 3 ] || usage
    PIPELINE=$(readlink -f "$1")
    OUTPUT=$2
    TASKS=$3
    shift 3
    PARALLEL=$TASKS
    if [ $# -gt 0 ] && [ "$1" != "--" ]; then
        PARALLEL=$1
        shift
    fi
    [ $# -gt 0 ] && [ "$1" = "--" ] && shift
    SBATCH_OPTS=("$@")
    case $OUTPUT in
        *://*) ;;
        *) OUTPUT=$(readlink -m "$OUTPUT") ;;
    esac
    KILN_ARGS=${KILN_ARGS:-}
    [[ $TASKS =~ ^[1-9][0-9]*$ ]] || { echo "kiln-slurm: TASKS must be a positive number" >&2; exit 2; }
    [[ $PARALLEL =~ ^[1-9][0-9]*$ ]] || { echo "kiln-slurm: PARALLEL must be a positive number" >&2; exit 2; }
}

if [ "${1:-}" = commit-step ]; then
    # Run by the commit job: commit if every slot is done, else resubmit
    # the failed slots and a new commit step.
    shift
    args=("$@")
    parse "${args[0]}" "${args[1]}" "${args[2]}" "${args[3]}" "${args[@]:5}"
    round=${args[4]}
    missing=$("$KILN" status "$OUTPUT" --tasks "$TASKS" --missing-slots)
    if [ -z "$missing" ]; then
        exec "$KILN" commit "$OUTPUT"
    fi
    if [ "$round" -ge "$ROUNDS" ]; then
        echo "kiln-slurm: slots $missing still unfinished after $round rounds; see their logs" >&2
        exit 1
    fi
    DEPENDS=""
    submit_round "$missing" $((round + 1)) >/dev/null
    exit 0
fi

parse "$@"
prepare=$(submit --job-name=kiln-prepare \
    --wrap="$(quoted "$KILN" run "$PIPELINE" --output "$OUTPUT" --prepare -q) $KILN_ARGS")
echo "kiln-slurm: prepare $prepare" >&2
DEPENDS=$prepare
read -r array commit < <(submit_round "0-$((TASKS - 1))" 1)
echo "$prepare $array $commit"
