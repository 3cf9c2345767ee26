"""Fixtures for the data tests: tiny tokenizers trained in-process, the real ones from shared/, examples."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiny import CORPUS, REAL_TOKENIZERS, byte_level_tokenizer, make_examples, metaspace_tokenizer  # noqa: F401
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from ctkd.data import Example

@pytest.fixture(scope="session")
def tiny_byte_level() -> PreTrainedTokenizerFast:
    return byte_level_tokenizer()


@pytest.fixture(scope="session")
def tiny_metaspace() -> PreTrainedTokenizerFast:
    return metaspace_tokenizer()


@pytest.fixture(scope="session")
def tiny_adds_eos() -> PreTrainedTokenizerFast:
    return metaspace_tokenizer(add_eos=True)


class _LazyTokenizers(dict):
    """Loads a real tokenizer from shared/tokenizers on first use, then keeps it for the session."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, name: str):
        if name not in REAL_TOKENIZERS:
            raise KeyError(name)
        self[name] = AutoTokenizer.from_pretrained(self.root / name)
        return self[name]


@pytest.fixture(scope="session")
def real_tokenizers(shared_dir: Path) -> dict:
    """The real tokenizers of shared/tokenizers by folder name, each loaded once, when first used."""
    return _LazyTokenizers(shared_dir / "tokenizers")


@pytest.fixture
def examples() -> list[Example]:
    return make_examples()


@pytest.fixture
def example_factory():
    """:func:`make_examples`, for tests that need a given number of examples."""
    return make_examples
