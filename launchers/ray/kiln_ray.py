"""Run a kiln pipeline on a Ray cluster: prepare once, one Ray task per
kiln slot (`kiln run --task I --tasks N --no-commit`), then commit.

    python kiln_ray.py PIPELINE OUTPUT TASKS [--address ADDR] [--num-cpus N]
                       [--retries R] [--kiln PATH] [-- MORE_KILN_RUN_ARGS...]

Slots whose tasks all have a marker already (`kiln status`) are skipped, so
rerunning the driver after a failure redoes only what is missing. A slot
that exits with kiln's retriable code (3: I/O, the store) is retried by Ray
up to R times; a slot that exits with 2 (a bad pipeline, another plan in
the output) fails the job at once. OUTPUT should be a URL (s3://, gs://,
az://) or a folder every node sees; each node needs kiln and the pipeline
file at the same paths, and the store's credentials in its environment.
"""
import argparse
import json
import subprocess
import sys

import ray


class Retriable(Exception):
    """kiln exited with 3: worth another try."""


class Fatal(Exception):
    """kiln exited with 2 (or died): trying again will not help."""


def kiln(cmd, check=True):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise (Retriable if r.returncode == 3 else Fatal)(
            f"{' '.join(cmd)} exited with {r.returncode}: {r.stderr.strip()}")
    return r


@ray.remote(retry_exceptions=[Retriable])
def slot(binary, pipeline, output, i, n, extra):
    kiln([binary, "run", pipeline, "--output", output, "--task", str(i), "--tasks", str(n),
          "--no-commit", "-q", *extra])
    return i


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("pipeline")
    p.add_argument("output")
    p.add_argument("tasks", type=int)
    p.add_argument("--address", help="a running cluster (default: start a local one)")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local cluster")
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--kiln", default="kiln", help="the kiln binary on every node")
    a = p.parse_args(argv)
    if a.tasks < 1:
        p.error("TASKS must be at least 1")

    kiln([a.kiln, "run", a.pipeline, "--output", a.output, "--prepare", "-q", *extra])
    status = json.loads(kiln([a.kiln, "status", a.output, "--tasks", str(a.tasks)]).stdout)
    todo = [] if status["committed"] else status["missing_slots"]
    print(f"kiln-ray: {len(todo)} of {a.tasks} slots to run: {todo}", file=sys.stderr)
    if todo:
        ray.init(address=a.address, num_cpus=a.num_cpus, include_dashboard=False,
                 log_to_driver=False)
        refs = [slot.options(max_retries=a.retries).remote(
            a.kiln, a.pipeline, a.output, i, a.tasks, extra) for i in todo]
        try:
            ray.get(refs)
        finally:
            ray.shutdown()
    r = kiln([a.kiln, "commit", a.output])
    print(r.stderr.strip(), file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except Fatal as e:
        sys.exit(f"kiln-ray: {e}")
    except ray.exceptions.RayTaskError as e:
        sys.exit(f"kiln-ray: a slot failed: {e}")
