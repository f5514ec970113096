"""Parallax notary: server, prober, store and the pure protocol core (notary.core)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
