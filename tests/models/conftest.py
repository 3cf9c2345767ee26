"""Tiny in-process models and tokenizers for the ctkd.models tests.

* ``make_tokenizer``: a byte-level BPE trained in-process on a few sentences (a few ms).
* ``make_model_folder``: a 1-layer Llama saved with its tokenizer, optionally with padded
  embedding rows, or a tokenizer without a pad token.
* ``write_tiny_gguf``: a 2-layer Llama written as a float32 GGUF file with a byte-level vocabulary,
  in the layout llama.cpp uses (tensor names, metadata keys), so transformers' GGUF loader and our
  conversion run on it exactly as on the real files, in about a second.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "the cat sat on the mat",
    "the dog ate the bone",
    "a quick brown fox jumps over the lazy dog",
    "distillation moves knowledge from a teacher to a student",
] * 4

SPECIALS = ["<unk>", "<s>", "</s>"]
TINY_HIDDEN = 16


def make_tokenizer(vocab_size: int = 300, *, with_pad: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE with ``<unk> <s> </s>`` (ids 0, 1, 2) and ``vocab_size`` ids in all."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS, trainer)
    extra = {"pad_token": "<pad>"} if with_pad else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", **extra
    )
    return tokenizer


def make_model_folder(
    folder: Path,
    *,
    tokenizer: PreTrainedTokenizerFast | None = None,
    extra_rows: int = 0,
    rows: int | None = None,
    tie: bool = False,
) -> Path:
    """Save a 1-layer Llama (``len(tokenizer) + extra_rows`` embedding rows, or ``rows``) and its tokenizer."""
    tokenizer = tokenizer if tokenizer is not None else make_tokenizer()
    config = LlamaConfig(
        vocab_size=rows if rows is not None else len(tokenizer) + extra_rows,
        hidden_size=TINY_HIDDEN,
        intermediate_size=2 * TINY_HIDDEN,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_gguf(
    path: Path, *, tied: bool = True, seed: int = 0, layers: int = 2, placeholders: int = 0
) -> Path:
    """Write a tiny float32 Llama GGUF with a GPT-2-style byte-level vocabulary.

    The vocabulary is SmolLM2's three specials, the 256 byte symbols and a few merges; with no
    ``output.weight`` tensor the embeddings are tied, as in SmolLM2 and Gemma. ``placeholders``
    appends that many ``[PAD<id>]`` tokens of type UNUSED, as llama.cpp's converter pads Qwen2.5's
    vocabulary to its embedding rows.
    """
    import gguf

    from ctkd.models.vocab import _bytes_to_unicode

    rng = np.random.default_rng(seed)
    byte_symbols = _bytes_to_unicode()
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [byte_symbols[b] for b in range(256)]
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")]
    tokens += [left + right for left, right in merges]
    real = len(tokens)
    tokens += [f"[PAD{i}]" for i in range(real, real + placeholders)]
    control, normal, unused = 3, 1, 5  # llama.cpp token types
    heads, kv_heads, ffn = 4, 2, 2 * TINY_HIDDEN
    head_dim = TINY_HIDDEN // heads

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny llama")
    writer.add_context_length(64)
    writer.add_embedding_length(TINY_HIDDEN)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([control] * 3 + [normal] * (real - 3) + [unused] * placeholders)
    writer.add_token_merges([f"{left} {right}" for left, right in merges])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    def tensor(name: str, *shape: int, ones: bool = False) -> None:
        values = np.ones(shape, np.float32) if ones else (rng.standard_normal(shape) * 0.2).astype(np.float32)
        writer.add_tensor(name, values)

    tensor("token_embd.weight", len(tokens), TINY_HIDDEN)
    if not tied:
        tensor("output.weight", len(tokens), TINY_HIDDEN)
    tensor("output_norm.weight", TINY_HIDDEN, ones=True)
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", TINY_HIDDEN, ones=True)
        tensor(f"blk.{i}.attn_q.weight", heads * head_dim, TINY_HIDDEN)
        tensor(f"blk.{i}.attn_k.weight", kv_heads * head_dim, TINY_HIDDEN)
        tensor(f"blk.{i}.attn_v.weight", kv_heads * head_dim, TINY_HIDDEN)
        tensor(f"blk.{i}.attn_output.weight", TINY_HIDDEN, heads * head_dim)
        tensor(f"blk.{i}.ffn_norm.weight", TINY_HIDDEN, ones=True)
        tensor(f"blk.{i}.ffn_gate.weight", ffn, TINY_HIDDEN)
        tensor(f"blk.{i}.ffn_up.weight", ffn, TINY_HIDDEN)
        tensor(f"blk.{i}.ffn_down.weight", TINY_HIDDEN, ffn)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


TINY_GGUF_VOCAB = 3 + 256 + 5
"""Vocabulary size of :func:`write_tiny_gguf`'s file."""


@pytest.fixture
def tiny() -> SimpleNamespace:
    """The builders above, for tests: ``tiny.make_tokenizer``, ``tiny.make_model_folder``, ``tiny.write_gguf``."""
    return SimpleNamespace(
        make_tokenizer=make_tokenizer,
        make_model_folder=make_model_folder,
        write_gguf=write_tiny_gguf,
        gguf_vocab=TINY_GGUF_VOCAB,
    )


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    """A tiny tied-embedding GGUF file in its own folder."""
    folder = tmp_path / "ggufs"
    folder.mkdir()
    return write_tiny_gguf(folder / "tiny-llama.gguf")


@pytest.fixture
def cache_root(tmp_path: Path) -> Path:
    return tmp_path / "ctkd-cache"


@pytest.fixture(autouse=True)
def _no_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep every test's conversions out of the real per-user cache."""
    monkeypatch.setenv("CTKD_CACHE", str(tmp_path / "env-cache"))
