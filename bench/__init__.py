"""Benchmarks of the pubsub cache against live XMPP servers and the database floor.

``python -m bench`` (``make bench``) runs the suite and writes
doc/benchmarks.md; ``python -m bench.profile`` profiles the missed targets.
The suite is not part of ``make test``.
"""
