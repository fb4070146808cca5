"""Loaded at start-up by the worker subprocess of ``bench/profile_job_path.py`` only (this folder
is put on its ``PYTHONPATH``): installs the worker-side trace hooks of ``bench/jobtrace.py``."""

import os
import sys

if os.environ.get("CAPTIONQ_TRACE_FILE"):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import jobtrace

    jobtrace.install("worker")
