"""What the stand-in serves: every model of the job's table (``jinabatch.models``), with the stand-in's own figures
where Jina publishes none, and models the table does not know (``ServerSettings.extra_models``).

The stand-in must enforce *some* cap and answer *some* width for every model it serves, even where the job's table
says "not published" (``None``): it takes them from ``STAND_IN_FIGURES``. They are figures of the stand-in, chosen
so that the job's learning paths run (a width the job has to take from the answer, caps it has to respect), never
claims about Jina's API.

An extra model is given as a mapping (a TOML/JSON object; ``jinabatch serve --extra-model '{...}'``)::

    {"name": "jina-embeddings-v6-test", "dim": 640, "dims": [64, 640], "tasks": ["retrieval.query",
     "retrieval.passage"], "max_inputs": 100, "max_tokens": 8192, "fields": ["task", "dimensions", ...]}

Only ``name`` and ``dim`` are required; ``dims`` defaults to any width up to ``dim``, ``tasks`` to none, the caps
to 2048 inputs and 8192 tokens, ``fields`` to what the other keys imply (``embedding_type``, ``normalized``,
``truncate``, plus ``task`` with tasks and ``dimensions``).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..models import MODELS, REQUEST_FIELDS, ModelSpec

__all__ = ["ServedModel", "STAND_IN_FIGURES", "UNKNOWN_WIDTH", "catalog", "served_model", "extra_model"]

UNKNOWN_WIDTH = 4096  # the widest vector of a model the table does not know (the fake model's levels end there)

# the stand-in's figures where the table has None: a width for the code models (the model pages' output
# dimension), inputs per request for v5 and the code models
STAND_IN_FIGURES: dict[str, dict[str, int]] = {
    "jina-code-embeddings-0.5b": {"dim": 896, "max_inputs": 512},
    "jina-code-embeddings-1.5b": {"dim": 1536, "max_inputs": 512},
    "jina-embeddings-v5-text-small": {"max_inputs": 512},
    "jina-embeddings-v5-text-nano": {"max_inputs": 512},
}
_PLAIN = frozenset({"embedding_type", "normalized", "truncate"})


@dataclass(frozen=True)
class ServedModel:
    """A model as the stand-in serves it: every figure known."""

    name: str
    dim: int  # the width without `dimensions`
    dims: tuple[int, ...] | None  # accepted `dimensions`: () fixed at dim; None: any width from 1 to dim
    tasks: tuple[str, ...]
    fields: frozenset[str]  # accepted optional request fields
    max_inputs: int
    max_tokens: int

    @property
    def levels(self) -> tuple[int, ...]:
        """The fake model's Matryoshka levels: the accepted widths and the full one (powers of two from 32 when the
        widths are fixed or open)."""
        if self.dims:
            return tuple(sorted({*self.dims, self.dim}))
        levels, d = [], 32
        while d < self.dim:
            levels.append(d)
            d *= 2
        return (*levels, self.dim)

    def check_dimensions(self, dimensions: int | None) -> int:
        """The width for a requested ``dimensions``; ValueError naming what is accepted."""
        if dimensions is None:
            return self.dim
        if self.dims is None:
            if not 1 <= dimensions <= self.dim:
                raise ValueError(f"{self.name} accepts dimensions from 1 to {self.dim}; got {dimensions}")
            return dimensions
        if not self.dims and dimensions != self.dim:
            raise ValueError(f"{self.name} has a fixed dimension of {self.dim}; got {dimensions}")
        if self.dims and dimensions not in self.dims:
            raise ValueError(f"{self.name} accepts dimensions {list(self.dims)}; got {dimensions}")
        return dimensions


def served_model(spec: ModelSpec) -> ServedModel:
    """A table entry as the stand-in serves it (its ``None`` figures from ``STAND_IN_FIGURES``)."""
    own = STAND_IN_FIGURES.get(spec.name, {})
    dim = spec.default_dim or own.get("dim") or max(spec.dims or (1024,))
    return ServedModel(spec.name, dim, spec.dims, spec.tasks, spec.fields, spec.max_inputs or own["max_inputs"],
                       spec.max_tokens or own.get("max_tokens", 8192))


def extra_model(m: Mapping[str, Any] | ServedModel) -> ServedModel:
    """An extra model from its mapping (see the module doc); ValueError naming what is wrong."""
    if isinstance(m, ServedModel):
        return m
    unknown = sorted(set(m) - {"name", "dim", "dims", "tasks", "max_inputs", "max_tokens", "fields"})
    if unknown or not isinstance(m.get("name"), str) or not isinstance(m.get("dim"), int) \
            or not 1 <= m["dim"] <= UNKNOWN_WIDTH:
        raise ValueError(f"extra_models: each needs a \"name\" and a \"dim\" (a width from 1 to {UNKNOWN_WIDTH}), and "
                         f"takes dims, tasks, max_inputs, max_tokens, fields; got {dict(m)!r}")
    tasks = tuple(m.get("tasks", ()))
    dims = None if m.get("dims") is None else tuple(m["dims"])
    fields = frozenset(m["fields"]) if "fields" in m else _PLAIN | {"dimensions"} | ({"task"} if tasks else set())
    bad = sorted(fields - set(REQUEST_FIELDS))
    if bad:
        raise ValueError(f"extra_models: {m['name']}: unknown field(s) {bad}; request fields: {list(REQUEST_FIELDS)}")
    return ServedModel(m["name"], m["dim"], dims, tasks, fields, int(m.get("max_inputs", 2048)),
                       int(m.get("max_tokens", 8192)))


_TABLE = {name: served_model(spec) for name, spec in MODELS.items()}


def catalog(extra: Iterable[Mapping[str, Any] | ServedModel] = ()) -> dict[str, ServedModel]:
    """Every model the stand-in serves, by name: the table's and ``extra``."""
    out = dict(_TABLE)
    for m in extra:
        served = extra_model(m)
        if served.name in MODELS:
            raise ValueError(f"extra_models: {served.name} is in the model table already; extra models are for "
                             "names it does not know")
        out[served.name] = served
    return out
