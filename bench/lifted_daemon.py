"""Run the backend daemon with Twisted's per-stanza limits raised: ``python -m bench.lifted_daemon fg``.

Twisted 26.10 (the version installed here) closes an XML stream that
receives a stanza of more than 10 MiB or 100,000 elements
(``ExpatElementStream.maxStanzaSize`` and ``maxElementCount``). Prosody
0.12 has no RSM on pubsub items, so a full fetch of a node of about 8,000
of the benchmark's posts (12 elements each) or more exceeds the element
limit, and the backend's sync of that node fails. The sync figure runs this
daemon to measure what the sync of such nodes would cost once the backend
handles them. Every other figure runs the daemon unchanged.
"""

from __future__ import annotations

import sys

from twisted.words.xish import domish

from libervia.backend.__main__ import main

#: Limits large enough for a full fetch of a 100,000-item node (about 60 MB
#: and 1.3 million elements).
MAX_STANZA_SIZE = 1024 * 1024 * 1024
MAX_ELEMENT_COUNT = 100_000_000

for stream_class in (domish.ExpatElementStream, domish.SuxElementStream):
    stream_class.maxStanzaSize = MAX_STANZA_SIZE
    stream_class.maxElementCount = MAX_ELEMENT_COUNT

if __name__ == "__main__":
    sys.exit(main())
