"""Vocabulary policy helpers, vocabulary facts and normalised vocabularies (real tokenizer files)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ctkd.models import (
    describe_vocab,
    normalised_token_texts,
    normalised_vocab,
    output_embedding,
    policy_vocab_size,
    tokenizer_kind,
    vocab_logits,
    vocab_overlap,
)
from ctkd.models.vocab import _bytes_to_unicode

REAL_TOKENIZERS = ("gpt2", "llama2", "mistral", "qwen1.5")
SAMPLE_STRIDE = 97
"""Every 97th token id is compared with the tokenizer's own decoder (a few hundred per vocabulary)."""


@pytest.fixture(scope="module")
def real_tokenizers(shared_dir: Path) -> dict:
    return {name: AutoTokenizer.from_pretrained(shared_dir / "tokenizers" / name) for name in REAL_TOKENIZERS}


@pytest.fixture(scope="module")
def texts(real_tokenizers: dict) -> dict:
    """Normalised token texts of each real tokenizer, computed once for the module."""
    return {name: normalised_token_texts(tok) for name, tok in real_tokenizers.items()}


# --------------------------------------------------------------------------------------------------
# vocab_logits / output_embedding
# --------------------------------------------------------------------------------------------------


def test_vocab_logits_slices_only_when_needed() -> None:
    logits = torch.randn(2, 3, 10, requires_grad=True)
    assert vocab_logits(logits, 10) is logits
    sliced = vocab_logits(logits, 7)
    assert sliced.shape == (2, 3, 7) and sliced.is_contiguous()
    torch.testing.assert_close(sliced, logits[..., :7])
    view = vocab_logits(logits, 7, contiguous=False)
    assert not view.is_contiguous() and view.data_ptr() == logits.data_ptr()
    sliced.sum().backward()
    assert torch.all(logits.grad[..., :7] == 1) and torch.all(logits.grad[..., 7:] == 0)


def test_vocab_logits_refuses_more_ids_than_columns() -> None:
    with pytest.raises(ValueError, match="vocab_size=11 is larger than the logits' last dimension 10"):
        vocab_logits(torch.zeros(1, 10), 11)


@pytest.mark.parametrize("tie", [True, False])
def test_output_embedding_reproduces_sliced_logits(tie: bool) -> None:
    rows, vocab = 40, 33
    config = LlamaConfig(
        vocab_size=rows, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie,
    )
    model = LlamaForCausalLM(config)
    weight = output_embedding(model, vocab)
    assert weight.shape == (vocab, 8)
    if tie:
        assert weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    out = model(input_ids=torch.tensor([[1, 2, 3]]), output_hidden_states=True)
    torch.testing.assert_close(out.hidden_states[-1] @ weight.T, vocab_logits(out.logits, vocab))
    with pytest.raises(ValueError, match="41 token ids but the model has only 40"):
        output_embedding(model, rows + 1)


# --------------------------------------------------------------------------------------------------
# Facts about real tokenizers
# --------------------------------------------------------------------------------------------------


def test_byte_map_matches_gpt2_definition() -> None:
    assert _bytes_to_unicode() == bytes_to_unicode()


def test_policy_size_is_len_for_real_tokenizers(real_tokenizers: dict) -> None:
    for name, tok in real_tokenizers.items():
        assert policy_vocab_size(tok) == len(tok), name
    # Qwen's `vocab_size` attribute leaves out its 3 added tokens; the policy counts them.
    qwen = real_tokenizers["qwen1.5"]
    assert (qwen.vocab_size, policy_vocab_size(qwen)) == (151_643, 151_646)


def test_tokenizer_kinds(real_tokenizers: dict) -> None:
    kinds = {name: tokenizer_kind(tok) for name, tok in real_tokenizers.items()}
    assert kinds == {"gpt2": "byte_level", "llama2": "sentencepiece", "mistral": "sentencepiece", "qwen1.5": "byte_level"}


