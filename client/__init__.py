"""Parallax client."""
