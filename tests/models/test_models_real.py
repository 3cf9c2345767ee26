"""Slow: convert the real SmolLM2 and Gemma-3-270m GGUF files (installed packages) into a temporary cache.

Run with ``python -m pytest tests/models/test_models_real.py -m slow -s`` (the timings are printed).
Each case dequantises its GGUF twice (once in the conversion, once as the reference): about 1-2
minutes for SmolLM2 and 3-8 minutes for Gemma on 2 cores.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch

from ctkd.models import KNOWN_MODELS, describe_vocab, load_gguf_model, load_model
from ctkd.models.gguf_cache import VERIFY_ATOL, embeddings_tied, read_marker

pytestmark = pytest.mark.slow

VOCAB = {"smollm2-135m-instruct": 49_152, "gemma-3-270m": 262_144}
"""Vocabulary sizes stated in docs/models.md (and by each model card)."""

TEXT = "The quick brown fox jumps over the lazy dog.\nDistillation transfers knowledge."
LOGIT_ATOL = 1e-4
"""fp32 logits of the converted and the GGUF-loaded model agree to this (same weights, same kernels)."""

STEP_SIZE = 1e-2
"""Length of the normalised gradient step in the training check; first-order decrease dominates."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ctkd-cache")


def _installed(name: str) -> None:
    entry = KNOWN_MODELS[name]
    if entry.locate() is None:
        pytest.skip(f"{name} is not installed: {entry.pip_install}")


@pytest.mark.parametrize("name", list(VOCAB))
def test_real_gguf_conversion_cache_and_training(name: str, cache: Path) -> None:
    _installed(name)
    start = time.perf_counter()
    teacher = load_model(name, cache_dir=cache, role="teacher")
    convert_seconds = time.perf_counter() - start
    assert teacher.source == "gguf"
    assert teacher.vocab_size == teacher.embedding_rows == VOCAB[name] == KNOWN_MODELS[name].vocab_size
    assert embeddings_tied(teacher.model) and teacher.model.config.tie_word_embeddings
    assert read_marker(teacher.path)["max_logit_difference"] <= VERIFY_ATOL

    # The converted model computes the GGUF-loaded model's logits on real text.
    reference, reference_tokenizer = load_gguf_model(teacher.gguf_path)
    ids = teacher.tokenizer(TEXT, return_tensors="pt").input_ids
    assert torch.equal(ids, reference_tokenizer(TEXT, return_tensors="pt").input_ids)
    with torch.no_grad():
        torch.testing.assert_close(
            teacher.model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=LOGIT_ATOL
        )
    del reference

    # The second load reads the cache.
    start = time.perf_counter()
    student = load_model(name, cache_dir=cache, role="student")
    cached_seconds = time.perf_counter() - start
    assert (student.source, student.path) == ("cache", teacher.path)
    assert cached_seconds < convert_seconds / 2
    print(f"\n{name}: conversion + first load {convert_seconds:.1f} s, cached load {cached_seconds:.1f} s")

    # A training step works: the gradient is finite, reaches the (tied) embedding, and a small step
    # against it lowers the loss.
    loss = student.model(input_ids=ids, labels=ids).loss
    loss.backward()
    params = [p for p in student.model.parameters() if p.grad is not None]
    assert len(params) == len(list(student.model.parameters()))
    norm = torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)).item()
    assert math.isfinite(norm) and norm > 0
    assert student.model.get_input_embeddings().weight.grad.abs().sum() > 0
    with torch.no_grad():
        for p in params:
            p -= STEP_SIZE * p.grad / norm
        after = student.model(input_ids=ids, labels=ids).loss
    assert after < loss.detach()


def test_real_vocab_facts(cache: Path) -> None:
    for name in VOCAB:
        _installed(name)
    smol = load_model("smollm2-135m-instruct", cache_dir=cache, role="teacher").tokenizer
    gemma = load_model("gemma-3-270m", cache_dir=cache, role="teacher").tokenizer

    smol_facts, gemma_facts = describe_vocab(smol), describe_vocab(gemma)
    assert (smol_facts.length, smol_facts.vocab_size, smol_facts.kind) == (49_152, 49_152, "byte_level")
    assert smol_facts.has_chat_template and not smol_facts.adds_bos
    assert smol_facts.special["eos"].token == "<|im_end|>" and smol_facts.special["pad"].token == "<|im_end|>"
    assert (gemma_facts.length, gemma_facts.vocab_size, gemma_facts.kind) == (262_144, 262_144, "sentencepiece")
    assert gemma_facts.adds_bos and not gemma_facts.has_chat_template
    assert gemma_facts.special["pad"].token == "<pad>"
