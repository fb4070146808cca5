"""Test support shipped with the engine: tiny InternVL2 checkpoints in the original layout.

``write_test_checkpoint(directory, llm, *, seed=0, vision="300m", template=None) -> Path``
(exposed on the command line as ``captionq make-test-checkpoint DIR --llm ...``).
"""

from models.testing.checkpoint import write_test_checkpoint

__all__ = ["write_test_checkpoint"]
