"""Helpers shared by the tests, the demo and the benchmarks.

Nothing here is imported by the backend itself: these modules start real
servers (Prosody) on 127.0.0.1 for code that needs an XMPP peer.
"""
