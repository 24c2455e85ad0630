"""The fake model: token counting, truncation, vectors (determinism, lexical similarity, task,
Matryoshka, late chunking, normalization) and the wire encodings."""
import math

import numpy as np
import pytest

from jinabatch.local_api import fakemodel as fm

V3, V2 = "jina-embeddings-v3", "jina-embeddings-v2-base-en"
P, Q = "retrieval.passage", "retrieval.query"


def cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_count_tokens_words_cost_ceil_len_over_5_marks_1_plus_2_special():
    assert fm.count_tokens("") == 2
    assert fm.count_tokens("hello") == 3  # 5 chars -> 1
    assert fm.count_tokens("hello, extraordinary!") == 2 + 1 + 1 + 3 + 1
    assert fm.count_tokens("a b c d") == 6


def test_count_tokens_is_not_a_character_ratio():
    """A client must calibrate: short words cost more per character than long ones."""
    short, long_ = "a " * 100, "abcdefghij " * 20
    assert len(short) == len(long_) - 20
    assert fm.count_tokens(short) == 102 and fm.count_tokens(long_) == 42


@pytest.mark.parametrize("limit", [2, 3, 5, 10, 17, 50])
def test_truncate_text_is_a_prefix_within_the_limit_and_as_long_as_possible(limit):
    text = "Tokenization, the art of splitting: words; marks & supercalifragilistic runs!" * 3
    out = fm.truncate_text(text, limit)
    assert text.startswith(out)
    assert fm.count_tokens(out) <= limit
    if out != text:
        assert fm.count_tokens(text[: len(out) + 1]) > limit or text[len(out)].isspace()


def test_truncate_text_cuts_inside_a_long_word():
    assert fm.truncate_text("abcdefghijklmnopqrst", 4) == "abcdefghij"  # 2 special + 2 tokens = 10 chars


def test_truncate_text_leaves_short_text_alone():
    assert fm.truncate_text("short text", 100) == "short text"


def test_embed_is_deterministic_float32_unit_rows():
    texts = ["the cat sat on the mat", "quantum chromodynamics"]
    a = fm.embed(V3, P, 256, texts)
    b = fm.embed(V3, P, 256, list(reversed(texts)))[::-1]
    assert a.dtype == np.float32 and a.shape == (2, 256)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-6)


def test_texts_sharing_words_are_clearly_closer_than_unrelated_ones():
    a, b, c = fm.embed(V3, P, 1024, ["the quick brown fox jumps over the lazy dog",
                                     "a quick brown fox leaps over a sleepy dog",
                                     "monetary policy of central banks in 2024"])
    assert cos(a, b) > cos(a, c) + 0.3


def test_lexical_search_finds_the_right_document_at_every_v3_dimension():
    docs = [f"document {i} about {w} and {w}s" for i, w in enumerate(
        ["apple", "river", "engine", "violin", "glacier", "tax", "python", "tennis"])]
    for dims in (32, 64, 128, 1024):
        d = fm.embed(V3, P, dims, docs)
        q = fm.embed(V3, Q, dims, ["violin", "glacier"])
        assert list(np.argmax(q @ d.T, axis=1)) == [3, 4], dims


def test_task_changes_the_vector_but_keeps_it_close():
    text = "how do late interaction models work"
    p, q = fm.expected(V3, P, 1024, text), fm.expected(V3, Q, 1024, text)
    assert not np.allclose(p, q)
    assert 0.8 < cos(p, q) < 0.999


def test_dimensions_are_a_matryoshka_prefix_renormalized():
    full = fm.expected(V3, P, 1024, "matryoshka dolls nest inside each other")
    small = fm.expected(V3, P, 64, "matryoshka dolls nest inside each other")
    np.testing.assert_allclose(small, full[:64] / np.linalg.norm(full[:64]), rtol=1e-5, atol=1e-6)


def test_model_name_changes_the_vector():
    assert not np.allclose(fm.expected(V3, None, 768, "same text"), fm.expected(V2, None, 768, "same text"))


def test_empty_bag_of_words_gives_a_finite_nonzero_vector():
    v = fm.embed(V2, None, 768, ["", "!!! ???"])
    assert np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-6)


def test_not_normalized_is_the_same_direction_with_a_norm_other_than_one():
    n = fm.expected(V3, P, 128, "scale me", normalized=False)
    u = fm.expected(V3, P, 128, "scale me")
    assert np.linalg.norm(n) > 1.5
    np.testing.assert_allclose(n / np.linalg.norm(n), u, rtol=1e-5, atol=1e-6)


