"""Metrics against hand-computed values and against rouge-score called directly."""

from __future__ import annotations

import json

import pytest
from rouge_score import rouge_scorer

from ctkd.eval.metrics import (
    METRICS,
    TASK_METRIC,
    exact_match,
    normalize_answer,
    resolve_metric,
    rouge_lsum,
    split_sentences,
    token_f1,
)
from ctkd.eval.report import evaluate_predictions

# ------------------------------------------------------------------------------------------------
# normalisation, token F1, exact match (SQuAD v2.0 script semantics)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("an apple a day", "apple day"),
        ("U.S.A.", "usa"),  # punctuation deleted, not replaced by a space
        ("well-known", "wellknown"),
        ("  Theatre   of\tthe  absurd ", "theatre of absurd"),  # "the" only as a whole word
        ("A", ""),
        ("", ""),
    ],
)
def test_normalize_answer(text, expected):
    assert normalize_answer(text) == expected


def test_token_f1_case_punctuation_articles_are_ignored():
    assert token_f1("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0


def test_token_f1_partial_overlap_exact_arithmetic():
    # pred {big, red, barn, door}, ref {red, barn}: c = 2, P = 2/4, R = 2/2, F = 2 * .5 * 1 / 1.5 = 2/3
    assert token_f1("big red barn door", ["red barn"]) == pytest.approx(2 / 3)
    # repeated tokens count once per occurrence on both sides: c = min(3, 1) = 1, P = 1/3, R = 1/2,
    # F = 2 * (1/3)(1/2) / (5/6) = 2/5
    assert token_f1("red red red", ["red barn"]) == pytest.approx(2 / 5)
    # articles removed before counting: pred "the red barn" -> {red, barn}; ref "a barn" -> {barn};
    # c = 1, P = 1/2, R = 1, F = 2/3
    assert token_f1("the red barn", ["a barn"]) == pytest.approx(2 / 3)
    assert token_f1("green", ["red barn"]) == 0.0
    assert exact_match("big red barn door", ["red barn"]) == 0.0


def test_token_f1_takes_max_over_references():
    # against "x": 0; against "red": P = 1/4, R = 1, F = 2/5; against "red barn": 2/3
    assert token_f1("big red barn door", ["x", "red"]) == pytest.approx(2 / 5)
    assert token_f1("big red barn door", ["x", "red", "red barn"]) == pytest.approx(2 / 3)
    assert token_f1("red barn", ["big red barn door", "red barn"]) == 1.0
    assert exact_match("Red barn.", ["x", "red barn"]) == 1.0


def test_token_f1_empty_strings_follow_squad_v2():
    assert token_f1("", [""]) == 1.0
    assert token_f1("The.", ["a"]) == 1.0  # both normalise to no tokens
    assert token_f1("", ["paris"]) == 0.0
    assert token_f1("paris", [""]) == 0.0
    assert token_f1("", ["paris", ""]) == 1.0
    assert exact_match("", [""]) == 1.0


def test_metrics_reject_a_bare_string_or_no_references():
    with pytest.raises(TypeError, match="list of strings"):
        token_f1("paris", "paris")
    with pytest.raises(ValueError, match="at least one reference"):
        rouge_lsum("paris", [])


# ------------------------------------------------------------------------------------------------
# sentence splitting
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("Mr. Smith met Dr. Lee. They left.", ["Mr. Smith met Dr. Lee.", "They left."]),
        ("J. K. Rowling wrote it. Yes.", ["J. K. Rowling wrote it.", "Yes."]),
        ("Take the No. 16 bus. No. I won't.", ["Take the No. 16 bus.", "No.", "I won't."]),
        ("It costs 3.5 dollars. Cheap.", ["It costs 3.5 dollars.", "Cheap."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("Wait... What? Line one\nline two", ["Wait...", "What?", "Line one", "line two"]),
        ("  \n ", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_split_sentences_loses_no_text_on_dialogsum(shared_dir):
    path = shared_dir / "data" / "dialogsum" / "dialogsum.validation.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()[:100]]
    multi = 0
    for row in rows:
        summary = row["summary1"]
        sentences = split_sentences(summary)
        assert " ".join(sentences).split() == summary.split()
        multi += len(sentences) > 1
        # a split never falls after a title
        assert not any(s.endswith(("Mr.", "Mrs.", "Ms.", "Dr.")) for s in sentences)
    assert multi > 20  # most summaries have several sentences, so the split matters


# ------------------------------------------------------------------------------------------------
# ROUGE-Lsum
# ------------------------------------------------------------------------------------------------


def test_rouge_lsum_single_sentence_lcs_with_stemming():
    # stems: running -> run, runs -> run; 3-letter words are not stemmed.
    # ref [the, cat, run], pred [the, cat, was, run]: LCS 3, P = 3/4, R = 1, F = 2 * .75 / 1.75 = 6/7
    assert rouge_lsum("the cat was running", ["the cat runs"]) == pytest.approx(6 / 7)
    # without stemming LCS = 2 (the, cat): P = 1/2, R = 2/3, F = 4/7
    assert rouge_lsum("the cat was running", ["the cat runs"], use_stemmer=False) == pytest.approx(4 / 7)


def test_rouge_lsum_summary_level_union_lcs():
    # Lin (2004) section 3.2: r = w1..w5, c1 = w1 w2 w6 w7 w8, c2 = w1 w3 w8 w9 w5.
    # LCS(r, c1) = {w1, w2}, LCS(r, c2) = {w1, w3, w5}; union = {w1, w2, w3, w5}: 4 hits.
    # m = 5, n = 10: R = 4/5, P = 4/10, F = 2 * .4 * .8 / 1.2 = 8/15.
    ref = "one two three four five."
    pred = "One three eight nine five. One two six seven eight."
    assert rouge_lsum(pred, [ref]) == pytest.approx(8 / 15)
    # As one sentence the LCS is "one three five" (3): P = 3/10, R = 3/5, F = 0.4, so the split matters.
    assert rouge_lsum(pred.replace(".", ""), [ref]) == pytest.approx(0.4)


def test_rouge_lsum_max_over_references_and_empty_cases():
    assert rouge_lsum("the cat was running", ["dogs bark", "the cat runs"]) == pytest.approx(6 / 7)
    assert rouge_lsum("the cat", ["the cat"]) == 1.0
    assert rouge_lsum("", ["the cat"]) == 0.0
    assert rouge_lsum("the cat", [""]) == 0.0


DIALOG_CASES = [
    (
        "#Person1# asks Mr. Lee about the trip. He says it was fine. They plan another.",
        [
            "Mr. Lee tells #Person1# his trip was fine. They are planning another one.",
            "#Person1# and Mr. Lee talk about the trip.",
        ],
    ),
    (
        "Ms. Dawson takes a dictation. The memo bans instant messaging!",
        ["Ms. Dawson helps #Person1# to write a memo. The memo says instant messaging is banned."],
    ),
    ("They greet each other.", ["Two people greet each other. Then they chat about running."]),
]


@pytest.mark.parametrize(("prediction", "references"), DIALOG_CASES)
def test_rouge_lsum_matches_rouge_score_on_pre_split_text(prediction, references):
    scorer = rouge_scorer.RougeScorer(["rougeLsum"], use_stemmer=True)
    lines = lambda text: "\n".join(split_sentences(text))  # noqa: E731
    direct = scorer.score_multi([lines(r) for r in references], lines(prediction))["rougeLsum"].fmeasure
    assert rouge_lsum(prediction, references) == pytest.approx(direct, abs=1e-12)
    assert 0.0 < direct < 1.0


def test_references_score_perfectly_against_themselves(shared_dir):
    rows = [
        json.loads(line)
        for line in (shared_dir / "data" / "dialogsum" / "dialogsum.validation.jsonl").read_text().splitlines()[:30]
    ]
    for row in rows:
        assert rouge_lsum(row["summary1"], [row["summary1"]]) == pytest.approx(1.0)
        assert token_f1(row["summary1"], [row["summary2"], row["summary1"]]) == 1.0


# ------------------------------------------------------------------------------------------------
# registries and corpus scores
# ------------------------------------------------------------------------------------------------


def test_registries_are_consistent():
    assert set(METRICS) == {"token_f1", "rouge_lsum", "exact_match"}
    assert TASK_METRIC == {
        "qed": "token_f1",
        "dialogsum": "rouge_lsum",
        "fairytaleqa": "rouge_lsum",
        "jsonl": "rouge_lsum",
    }
    assert resolve_metric("qed") == "token_f1"
    assert resolve_metric("exact_match") == "exact_match"
    with pytest.raises(KeyError, match="tasks are .*metrics are"):
        resolve_metric("bleu")


def test_evaluate_predictions_mean_times_100():
    report = evaluate_predictions(
        "qed",
        ["big red barn door", "paris", ""],
        [["red barn"], ["Paris."], ["london"]],
        ids=["a", "b", "c"],
    )
    # per example: 2/3, 1, 0 -> mean 5/9 -> 55.56 %
    assert report.metric == "token_f1" and report.task == "qed" and report.n == 3
    assert report.per_example == pytest.approx([200 / 3, 100.0, 0.0])
    assert report.score == pytest.approx(500 / 9)
    assert report.ids == ["a", "b", "c"]
    assert evaluate_predictions("rouge_lsum", ["the cat"], [["the cat"]]).task is None


def test_evaluate_predictions_rejects_malformed_input():
    with pytest.raises(TypeError, match=r"references\[1\] is the string"):
        evaluate_predictions("qed", ["a", "b"], [["a"], "b"])
    with pytest.raises(ValueError, match="2 reference lists for 3 examples"):
        evaluate_predictions("qed", ["a", "b", "c"], [["a"], ["b"]])
    with pytest.raises(ValueError, match=r"references\[0\] is empty"):
        evaluate_predictions("qed", ["a"], [[]])
