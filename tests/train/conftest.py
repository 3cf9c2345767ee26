"""Fixtures for training tests: a tiny student/teacher pair with different tokenizers, prepared features."""

from __future__ import annotations

import json

import pytest
from tiny import byte_level_tokenizer, make_examples, metaspace_tokenizer, tiny_gemma3, tiny_llama

from ctkd.data import DistillCollator, SideConfig


@pytest.fixture(scope="session")
def pair_tokenizers():
    return byte_level_tokenizer(), metaspace_tokenizer()


@pytest.fixture
def tiny_pair(pair_tokenizers):
    s_tok, t_tok = pair_tokenizers
    return tiny_llama(len(s_tok)), tiny_gemma3(len(t_tok))


@pytest.fixture(scope="session")
def collator(pair_tokenizers):
    s_tok, t_tok = pair_tokenizers
    examples = make_examples(16)
    return DistillCollator.for_task("qed", s_tok, t_tok, shot_pool=examples, student=SideConfig(max_length=96),
                                    teacher=SideConfig(max_length=160), alignment=True, extras=("mined_alignment",))


@pytest.fixture(scope="session")
def features(collator):
    return collator.prepare_features(make_examples(8))


ANSWERS = ["the cat", "Paris", "in 1901", "on the mat", "two dogs", "blue"]


@pytest.fixture(scope="session")
def pair_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    s_tok, t_tok = byte_level_tokenizer(), metaspace_tokenizer()
    for name, tok, model in (("student", s_tok, tiny_llama(len(s_tok))), ("teacher", t_tok, tiny_gemma3(len(t_tok)))):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    data = root / "data"
    data.mkdir()
    for split, count in (("train", 8), ("validation", 4)):
        rows = [{"id": f"{split}{i}", "prompt": f"Context: The cat sat on the mat {i}.\nQuestion: who sat?\nAnswer:",
                 "response": ANSWERS[i % len(ANSWERS)]} for i in range(count)]
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root
