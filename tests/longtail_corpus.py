"""Long-tail corpora: rows from one word to far past the model's token cap, for rate-limit tests and benchmarks.

A rate limiter tuned on uniform passages meets something else in real corpora: most rows are short, a few
are thousands of tokens, and some are far beyond the cap (sent with ``truncate``, so the server bills them at
the cap whatever their length); there are empty rows and duplicate ids, and some text (CJK, code) tokenizes
very differently from English prose. ``write_longtail`` writes such a corpus:

* row lengths in words from a log-normal (median ``median_words``), capped at ``max_words``;
* ``past_cap`` of the rows 45,000-120,000 characters long (far past 8,192 tokens by any count);
* ``empty`` of the rows empty or blank, ``duplicates`` of the rows repeating an earlier id (dead-lettered);
* ``cjk`` of the rows in CJK characters (a subword tokenizer counts about one token per character; UTF-8
  bytes / 4 says 0.75).

The words come from ``source``: ``"real"`` harvests text from the installed packages (README and changelog
text of every ``*.dist-info/METADATA``, docstrings of a fixed list of libraries): library docstrings,
changelogs and READMEs, as in the corpus the rate-limit issue was measured on; ``"synthetic"`` draws from a
fixed vocabulary of prose words, long identifiers and code punctuation, so a test's corpus does not depend on
what is installed. Everything is seeded.
"""
from __future__ import annotations

import ast
import math
import random
import sysconfig
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["write_longtail", "real_words", "synthetic_words"]

DOCSTRING_PACKAGES = ("httpx", "pydantic", "numpy", "pyarrow", "aiohttp", "stamina", "tqdm", "altair", "pymilvus")
_PROSE = ("the of and to in is that for it as with was on be by this are from or an which have not at one all "
          "function returns value parameter default optional argument request response server client token "
          "embedding vector shard corpus batch limit retry timeout connection configuration deprecated removed "
          "added fixed changed behaviour documentation example installation performance compatibility").split()
_CODE = ("self.assertEqual(x, y)", "foo_bar()", "x[0].y", "{'a': 1}", "->", "**kwargs", "np.float32",
         "__init__", "TypeError:", "`pip", "install`", "v2.3.1", "#123", "(see", "below).", "https://example.org/a/b",
         "CamelCaseIdentifierNames", "snake_case_identifier_names", "--flag=value", "$HOME/.config")
_CJK_CHARS = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后"
              "多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还"
              "因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结")


@lru_cache(maxsize=2)
def real_words(limit_chars: int = 6_000_000) -> tuple[str, ...]:
    """Words of real technical text from the installed packages, in a fixed order (sorted paths)."""
    site = Path(sysconfig.get_paths()["purelib"])
    texts: list[str] = []
    for meta in sorted(site.glob("*.dist-info/METADATA")):
        head, _, body = meta.read_text(errors="replace").partition("\n\n")
        if len(body) > 200:
            texts.append(body)
    total = sum(map(len, texts))
    for pkg in DOCSTRING_PACKAGES:
        for path in sorted((site / pkg).rglob("*.py")) if (site / pkg).is_dir() else []:
            try:
                tree = ast.parse(path.read_text(errors="replace"))
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=True)
                    if doc:
                        texts.append(doc)
                        total += len(doc)
            if total > limit_chars:
                break
    words = tuple(w for t in texts for w in t.split())
    if len(words) < 10_000:
        raise RuntimeError(f"found only {len(words)} words of package text under {site}; use source='synthetic'")
    return words


def synthetic_words(n: int = 400_000, seed: int = 0) -> tuple[str, ...]:
    """Prose words, long identifiers and code punctuation in a fixed seeded mix (about 4:1 prose to code)."""
    rng = random.Random(seed)
    return tuple(rng.choice(_CODE) if rng.random() < 0.2 else rng.choice(_PROSE) for _ in range(n))


def _slice(rng: random.Random, words: tuple[str, ...], n: int) -> str:
    if n >= len(words):
        return " ".join(words[i % len(words)] for i in range(n))
    start = rng.randrange(0, len(words) - n)
    return " ".join(words[start:start + n])


def _cjk(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(_CJK_CHARS) if rng.random() > 0.08 else "，" for _ in range(n))


def write_longtail(out: str | Path, n: int, *, seed: int = 0, source: str = "synthetic", files: int = 4,
                   median_words: float = 8.0, sigma: float = 1.25, max_words: int = 6_000, past_cap: float = 0.001,
                   empty: float = 0.005, duplicates: float = 0.01, cjk: float = 0.01,
                   row_group_size: int = 500) -> dict[str, int]:
    """Write ``n`` rows (``id``, ``text``) in ``files`` Parquet files under ``out``; returns what it wrote
    (``rows``, ``past_cap``, ``empty``, ``duplicates``, ``cjk``, ``chars``) so a caller can reconcile counts."""
    rng = random.Random(seed)
    words = real_words() if source == "real" else synthetic_words(seed=seed)
    ids: list[str] = []
    texts: list[str] = []
    counts = dict.fromkeys(("past_cap", "empty", "duplicates", "cjk"), 0)
    for i in range(n):
        r = rng.random()
        if r < empty:
            text, kind = rng.choice(("", " ", "\n\t")), "empty"
        elif r < empty + past_cap:
            text, kind = _slice(rng, words, rng.randint(45_000, 120_000) // 6), "past_cap"
        elif r < empty + past_cap + cjk:
            text, kind = _cjk(rng, max(1, min(3_000, round(rng.lognormvariate(math.log(30), 1.0))))), "cjk"
        else:
            text, kind = _slice(rng, words, max(1, min(max_words, round(rng.lognormvariate(math.log(median_words),
                                                                                          sigma))))), None
        if kind:
            counts[kind] += 1
        if ids and rng.random() < duplicates:  # an id seen before: the later row is dead-lettered
            ids.append(ids[rng.randrange(len(ids))])
            counts["duplicates"] += 1
        else:
            ids.append(f"lt-{i:07d}")
        texts.append(text)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    per = -(-n // files)
    for f in range(files):
        lo, hi = f * per, min(n, (f + 1) * per)
        pq.write_table(pa.table({"id": ids[lo:hi], "text": texts[lo:hi]}), out / f"part-{f:04d}.parquet",
                       row_group_size=row_group_size)
    return {"rows": n, **counts, "chars": sum(map(len, texts))}
