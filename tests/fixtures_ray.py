"""Fixtures: ray (filled in by the ray part)."""
