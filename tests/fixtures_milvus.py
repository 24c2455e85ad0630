"""Fixtures: milvus (filled in by the milvus part)."""
