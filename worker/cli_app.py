"""The Celery app for Celery's own command line, built from the environment (the CAPTIONQ_*
variables) when this module is imported:

    celery -A worker.cli_app flower          # Flower, from the workers' task events
    celery -A worker.cli_app inspect active  # what each worker runs now
    celery -A worker.cli_app events          # the task events in the terminal

Celery's ``-A`` takes a module attribute, not a factory: this module is that attribute's home.
It defines the tasks too (names, queues, routes), so these tools show them as the workers do.
"""

from __future__ import annotations

from worker.app import app_from_env

app = app_from_env()
