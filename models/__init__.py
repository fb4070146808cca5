"""The InternVL2 engine: checkpoint loading and conversion, preprocessing, prompts, generation.

Knows nothing about jobs, HTTP, Celery or SQL. Importing this package does not import torch;
the submodules that need it import it themselves.
"""
