"""Libervia: an XMPP client backend with a persistent pubsub cache."""
