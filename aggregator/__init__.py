"""aggregator: a self-hosted RSS/Atom feed aggregator."""

__version__ = "0.1.0"
