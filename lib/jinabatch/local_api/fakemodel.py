"""A deterministic stand-in for the Jina embedding models, used by the local server and by tests.

Nothing here is learned; it is a hashed bag of words that behaves enough like a real embedding
model for the pipeline to be tested end to end:

* **Tokens.** ``count_tokens`` splits text into ``\\w+`` words and single non-space punctuation
  marks; a word costs ``ceil(len/5)`` tokens, a mark 1, plus 2 special tokens per input. It is
  deliberately *not* ``len/4`` so a client's cheap estimate has something to calibrate against.
  ``tokenizer(rule, scale)`` gives other counting rules (``TOKENIZERS``), so the server can disagree with
  the job's assumptions the way a real API does: ``"words"`` counts about one token per word plus one per
  7 characters of a long word, one per punctuation mark and one per CJK character, and ``scale`` multiplies
  every count (``1.1``: 10% more). Truncation follows the same rule.
* **Vectors.** Each lower-cased word is hashed (blake2b keyed with the model name) to one signed
  feature per *level*: level sizes are the model's Matryoshka dimensions (32, 64, ... up to the
  largest; ``catalog.ServedModel.levels``), and the level-``L`` feature lands in ``[0, L)``. A model
  the table does not know has the levels 32, 64, ... ``UNKNOWN_WIDTH``, so any name has vectors and a
  test can recompute them without knowing how a server was configured to serve it. So every word has weight in the first
  32 components and truncating to any accepted ``dimensions`` keeps a usable vector, like a real
  Matryoshka model. Texts that share words share features, so their cosine is clearly higher than
  that of unrelated texts and search over them works.
* **Task, bias.** A small dense, seeded vector per (model, task) is added, scaled to the row's
  word mass: ``retrieval.query`` and ``retrieval.passage`` vectors of the same text differ but stay
  close. A dense per-model bias keeps an empty bag of words finite and non-zero.
* **Late chunking.** Each row also gets ``0.3 *`` the normalized mean of the whole request, so a
  vector depends on its neighbours exactly when ``late_chunking`` is on.
* **Output.** Take the first ``dimensions`` components, then L2-normalize; ``normalized=False``
  scales that unit vector by ``1 + sqrt(words + 1)`` (>= 2, deterministic) instead.

``embed`` is vectorised (one ``bincount`` per block of rows) and caches each word's features, so
20k texts of ~40 words embed in a couple of seconds. ``expected`` / ``decode`` let tests recompute
the exact value any row must carry in any ``embedding_type``.
"""
from __future__ import annotations

import base64
import hashlib
import math
import re
import threading
from functools import lru_cache

import numpy as np

from ..models import EMBEDDING_TYPES
from .catalog import UNKNOWN_WIDTH, catalog

__all__ = [
    "count_tokens", "truncate_text", "Tokenizer", "tokenizer", "TOKENIZERS", "words", "embed", "expected", "encode", "decode",
    "SPECIAL_TOKENS", "TASK_WEIGHT", "LATE_CHUNKING_WEIGHT", "UNKNOWN_WIDTH",
]

SPECIAL_TOKENS = 2  # per input, like [CLS]/[SEP]
TASK_WEIGHT = 0.3  # task vector norm relative to the row's word mass
BIAS_WEIGHT = 0.05  # model bias, keeps an empty bag of words non-zero
LATE_CHUNKING_WEIGHT = 0.3

_PIECE = re.compile(r"\w+|[^\w\s]")
_WORD = re.compile(r"\w+")
_BLOCK_ROWS = 2048  # rows per bincount block: bounds the dense scratch matrix to rows * base dim
_VOCAB_CAP = 2_000_000  # forget a model's word cache past this many words (long-running server)


_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
TOKENIZERS = ("fake", "words")


