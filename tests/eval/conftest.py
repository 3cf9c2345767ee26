"""Tiny in-process tokenizer and causal LMs for the evaluation tests (no downloads, CPU, milliseconds)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    "Context: The cat sat on the mat.\nQuestion: Where did the cat sit?\nAnswer: on the mat\n",
    "Dialogue: #Person1#: Hello there. #Person2#: Hi, how are you?\nSummary: They greet each other.\n",
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine.\n",
    "Once upon a time a princess lived in a castle by the sea, and she was happy.\n",
]
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_end|>"]


def build_tiny_tokenizer(add_bos: bool = True) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style) trained on a few sentences; BOS ``<s>`` added in front when asked."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    if add_bos:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_end|>"],
    )


def build_tiny_llama(
    tokenizer, *, seed: int = 0, init_std: float = 0.5, hidden_size: int = 32
) -> LlamaForCausalLM:
    """A 2-layer Llama with random weights; a large ``init_std`` keeps greedy argmax margins wide."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=init_std,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer) -> LlamaForCausalLM:
    return build_tiny_llama(tiny_tokenizer)


def build_bigram_llama(tokenizer, successor: dict[int, int], *, hidden_size: int = 32) -> LlamaForCausalLM:
    """A Llama whose greedy next token depends only on the last token: ``successor[last]``.

    Attention and MLP outputs are zeroed (``o_proj``, ``down_proj``), so the final hidden state is the
    last token's embedding. Source tokens get orthonormal embeddings and the LM-head row of
    ``successor[x]`` is ``margin * e_x``, so ``successor[x]`` wins the argmax by ``margin * sqrt(H)``
    and every other logit is 0: generation follows the chains of ``successor`` exactly, in any dtype.
    """
    if len(successor) > hidden_size:
        raise ValueError(f"{len(successor)} chain tokens need hidden_size >= {len(successor)}")
    model = build_tiny_llama(tokenizer, init_std=0.02, hidden_size=hidden_size)
    margin = 4.0
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        basis, _ = torch.linalg.qr(torch.randn(hidden_size, hidden_size, generator=torch.Generator().manual_seed(1)))
        head = torch.zeros_like(model.lm_head.weight)
        for k, (source, target) in enumerate(successor.items()):
            model.model.embed_tokens.weight[source] = basis[:, k]
            head[target] += margin * basis[:, k]
        model.lm_head.weight.copy_(head)
    return model


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run ~10x faster on one thread: with two cores shared by other processes, intra-op
    threads mostly wait on each other (measured: 0.15 s vs 1.5-6 s for the same 5-prompt generation)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
