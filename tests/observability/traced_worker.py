"""``captionq worker`` with OpenTelemetry's in-memory span exporter installed in its process.

The spans it finishes are written, as JSON lines, to the file named by ``CAPTIONQ_TEST_SPANS``
(rewritten every 0.2 s), where the test process reads them: the in-memory exporter lives in the
worker's own process, which a test can only see through a file. Everything else is the real
``captionq worker`` (``cli.main``) with the arguments given.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core import tracing

EXPORTER = InMemorySpanExporter()


def span_dict(span: object) -> dict[str, object]:
    ctx = span.context  # type: ignore[attr-defined]
    parent = span.parent  # type: ignore[attr-defined]
    return {"name": span.name, "trace_id": format(ctx.trace_id, "032x"),  # type: ignore[attr-defined]
            "span_id": format(ctx.span_id, "016x"),
            "parent_id": format(parent.span_id, "016x") if parent is not None else None,
            "start": span.start_time, "end": span.end_time,  # type: ignore[attr-defined]
            "attributes": dict(span.attributes or {})}  # type: ignore[attr-defined]


def dump_forever(path: Path) -> None:
    stop = threading.Event()
    while not stop.wait(0.2):
        lines = [json.dumps(span_dict(s)) for s in EXPORTER.get_finished_spans()]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        tmp.replace(path)


def main() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    tracing.use_provider(provider)
    spans = Path(os.environ["CAPTIONQ_TEST_SPANS"])
    threading.Thread(target=dump_forever, args=(spans,), daemon=True).start()
    from cli.main import main as captionq

    sys.argv = ["captionq", *sys.argv[1:]]
    captionq()


if __name__ == "__main__":
    main()
