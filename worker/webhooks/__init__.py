"""Webhook delivery: Standard Webhooks signing, one guarded POST per attempt, retries with backoff.

``signing`` and ``schedule`` are pure; ``sender`` makes one HTTP attempt; ``delivery`` claims a
message, sends, records the attempt and decides what happens next; ``tasks`` is the thin Celery
task on the ``io`` queue. See docs/webhooks.md.
"""
