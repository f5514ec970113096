"""``parallax helper ...`` commands (being built)."""

from __future__ import annotations

from typing import Any

__all__ = ["add_helper_commands"]


def add_helper_commands(sub: Any) -> None:
    """Register ``parallax helper`` subcommands."""