class Tokenizer:
    """A counting rule: text → pieces (words, marks, CJK characters), each with a cost, plus ``SPECIAL_TOKENS``
    per input, all times ``scale`` (rounded up). ``count`` and ``truncate`` always agree with each other."""

    def __init__(self, rule: str = "fake", scale: float = 1.0):
        if rule not in TOKENIZERS:
            raise ValueError(f"tokenizer: expected one of {list(TOKENIZERS)}; got {rule!r}")
        if not scale > 0:
            raise ValueError(f"token_scale: must be > 0; got {scale!r}")
        self.rule, self.scale = rule, float(scale)
        if rule == "fake":  # a word costs ceil(len/5): a prefix of 5·b characters costs b
            self._pieces, self._chars_per_token = _PIECE, 5
        else:  # one per word, one more per 7 characters past the first 7; CJK characters one each
            self._pieces = re.compile(f"[{_CJK}]|(?:(?![{_CJK}])\\w)+|[^\\w\\s]")
            self._chars_per_token = 7

    def __repr__(self) -> str:
        return f"Tokenizer({self.rule!r}, scale={self.scale:g})"

    def _cost(self, piece: str) -> int:
        if not (piece[0].isalnum() or piece[0] == "_"):
            return 1
        if self.rule == "fake":
            return (len(piece) + 4) // 5
        return 1 + (len(piece) - 1) // 7  # a CJK character is a piece of its own: 1

    def _scaled(self, n: int) -> int:
        return n if self.scale == 1.0 else math.ceil(n * self.scale - 1e-9)

    def count(self, text: str) -> int:
        """Tokens counted for one input."""
        return self._scaled(SPECIAL_TOKENS + sum(self._cost(p) for p in self._pieces.findall(text)))

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` (cut at a piece, or inside a word) with ``count <= max_tokens``.

        Below ``SPECIAL_TOKENS`` nothing fits; the result is then "" (which still costs the special tokens)."""
        budget = math.floor(max_tokens / self.scale + 1e-9) - SPECIAL_TOKENS
        if budget <= 0:
            return ""
        end = 0
        for m in self._pieces.finditer(text):
            cost = self._cost(m.group())
            if cost > budget:
                if m.group()[0] != "_" and not m.group()[0].isalnum():
                    break
                end = m.start() + budget * self._chars_per_token  # a word prefix that costs exactly budget
                break
            budget -= cost
            end = m.end()
            if budget == 0:
                break
        return text[:end]


FAKE = Tokenizer()


def tokenizer(rule: str = "fake", scale: float = 1.0) -> Tokenizer:
    """The counting rule ``rule`` (``TOKENIZERS``) scaled by ``scale``; ``FAKE`` for the default."""
    return FAKE if (rule, scale) == ("fake", 1.0) else Tokenizer(rule, scale)


def count_tokens(text: str) -> int:
    """Tokens the fake model counts for one input (words ceil(len/5), marks 1, +2 special)."""
    return FAKE.count(text)


def truncate_text(text: str, max_tokens: int) -> str:
    """The longest prefix of ``text`` (cut at a piece, or inside a word) with count_tokens <= max_tokens.

    Below ``SPECIAL_TOKENS`` nothing fits; the result is then "" (which still costs 2)."""
    return FAKE.truncate(text, max_tokens)


def words(text: str) -> list[str]:
    """The bag of words the vector is built from: lower-cased ``\\w+`` runs."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=None)
def _levels(model: str) -> tuple[tuple[int, ...], int]:
    served = catalog().get(model)
    levels = served.levels if served else tuple(2 ** k for k in range(5, UNKNOWN_WIDTH.bit_length()))
    return levels, levels[-1]


class _Vocab:
    """Per-model word → (feature columns, signs), grown on demand; features come from blake2b."""

    def __init__(self, model: str):
        self.model = model
        self.levels, self.base = _levels(model)
        self.key = hashlib.blake2b(model.encode(), digest_size=16).digest()
        self.ids: dict[str, int] = {}
        self.lock = threading.Lock()  # the server embeds in worker threads
        self.cols = np.zeros((1024, len(self.levels)), np.int64)
        self.signs = np.zeros((1024, len(self.levels)), np.float32)

    def lookup(self, bags: list[list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Word ids of all bags (flattened) and the feature tables that cover them."""
        with self.lock:
            ids, out = self.ids, []
            for ws in bags:
                for w in ws:
                    i = ids.get(w)
                    out.append(i if i is not None else self._add(w))
            return np.asarray(out, np.int64), self.cols, self.signs

    def _add(self, w: str) -> int:
        i = len(self.ids)
        if i >= len(self.cols):
            self.cols = np.concatenate([self.cols, np.zeros_like(self.cols)])
            self.signs = np.concatenate([self.signs, np.zeros_like(self.signs)])
        h = hashlib.blake2b(w.encode(), key=self.key, digest_size=8 * len(self.levels)).digest()
        for j, size in enumerate(self.levels):
            x = int.from_bytes(h[8 * j: 8 * j + 8], "little")
            self.cols[i, j] = (x >> 1) % size
            self.signs[i, j] = 1.0 if x & 1 else -1.0
        self.ids[w] = i
        return i


_VOCABS: dict[str, _Vocab] = {}


def _vocab(model: str) -> _Vocab:
    v = _VOCABS.get(model)
    if v is None or len(v.ids) > _VOCAB_CAP:
        v = _VOCABS[model] = _Vocab(model)
    return v


@lru_cache(maxsize=256)
def _dense(model: str, name: str, base: int) -> np.ndarray:
    """A seeded unit vector in the base space (the task component, or the model bias)."""
    seed = int.from_bytes(hashlib.blake2b(f"{model}\x00{name}".encode(), digest_size=8).digest(), "little")
    v = np.random.default_rng(seed).standard_normal(base)
    v = (v / np.linalg.norm(v)).astype(np.float32)
    v.setflags(write=False)
    return v


def _base_vectors(model: str, task: str | None, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Un-truncated vectors (n, base) and each row's word count."""
    vocab = _vocab(model)
    base = vocab.base
    bags = [words(t) for t in texts]
    counts = np.fromiter((len(b) for b in bags), np.int64, len(bags))
    out = np.empty((len(texts), base), np.float32)
    for start in range(0, len(texts), _BLOCK_ROWS):
        stop = min(start + _BLOCK_ROWS, len(texts))
        ids, cols, signs = vocab.lookup(bags[start:stop])
        rows = np.repeat(np.arange(stop - start, dtype=np.int64), counts[start:stop])
        flat = (rows[:, None] * base + cols[ids]).ravel()
        block = np.bincount(flat, weights=signs[ids].ravel(), minlength=(stop - start) * base)
        out[start:stop] = block.reshape(stop - start, base)
    mass = np.maximum(np.linalg.norm(out, axis=1), 1.0)[:, None]
    extra = BIAS_WEIGHT * _dense(model, "bias", base)
    if task is not None:
        extra = extra + TASK_WEIGHT * _dense(model, f"task:{task}", base)
    out += mass * extra[None, :]
    return out, counts


def _unit(m: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(m, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return m / n


def embed(model: str, task: str | None, dimensions: int, texts: list[str], *,
          late_chunking: bool = False, normalized: bool = True) -> np.ndarray:
    """float32 (len(texts), dimensions): the vectors the fake ``model`` gives these texts."""
    if not texts:
        return np.zeros((0, dimensions), np.float32)
    base_vecs, counts = _base_vectors(model, task, texts)
    if dimensions > base_vecs.shape[1]:
        raise ValueError(f"{model}: dimensions {dimensions} exceeds the model's {base_vecs.shape[1]}")
    if late_chunking:
        u = _unit(base_vecs)
        ctx = u.mean(axis=0, keepdims=True)
        base_vecs = u + LATE_CHUNKING_WEIGHT * _unit(ctx)
    v = _unit(base_vecs[:, :dimensions].astype(np.float64))
    zero = ~np.isfinite(v).all(axis=1) | (np.abs(v).sum(axis=1) == 0)
    v[zero] = 0.0
    v[zero, 0] = 1.0
    if not normalized:
        v *= (1.0 + np.sqrt(counts + 1.0))[:, None]
    return v.astype(np.float32)


def expected(model: str, task: str | None, dimensions: int, text: str, *, normalized: bool = True) -> np.ndarray:
    """The exact float32 vector one input gets without late chunking (for assertions)."""
    return embed(model, task, dimensions, [text], normalized=normalized)[0]


def encode(vectors: np.ndarray, embedding_type: str = "float") -> list:
    """Wire value of each row: float list, base64 of LE float32, or packed sign bits (int8/uint8)."""
    if embedding_type == "float":
        return vectors.astype(np.float32).tolist()
    if embedding_type == "base64":
        le = np.ascontiguousarray(vectors, dtype="<f4")
        return [base64.b64encode(row.tobytes()).decode("ascii") for row in le]
    if embedding_type in ("binary", "ubinary"):
        bits = np.packbits(vectors > 0, axis=1)
        return (bits.view(np.int8) if embedding_type == "binary" else bits).tolist()
    raise ValueError(f"embedding_type must be one of {list(EMBEDDING_TYPES)}; got {embedding_type!r}")


def decode(value, embedding_type: str = "float") -> np.ndarray:
    """Inverse of ``encode`` for one row: float32 values, or the uint8 packed bits for binary types."""
    if embedding_type == "float":
        return np.asarray(value, np.float32)
    if embedding_type == "base64":
        return np.frombuffer(base64.b64decode(value), "<f4").astype(np.float32)
    if embedding_type == "binary":
        return np.asarray(value, np.int8).view(np.uint8)
    if embedding_type == "ubinary":
        return np.asarray(value, np.uint8)
    raise ValueError(f"embedding_type must be one of {list(EMBEDDING_TYPES)}; got {embedding_type!r}")


def _check_speed() -> None:  # pragma: no cover - manual: python -m jinabatch.local_api.fakemodel
    import time
    texts = [" ".join(f"w{(i * 7 + j * 13) % 5000}" for j in range(40)) for i in range(20_000)]
    t = time.perf_counter()
    embed("jina-embeddings-v3", "retrieval.passage", 1024, texts)
    print(f"20k x 40 words: {time.perf_counter() - t:.2f}s")


if __name__ == "__main__":  # pragma: no cover
    _check_speed()
