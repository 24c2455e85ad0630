"""jinabatch: batch embeddings with the Jina API over a Parquet corpus, into Milvus."""
from .config import Config, load_config
from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all
from .models import MODELS, ModelSpec, get_model

__all__ = ["Config", "load_config", "MODELS", "ModelSpec", "get_model", *_errors_all]
