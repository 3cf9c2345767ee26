"""MinED token alignment: the DTW programme against brute force, hand cases, real tokenizer pairs, the collator hook."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctkd.align.mined import (
    MinEDAligner,
    align_texts,
    dtw_path,
    pair_costs,
    path_groups,
    stack_token_alignments,
)
from ctkd.align.vocab_map import TokenTexts
from ctkd.data import DistillCollator, Example

QED = Path(__file__).resolve().parents[2] / "src" / "ctkd" / "resources" / "qed" / "qed-validation.jsonlines"
PAIRS = [("gpt2", "llama2"), ("qwen1.5", "mistral"), ("llama2", "gpt2"), ("gpt2", "qwen1.5")]


@pytest.fixture(scope="module")
def tokenizers(shared_dir):
    from transformers import AutoTokenizer

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = AutoTokenizer.from_pretrained(shared_dir / "tokenizers" / name)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def paragraphs() -> list[str]:
    return [json.loads(line)["paragraph_text"] for line in QED.read_text().splitlines()[:25]]


def brute_force_dtw(cost: np.ndarray) -> float:
    """Minimum cost over every monotone (1,1)/(1,0)/(0,1) path, by explicit enumeration (tiny matrices only)."""
    n, m = cost.shape
    best = np.inf

    def walk(i, j, total):
        nonlocal best
        total += cost[i, j]
        if (i, j) == (n - 1, m - 1):
            best = min(best, total)
            return
        for di, dj in ((1, 1), (1, 0), (0, 1)):
            if i + di < n and j + dj < m:
                walk(i + di, j + dj, total)

    walk(0, 0, 0.0)
    return best


@pytest.mark.parametrize("n, m", [(1, 1), (1, 4), (3, 1), (3, 3), (4, 5), (5, 3)])
def test_dtw_path_is_minimal_and_monotone(n, m):
    rng = np.random.default_rng(n * 10 + m)
    for _ in range(5):
        cost = rng.integers(0, 5, size=(n, m)).astype(float)
        path = dtw_path(cost)
        assert path[0] == (0, 0) and path[-1] == (n - 1, m - 1)
        steps = {(b[0] - a[0], b[1] - a[1]) for a, b in zip(path, path[1:])}
        assert steps <= {(1, 1), (1, 0), (0, 1)}
        assert sum(cost[i, j] for i, j in path) == pytest.approx(brute_force_dtw(cost))


def test_dtw_of_an_empty_side_is_empty():
    assert dtw_path(np.zeros((0, 3))) == [] and dtw_path(np.zeros((2, 0))) == []
    assert align_texts([], [" a"]) == [] and align_texts([" a", "b"], []) == [-1, -1]


def test_path_groups_partition_both_sides():
    path = [(0, 0), (1, 0), (2, 1), (2, 2), (3, 3)]
    groups = path_groups(path)
    assert groups == [([0, 1], [0]), ([2], [1, 2]), ([3], [3])]
    assert [i for rows, _ in groups for i in rows] == [0, 1, 2, 3]
    assert [j for _, cols in groups for j in cols] == [0, 1, 2, 3]


def test_hand_made_alignment():
    student = [" The", " gymn", "os", "perm"]
    teacher = [" The", " g", "ymn", "os", "perm"]
    # " gymn" covers " g" + "ymn": a one-to-many group, unaligned with one_to_one, first token with "first"
    assert align_texts(student, teacher) == [0, -1, 3, 4]
    assert align_texts(student, teacher, match="first") == [0, 1, 3, 4]
    # identical sequences align to the identity, with either cost
    assert align_texts(teacher, teacher) == [0, 1, 2, 3, 4]
    assert align_texts(teacher, teacher, cost="exact") == [0, 1, 2, 3, 4]


def test_levenshtein_cost_matches_near_tokens_that_exact_cost_cannot():
    # the two sides spell the middle token differently (e.g. a normalisation difference): a substitution
    student, teacher = [" Köln", " is", " old"], [" Koln", " is", " old"]
    assert pair_costs(student, teacher, tiebreak=False)[0, 0] == 1.0
    assert align_texts(student, teacher) == [0, 1, 2]
    assert pair_costs(student, teacher, "exact", tiebreak=False)[0, 0] == 1.0


def test_tiebreak_only_breaks_ties():
    rng = np.random.default_rng(0)
    student = ["".join(rng.choice(list("ab "), size=rng.integers(1, 4))) for _ in range(12)]
    teacher = ["".join(rng.choice(list("ab "), size=rng.integers(1, 4))) for _ in range(10)]
    plain = pair_costs(student, teacher, tiebreak=False)
    with_tiebreak = pair_costs(student, teacher)
    path = dtw_path(with_tiebreak)
    # the tie-broken path is still optimal for the plain edit costs
    assert sum(plain[i, j] for i, j in path) == pytest.approx(sum(plain[i, j] for i, j in dtw_path(plain)))
    assert (with_tiebreak - plain).max() * (len(student) + len(teacher)) < 1.0


def test_bad_options_raise():
    with pytest.raises(ValueError, match="cost"):
        align_texts(["a"], ["a"], cost="hamming")
    with pytest.raises(ValueError, match="match"):
        align_texts(["a"], ["a"], match="all")


def test_stack_pads_with_minus_one():
    out = stack_token_alignments([[0, 1, -1], [], [2]])
    assert out.dtype == torch.long and out.tolist() == [[0, 1, -1], [-1, -1, -1], [2, -1, -1]]
    assert stack_token_alignments([]).shape == (0, 0)


def _check_alignment(alignment: list[int], n: int, m: int) -> None:
    assert len(alignment) == n
    aligned = [a for a in alignment if a >= 0]
    assert all(0 <= a < m for a in aligned)
    assert all(b > a for a, b in zip(aligned, aligned[1:])), "aligned teacher indices must increase strictly"


@pytest.mark.parametrize("student_name, teacher_name", PAIRS)
def test_real_pairs_are_monotone_in_range_and_mostly_aligned(tokenizers, paragraphs, student_name, teacher_name):
    student, teacher = tokenizers(student_name), tokenizers(teacher_name)
    s_texts, t_texts = TokenTexts(student), TokenTexts(teacher)
    total = aligned = same_text = 0
    for text in paragraphs:
        s_ids = student("Answer: " + text, add_special_tokens=False)["input_ids"]
        t_ids = teacher("Answer: " + text, add_special_tokens=False)["input_ids"]
        ss, tt = s_texts.of(s_ids), t_texts.of(t_ids)
        for match in ("one_to_one", "first"):
            alignment = align_texts(ss, tt, match=match)
            _check_alignment(alignment, len(ss), len(tt))
        alignment = align_texts(ss, tt)
        total += len(ss)
        aligned += sum(a >= 0 for a in alignment)
        same_text += sum(a >= 0 and ss[i].strip() == tt[a].strip() for i, a in enumerate(alignment))
    # English prose: most tokens have a one-to-one counterpart (measured 0.74 for Llama-2 -> GPT-2, whose digits and
    # rare words Llama-2 splits finer, 0.86-0.93 for the others), and most aligned pairs spell the same text
    assert aligned / total > 0.7
    assert same_text / aligned > 0.85


@pytest.mark.parametrize("name", ["gpt2", "llama2", "qwen1.5", "mistral"])
def test_identical_tokenizations_align_to_the_identity(tokenizers, paragraphs, name):
    tok = tokenizers(name)
    aligner = MinEDAligner(tok, tok)
    for text in paragraphs[:5]:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert aligner.align(ids, ids) == list(range(len(ids)))
        eos = [tok.eos_token_id]
        assert aligner.align(ids + eos, ids + eos, student_has_eos=True, teacher_has_eos=True) == list(range(len(ids) + 1))


def test_end_tokens_align_with_each_other_or_not_at_all(tokenizers):
    student, teacher = tokenizers("gpt2"), tokenizers("llama2")
    aligner = MinEDAligner(student, teacher)
    s_ids = student(" the cat", add_special_tokens=False)["input_ids"] + [student.eos_token_id]
    t_ids = teacher("Answer: the cat", add_special_tokens=False)["input_ids"][-2:] + [teacher.eos_token_id]
    both = aligner.align(s_ids, t_ids, student_has_eos=True, teacher_has_eos=True)
    assert both == [0, 1, 2]
    only_student = aligner.align(s_ids, t_ids[:-1], student_has_eos=True, teacher_has_eos=False)
    assert only_student == [0, 1, -1]
    assert aligner.align(s_ids[:-1], t_ids, teacher_has_eos=True) == [0, 1]


def test_token_texts_normalise_space_markers_and_bytes(tokenizers):
    gpt2, llama = TokenTexts(tokenizers("gpt2")), TokenTexts(tokenizers("llama2"))
    g, l = tokenizers("gpt2"), tokenizers("llama2")
    assert gpt2[g.convert_tokens_to_ids("Ġworld")] == " world"
    assert gpt2[g.convert_tokens_to_ids("Ċ")] == "\n"
    assert llama[l.convert_tokens_to_ids("▁world")] == " world"
    assert llama[l.convert_tokens_to_ids("<0x0A>")] == "\n"
    assert llama[l.convert_tokens_to_ids("<0xE4>")] == b"\xe4".decode("utf-8", errors="surrogateescape")
    assert llama[l.eos_token_id] == "</s>"  # added tokens verbatim
    # the texts of a tokenization concatenate back to the text (byte-level pieces of a character included)
    text = " Röntgen, 1901 — 中国 naïve"
    for tok, texts in ((g, gpt2), (l, llama)):
        joined = "".join(texts.of(tok(text, add_special_tokens=False)["input_ids"]))
        assert joined.encode("utf-8", errors="surrogateescape").decode("utf-8").strip() == text.strip()


def test_collator_computes_and_stacks_the_alignment(tokenizers):
    student, teacher = tokenizers("gpt2"), tokenizers("llama2")
    examples = [
        Example(f"ex{i}", "qed", {"context": f"The cat sat on the mat {i}.", "question": "who sat?"}, answer, [answer])
        for i, answer in enumerate(["the cat", "a gymnosperm from Paris, France", "1901"])
    ]
    pool = [Example(f"pool{i}", "qed", {"context": f"Pool {i}.", "question": f"q {i}?"}, f"a {i}", [f"a {i}"]) for i in range(4)]
    collator = DistillCollator.for_task("qed", student, teacher, shot_pool=pool, extras=("mined_alignment",))
    features = collator.prepare_features(examples)
    batch = collator(features)
    alignment = batch.extras["mined_alignment"]
    s_len, t_len = batch.student.answer_lengths, batch.teacher.answer_lengths
    assert alignment.shape == (3, int(s_len.max())) and alignment.dtype == torch.long
    for b in range(3):
        row = alignment[b].tolist()
        _check_alignment(row[: int(s_len[b])], int(s_len[b]), int(t_len[b]))
        assert all(a == -1 for a in row[int(s_len[b]):])
        assert row[int(s_len[b]) - 1] == int(t_len[b]) - 1  # both answers end with an end token: aligned
        assert row == features[b].extras["mined_alignment"] + [-1] * (alignment.shape[1] - int(s_len[b]))
    # options pass through; unknown extras are refused by name
    first = DistillCollator.for_task("qed", student, teacher, shot_pool=pool, extras={"mined_alignment": {"match": "first"}})
    assert (first(first.prepare_features(examples)).extras["mined_alignment"] >= 0).sum() >= (alignment >= 0).sum()
    with pytest.raises(ValueError, match="mined_alignment"):
        DistillCollator.for_task("qed", student, teacher, shot_pool=pool, extras=("dtw",))
    # features prepared by a collator without the extra are refused by one that needs it
    plain = DistillCollator.for_task("qed", student, teacher, shot_pool=pool)
    with pytest.raises(ValueError, match="mined_alignment"):
        collator(plain.prepare_features(examples))
    assert plain(plain.prepare_features(examples)).extras == {}


def test_every_answer_pair_alignment_is_fast(tokenizers, paragraphs):
    import time

    student, teacher = tokenizers("gpt2"), tokenizers("llama2")
    aligner = MinEDAligner(student, teacher)
    s_ids = student(" ".join(paragraphs[:3]), add_special_tokens=False)["input_ids"][:200]
    t_ids = teacher(" ".join(paragraphs[:3]), add_special_tokens=False)["input_ids"][:200]
    start = time.perf_counter()
    for _ in range(5):
        aligner.align(s_ids, t_ids)
    assert (time.perf_counter() - start) / 5 < 0.25  # 200 x 200 tokens: milliseconds, with room for a loaded machine


def test_pair_costs_are_levenshtein_distances():
    student, teacher = ["kitten", " a", ""], ["sitting", " a", "abc"]
    costs = pair_costs(student, teacher, tiebreak=False)
    expected = [[3, 6, 6], [7, 0, 3], [7, 2, 3]]
    assert costs.tolist() == expected
    for (i, a), (j, b) in itertools.product(enumerate(student), enumerate(teacher)):
        assert pair_costs([a], [b], "exact", tiebreak=False)[0, 0] == float(a != b)
