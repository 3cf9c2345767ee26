"""Fixtures for teacher tests (as for training): a tiny student/teacher pair with different tokenizers, prepared features."""

from __future__ import annotations

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
