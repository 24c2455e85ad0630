"""Fixtures: jina (filled in by the jina part)."""
