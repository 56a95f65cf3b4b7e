#!/usr/bin/env python3
"""Run a command; print its wall time and peak resident memory (of the child
and its children) as `WALL <s>` and `PEAK_RSS_MB <MB>`."""

import resource
import subprocess
import sys
import time

t0 = time.perf_counter()
rc = subprocess.run(sys.argv[1:]).returncode
wall = time.perf_counter() - t0
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"WALL {wall:.3f}")
print(f"PEAK_RSS_MB {peak_kb / 1024:.1f}")
sys.exit(rc)
