"""The fault suite: every scenario of tests/faults/harness.py against one private stack, each
asserting 0 accepted jobs lost, 0 ended twice, and every job terminal < 60 s after the fault.

Small by default (a few dozen jobs per scenario, ~2-3 minutes on 2 cores); ``bash
scripts/faults.sh`` runs it at full scale (500 jobs, 20 SIGKILLs, 30 s outages) and writes the
figures to RELIABILITY.md.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults.harness import DEADLINE_AFTER_FAULT, FaultStack
from tests.faults.scenarios import SCENARIOS, record

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultStack]:
    stack = FaultStack(tmp_path_factory.mktemp("faults"))
    try:
        yield stack
    finally:
        stack.close()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_fault(fs: FaultStack, name: str) -> None:
    figures = SCENARIOS[name](fs)
    record(figures)
    print(figures.line())
    assert figures.lost == 0, (figures, fs.stack.logs())
    assert figures.ended_twice == 0, figures
    # Every job terminal < 60 s after the fault, beyond the work itself (the baseline's time).
    limit = DEADLINE_AFTER_FAULT + (fs.work_seconds if name != "baseline" else 540.0)
    assert figures.recovered_seconds is not None and figures.recovered_seconds < limit, figures
    assert figures.webhooks_pending in (None, 0), figures
    # No scenario here is a reason for a job to fail: each fault is transient.
    assert figures.failed == 0, figures
