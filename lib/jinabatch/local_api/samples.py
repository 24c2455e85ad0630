"""A readable sample corpus: what ``make run`` embeds and searches, and what the benchmarks scale up.

Documents are short passages on a handful of topics, built from topic phrases, so a person can judge a
search (a query about telescopes should bring back astronomy passages). The seed document's own
examples come first. Deterministic for a seed.
"""
from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["SEED_DOCS", "TOPICS", "make_texts", "write_corpus"]

SEED_DOCS = [
    "Artificial intelligence was founded as an academic discipline in 1956.",
    "Alan Turing was the first person to conduct substantial research in AI.",
    "Born in Maida Vale, London, Turing was raised in southern England.",
    "Follow the white rabbit.",
    "Sigue al conejo blanco.",
    "Suis le lapin blanc.",
    "Folge dem weißen Kaninchen.",
]

TOPICS: dict[str, dict[str, list[str]]] = {
    "astronomy": {
        "subjects": ["The telescope", "A distant galaxy", "The red giant star", "Saturn's rings", "The comet",
                     "A neutron star", "The lunar eclipse", "The observatory"],
        "verbs": ["was observed by", "revealed new details to", "puzzled", "was photographed by", "inspired"],
        "objects": ["astronomers in Chile", "amateur stargazers", "the orbiting space telescope",
                    "radio astronomers", "a team studying dark matter", "planetary scientists"],
        "tails": ["during a clear winter night.", "after months of careful measurement.",
                  "through infrared and visible light.", "while tracking its orbit around the sun."],
    },
    "cooking": {
        "subjects": ["The sourdough bread", "A slow-cooked tomato sauce", "The chocolate cake", "Fresh pasta",
                     "The vegetable soup", "A spicy curry", "The roasted chicken", "Homemade pizza dough"],
        "verbs": ["was baked by", "was seasoned by", "delighted", "was prepared by", "was tasted by"],
        "objects": ["the head chef", "a family in Naples", "students at the cooking school",
                    "a baker before sunrise", "guests at the dinner party", "a food critic"],
        "tails": ["with garlic, basil and olive oil.", "in a wood-fired oven.", "using flour, butter and yeast.",
                  "after simmering for three hours."],
    },
    "ai history": {
        "subjects": ["The Dartmouth workshop", "Early neural networks", "The perceptron", "Expert systems",
                     "Machine learning research", "The Turing test", "Symbolic reasoning programs",
                     "Backpropagation"],
        "verbs": ["was proposed by", "was studied by", "shaped the work of", "was criticised by",
                  "was revived by"],
        "objects": ["computer scientists in 1956", "Alan Turing and his successors", "researchers at MIT",
                    "the artificial intelligence community", "logicians and mathematicians",
                    "a new generation of engineers"],
        "tails": ["during the first AI winter.", "long before deep learning.", "in the early years of computing.",
                  "and changed how machines learn."],
    },
    "football": {
        "subjects": ["The striker", "The home team", "The goalkeeper", "The championship final", "A young midfielder",
                     "The coach", "The penalty shootout", "The stadium crowd"],
        "verbs": ["surprised", "was cheered by", "frustrated", "was praised by", "was watched by"],
        "objects": ["fans across the league", "the visiting defenders", "the referee", "millions on television",
                    "the club's supporters", "sports journalists"],
        "tails": ["in the ninetieth minute.", "after a dramatic comeback.", "with a header into the top corner.",
                  "despite the heavy rain."],
    },
    "gardening": {
        "subjects": ["The rose bush", "Tomato seedlings", "The herb garden", "A compost heap", "The apple tree",
                     "Spring tulips", "The vegetable patch", "A greenhouse"],
        "verbs": ["was planted by", "was watered by", "was pruned by", "rewarded", "was protected by"],
        "objects": ["an experienced gardener", "children at the community garden", "a retired botanist",
                    "volunteers in the park", "the neighbours", "a farmer"],
        "tails": ["in rich, well-drained soil.", "before the first frost.", "with mulch and fresh compost.",
                  "under full morning sun."],
    },
    "finance": {
        "subjects": ["The central bank", "Interest rates", "The stock market", "A government bond",
                     "The quarterly earnings report", "Inflation", "The startup's funding round", "Mortgage lending"],
        "verbs": ["worried", "was analysed by", "was raised by", "reassured", "was questioned by"],
        "objects": ["investors and economists", "pension funds", "the finance minister", "small business owners",
                    "analysts on Wall Street", "savers and borrowers"],
        "tails": ["after a volatile trading week.", "as prices kept rising.", "in the latest policy meeting.",
                  "amid fears of a recession."],
    },
}


def _passage(rng: random.Random, topic: dict[str, list[str]]) -> str:
    sentences = [f"{rng.choice(topic['subjects'])} {rng.choice(topic['verbs'])} {rng.choice(topic['objects'])} "
                 f"{rng.choice(topic['tails'])}" for _ in range(rng.randint(1, 3))]
    return " ".join(sentences)


def make_texts(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n`` passages and their topics; the seed document's examples first."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    texts, topics = [], []
    for i in range(n):
        if i < len(SEED_DOCS):
            texts.append(SEED_DOCS[i])
            topics.append("seed")
        else:
            name = names[rng.randrange(len(names))]
            texts.append(_passage(rng, TOPICS[name]))
            topics.append(name)
    return texts, topics


def write_corpus(out: str | Path, n: int, *, files: int = 1, seed: int = 0, row_group_size: int = 250) -> list[Path]:
    """Write ``n`` rows (id, text, topic, n_words) over ``files`` Parquet files in folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    texts, topics = make_texts(n, seed)
    paths = []
    per = -(-n // files)
    for f in range(files):
        lo, hi = f * per, min(n, (f + 1) * per)
        table = pa.table({
            "id": [f"doc-{i:07d}" for i in range(lo, hi)],
            "text": texts[lo:hi],
            "topic": topics[lo:hi],
            "n_words": pa.array([len(t.split()) for t in texts[lo:hi]], pa.int32()),
        })
        p = out / f"part-{f:04d}.parquet"
        pq.write_table(table, p, row_group_size=row_group_size)
        paths.append(p)
    return paths