def test_late_chunking_makes_each_vector_depend_on_the_whole_request():
    chunks = ["first chunk about rivers", "second chunk about bridges"]
    late = fm.embed(V3, P, 256, chunks, late_chunking=True)
    alone = fm.embed(V3, P, 256, chunks)
    other = fm.embed(V3, P, 256, [chunks[0], "unrelated chunk about opera"], late_chunking=True)
    assert not np.allclose(late, alone)
    assert not np.allclose(late[0], other[0])  # same text, different neighbours
    assert cos(late[0], alone[0]) > 0.8


@pytest.mark.parametrize("etype", ["float", "base64", "binary", "ubinary"])
def test_encode_decode_round_trip(etype):
    v = fm.embed(V3, P, 64, ["round trip", "of every type"])
    wire = fm.encode(v, etype)
    got = np.stack([fm.decode(w, etype) for w in wire])
    want = v if etype in ("float", "base64") else np.packbits(v > 0, axis=1)
    np.testing.assert_array_equal(got, want)


def test_binary_is_packed_sign_bits_as_int8_and_ubinary_as_uint8():
    v = np.array([[1, -1, 1, 1, -1, -1, -1, -1] * 2], np.float32)
    assert fm.encode(v, "ubinary") == [[0b10110000] * 2]
    assert fm.encode(v, "binary") == [[0b10110000 - 256] * 2]


def test_base64_is_little_endian_float32():
    import base64
    v = np.array([[1.0, -2.5]], np.float32)
    assert base64.b64decode(fm.encode(v, "base64")[0]) == v.astype("<f4").tobytes()


def test_encode_rejects_unknown_type():
    with pytest.raises(ValueError, match="embedding_type"):
        fm.encode(np.zeros((1, 4), np.float32), "int4")


def test_many_texts_embed_in_blocks_identically_to_one_by_one():
    texts = [f"row {i} word{i % 97} other{i % 13}" for i in range(fm._BLOCK_ROWS + 5)]
    many = fm.embed(V3, P, 32, texts)
    for i in (0, fm._BLOCK_ROWS - 1, fm._BLOCK_ROWS, len(texts) - 1):
        np.testing.assert_array_equal(many[i], fm.expected(V3, P, 32, texts[i]))
    assert not math.isnan(float(many.sum()))


def test_embedding_from_several_threads_matches_sequential_results():
    """The server embeds in worker threads; the shared word cache must not mix up words."""
    from concurrent.futures import ThreadPoolExecutor
    batches = [[f"thread{t} unique{t}_{i} shared{i % 5}" for i in range(300)] for t in range(4)]
    fm._VOCABS.pop("jina-clip-v2", None)
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(lambda b: fm.embed("jina-clip-v2", None, 64, b), batches))
    fm._VOCABS.pop("jina-clip-v2", None)
    for b, g in zip(batches, got):
        np.testing.assert_array_equal(g, fm.embed("jina-clip-v2", None, 64, b))


# -- other counting rules: a server that disagrees with the client's estimate ---------------------
def test_the_words_rule_counts_a_token_per_word_one_more_per_7_characters_marks_and_cjk_one_each():
    t = fm.tokenizer("words")
    assert t.count("") == 2
    assert t.count("hello, extraordinary!") == 2 + 1 + 1 + 2 + 1  # 13 letters: 1 + 12 // 7
    assert t.count("abcdefg abcdefgh") == 2 + 1 + 2
    assert t.count("日本語のテキスト abc") == 2 + 8 + 1  # each CJK character is a token


def test_token_scale_multiplies_every_count_rounding_up():
    assert fm.tokenizer("fake", 1.1).count("a b c d e f g h") == 11  # 10 × 1.1
    assert fm.tokenizer("words", 1.5).count("a") == 5  # 3 × 1.5 = 4.5 → 5


@pytest.mark.parametrize("rule,scale", [("words", 1.0), ("words", 1.1), ("fake", 1.3)])
@pytest.mark.parametrize("limit", [3, 7, 40, 200])
def test_truncation_follows_the_rule_a_longest_prefix_within_the_limit(rule, scale, limit):
    t = fm.tokenizer(rule, scale)
    text = "Tokenization 分词 of marks, supercalifragilistic words; 日本語 and more!" * 5
    out = t.truncate(text, limit)
    assert text.startswith(out) and t.count(out) <= limit
    if out != text:
        assert t.count(text[: len(out) + 1]) > limit or text[len(out)].isspace()


def test_an_unknown_rule_or_a_scale_of_zero_is_refused_naming_the_setting():
    with pytest.raises(ValueError, match="tokenizer: expected one of"):
        fm.tokenizer("bpe")
    with pytest.raises(ValueError, match="token_scale: must be > 0"):
        fm.tokenizer("words", 0)
