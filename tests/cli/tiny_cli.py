"""Data of the ``ctkd eval`` / ``ctkd generate`` tests: tiny task folders in the original layouts."""

from __future__ import annotations

ANSWERS = ["the cat", "Paris", "in 1901", "on the mat", "two dogs", "blue"]
JSONL_COUNTS = {"train": 8, "validation": 4}
QED_COUNTS = {"train": 6, "validation": 3}


def qed_row(split: str, i: int) -> dict:
    """One row in the original QED layout (``original_nq_answers``: annotations of spans)."""
    answer = ANSWERS[i % len(ANSWERS)]
    return {
        "example_id": f"qed-{split}-{i}",
        "title_text": f"Title {i}",
        "paragraph_text": f"The cat sat on the {split} mat {i}. {answer} was the answer.",
        "question_text": f"question {i}: who sat?",
        "original_nq_answers": [[{"start": 0, "end": len(answer), "string": answer}]],
    }
