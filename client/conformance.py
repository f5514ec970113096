"""``parallax conformance URL``: check that a live notary speaks the protocol correctly (placeholder, being built)."""

from __future__ import annotations

from typing import Any

__all__ = ["add_conformance_command"]


def add_conformance_command(sub: Any) -> None:
    """Register ``parallax conformance`` (filled in by the conformance work)."""
