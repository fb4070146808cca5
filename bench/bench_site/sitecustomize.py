"""Loaded at start-up by the worker subprocesses of the overhead benchmarks only (this folder is
put on their ``PYTHONPATH``; nothing else uses it):

- ``CAPTIONQ_TRACE_FILE`` set: installs the worker-side trace hooks of ``bench/jobtrace.py``
  (``bench/profile_job_path.py``);
- ``CAPTIONQ_BENCH_INSTANT_MODEL=1``: replaces the engine's network call with an instant answer
  (``bench/instant_model.py``; ``--model instant`` of the overhead benchmarks).
"""

import os
import sys

_here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
if os.environ.get("CAPTIONQ_TRACE_FILE") or os.environ.get("CAPTIONQ_BENCH_INSTANT_MODEL") == "1":
    sys.path.insert(0, _here)
if os.environ.get("CAPTIONQ_TRACE_FILE"):
    import jobtrace

    jobtrace.install("api" if "serve" in sys.argv else "worker")  # `captionq serve` or a worker
if os.environ.get("CAPTIONQ_BENCH_INSTANT_MODEL") == "1":
    import instant_model

    instant_model.install()
