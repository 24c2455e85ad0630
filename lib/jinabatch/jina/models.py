"""The model table now lives at the top of the package (``jinabatch.models``), where the config and the client both
read it; this name stays for the local stand-in's imports until they move."""
from ..models import EMBEDDING_TYPES, MODELS, ModelSpec, get_model

__all__ = ["ModelSpec", "MODELS", "get_model", "EMBEDDING_TYPES"]