def test_describe_vocab_facts(real_tokenizers: dict) -> None:
    qwen = describe_vocab(real_tokenizers["qwen1.5"])
    assert (qwen.length, qwen.base_vocab_size, qwen.vocab_size, qwen.num_added_tokens) == (151_646, 151_643, 151_646, 3)
    assert qwen.has_chat_template and qwen.kind == "byte_level"
    assert qwen.special["eos"].token == "<|endoftext|>" and qwen.special["bos"].token is None
    assert qwen.additional_special_tokens == ["<|im_start|>", "<|im_end|>"]
    assert not qwen.adds_bos

    llama = describe_vocab(real_tokenizers["llama2"])
    assert llama.adds_bos and not llama.adds_eos and not llama.has_chat_template
    assert llama.special["bos"].id == 1 and llama.special["unk"].token == "<unk>"
    assert llama.special["pad"].token is None  # describe_vocab reports; it never sets a pad token

    gpt2 = describe_vocab(real_tokenizers["gpt2"])
    assert (gpt2.length, gpt2.kind, gpt2.adds_bos) == (50_257, "byte_level", False)


# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------


def test_space_markers_become_spaces(real_tokenizers: dict, texts: dict) -> None:
    gpt2_texts, llama_texts = texts["gpt2"], texts["llama2"]
    gpt2_vocab, llama_vocab = real_tokenizers["gpt2"].get_vocab(), real_tokenizers["llama2"].get_vocab()
    assert gpt2_texts[gpt2_vocab["Ġthe"]] == " the"
    assert gpt2_texts[gpt2_vocab["Ċ"]] == "\n"
    assert llama_texts[llama_vocab["▁the"]] == " the"
    assert llama_texts[llama_vocab["<0x0A>"]] == "\n"
    # A lone non-ASCII byte has the same spelling in both families.
    assert llama_texts[llama_vocab["<0xE2>"]] == "<0xE2>"
    assert gpt2_texts[gpt2_vocab[bytes_to_unicode()[0xE2]]] == "<0xE2>"
    # Added tokens keep their raw text.
    qwen_texts = texts["qwen1.5"]
    assert qwen_texts[real_tokenizers["qwen1.5"].convert_tokens_to_ids("<|im_end|>")] == "<|im_end|>"


@pytest.mark.parametrize("name", ["gpt2", "qwen1.5"])
def test_byte_level_texts_match_the_tokenizers_own_decoder(real_tokenizers: dict, texts: dict, name: str) -> None:
    tok, texts = real_tokenizers[name], texts[name]
    checked, sampled = 0, range(0, len(tok), SAMPLE_STRIDE)
    for token_id in sampled:
        decoded = tok.decode([token_id])
        if "\ufffd" in decoded:  # an incomplete UTF-8 sequence: the decoder replaces it, we spell bytes
            assert "<0x" in texts[token_id]
            continue
        assert texts[token_id] == decoded, (token_id, tok.convert_ids_to_tokens(token_id))
        checked += 1
    assert checked > 0.9 * len(sampled)


@pytest.mark.parametrize("name", ["llama2", "mistral"])
def test_sentencepiece_texts_match_the_tokenizers_own_decoder(real_tokenizers: dict, texts: dict, name: str) -> None:
    tok, texts = real_tokenizers[name], texts[name]
    anchor = tok.convert_tokens_to_ids("a")  # decoding "a" first keeps the decoder from stripping a leading space
    checked, sampled = 0, range(3, len(tok), SAMPLE_STRIDE)
    for token_id in sampled:
        decoded = tok.decode([anchor, token_id])
        if "\ufffd" in decoded:
            continue
        assert texts[token_id] == decoded[1:], (token_id, tok.convert_ids_to_tokens(token_id))
        checked += 1
    assert checked > 0.9 * len(sampled)


def test_vocab_overlap_properties(real_tokenizers: dict, texts: dict) -> None:
    gpt2, llama = real_tokenizers["gpt2"], real_tokenizers["llama2"]
    ab, ba = vocab_overlap(gpt2, llama), vocab_overlap(llama, gpt2)
    assert ab.shared == ba.shared and (ab.size_a, ab.size_b) == (ba.size_b, ba.size_a)
    set_a, set_b = set(texts["gpt2"].values()), set(texts["llama2"].values())
    assert normalised_vocab(gpt2) == set_a
    assert (ab.size_a, ab.size_b, ab.shared) == (len(set_a), len(set_b), len(set_a & set_b))
    assert ab.share_of_a == pytest.approx(ab.shared / ab.size_a)
    assert ab.jaccard == pytest.approx(ab.shared / (ab.size_a + ab.size_b - ab.shared))
    # Two different English vocabularies share many, but far from all, token texts.
    assert 0.2 < ab.share_of_b < 0.9
    assert {" the", " and", "\n", "<0xE2>"} <= set_a & set_b

    same = vocab_overlap(llama, llama)
    assert same.share_of_a == same.share_of_b == same.jaccard == 1.0
