"""The Libervia backend daemon and its plugins."""

__version__ = "0.1.0"
