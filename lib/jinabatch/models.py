"""What each Jina embedding model accepts: caps, dimensions, tasks, request fields.

One table read by the config (to check ``[jina]`` against the model), the client (to pack requests and send only
accepted fields) and the local server (to validate like the real API). It sits at the top of the package and
imports nothing of it, so every side reads it without a loop. Figures are the public ones (docs/architecture.md).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelSpec", "MODELS", "get_model", "EMBEDDING_TYPES"]

EMBEDDING_TYPES = ("float", "base64", "binary", "ubinary")

_V3_TASKS = ("retrieval.query", "retrieval.passage", "separation", "classification", "text-matching")
_V4_TASKS = ("retrieval.query", "retrieval.passage", "text-matching", "code.query", "code.passage")


@dataclass(frozen=True)
class ModelSpec:
    """What one model accepts."""

    name: str
    max_inputs: int  # inputs per request
    max_tokens: int  # tokens per input (and per request under late chunking)
    default_dim: int
    dims: tuple[int, ...]  # accepted `dimensions`; () = fixed at default_dim
    tasks: tuple[str, ...]  # accepted `task`; () = the model takes no task
    late_chunking: bool  # accepts `late_chunking`

    @property
    def takes_task(self) -> bool:
        """True if the request may carry ``task``."""
        return bool(self.tasks)

    @property
    def takes_dimensions(self) -> bool:
        """True if the request may carry ``dimensions``."""
        return bool(self.dims)

    def fields(self) -> frozenset[str]:
        """Request body fields this model accepts (anything else gets a 422)."""
        f = {"model", "input", "embedding_type", "normalized", "truncate"}
        if self.tasks:
            f.add("task")
        if self.dims:
            f.add("dimensions")
        if self.late_chunking:
            f.add("late_chunking")
        return frozenset(f)

    def check_dimensions(self, dimensions: int | None) -> int:
        """The output dimension for a requested `dimensions`; ValueError if not accepted."""
        if dimensions is None:
            return self.default_dim
        if not self.dims:
            if dimensions != self.default_dim:
                raise ValueError(f"{self.name} has a fixed dimension of {self.default_dim}; got {dimensions}")
            return dimensions
        if dimensions not in self.dims:
            raise ValueError(f"{self.name} accepts dimensions {list(self.dims)}; got {dimensions}")
        return dimensions


_V3_DIMS = (32, 64, 128, 256, 512, 768, 1024)
_V4_DIMS = (128, 256, 512, 1024, 2048)

MODELS: dict[str, ModelSpec] = {
    m.name: m
    for m in [
        ModelSpec("jina-embeddings-v3", 2048, 8192, 1024, _V3_DIMS, _V3_TASKS, True),
        ModelSpec("jina-embeddings-v4", 512, 32768, 2048, _V4_DIMS, _V4_TASKS, True),
        ModelSpec("jina-clip-v2", 2048, 8192, 1024, _V3_DIMS, ("retrieval.query", "retrieval.passage", "text-matching"), False),
        ModelSpec("jina-clip-v1", 2048, 8192, 768, (), (), False),
        *[
            ModelSpec(f"jina-embeddings-v2-base-{lang}", 2048, 8192, 768, (), (), False)
            for lang in ("en", "de", "es", "zh", "code")
        ],
    ]
}


def get_model(name: str) -> ModelSpec:
    """The spec of model ``name``; ValueError naming the known models if there is none."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}") from None
