"""Shared fixtures live in one module per service, each owned by the code it exercises:
fixtures_jina (local Jina-compatible server), fixtures_ray (local Ray), fixtures_milvus (Milvus
standalone server and Milvus Lite)."""
from fixtures_jina import *  # noqa: F401,F403
from fixtures_ray import *  # noqa: F401,F403
from fixtures_milvus import *  # noqa: F401,F403
from fixtures_s3 import *  # noqa: F401,F403
