"""Tiny tokenizers and causal LMs built in-process, shared by the tests (no hub, no files)."""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from ctkd.data import Example

CORPUS = [
    "Context: The cat sat on the mat. Question: who sat on the mat? Answer: the cat",
    "Dialogue: #Person1#: hello there, how are you?\n#Person2#: fine, thanks. Summary: they greet each other",
    "Title: Paris Context: Paris is the capital of France. Question: what is the capital? Answer: Paris, France",
] * 20
ALPHABET = list(string.printable) + ["é", "ö", "▁"]
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
REAL_TOKENIZERS = ("gpt2", "llama2", "mistral", "qwen1.5")
TINY_VOCAB = 300


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2-like: byte-level BPE, no BOS added, ChatML chat template, no pad token."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(CORPUS, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|endoftext|>", additional_special_tokens=specials[1:]
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def metaspace_tokenizer(add_eos: bool = False) -> PreTrainedTokenizerFast:
    """SentencePiece-like: Metaspace BPE whose post-processor adds BOS (and EOS when asked), with pad."""
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], initial_alphabet=ALPHABET
    )
    tk.train_from_iterator(CORPUS, trainer)
    bos, eos = tk.token_to_id("<s>"), tk.token_to_id("</s>")
    single = "<s> $A </s>" if add_eos else "<s> $A"
    tk.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<s>", bos), ("</s>", eos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )




def tiny_llama(vocab_size: int, *, hidden: int = 32, layers: int = 2, seed: int = 0, tie: bool = True) -> LlamaForCausalLM:
    """A tiny random Llama causal LM (the student family of SmolLM2)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, tie_word_embeddings=tie)
    return LlamaForCausalLM(config)


def tiny_gemma3(vocab_size: int, *, hidden: int = 48, layers: int = 2, seed: int = 1) -> Gemma3ForCausalLM:
    """A tiny random Gemma-3 text model (the teacher family of Gemma-3-270m)."""
    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                              num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
                              max_position_embeddings=1024, sliding_window=64)
    return Gemma3ForCausalLM(config)


def make_examples(count: int = 12, task: str = "qed") -> list[Example]:
    """Small QA examples with distinct ids, short contexts and varied answers (non-ASCII included)."""
    answers = ["the cat", "Paris, France", "1901", "Wilhelm Conrad Röntgen , of Germany", "é and ö", "two\nlines"]
    return [
        Example(
            id=f"ex{i}",
            task=task,
            fields={
                "title": f"Title {i}",
                "context": f"Context sentence number {i}. The cat sat on the mat near Paris. " * (1 + i % 3),
                "question": f"question {i}: who sat?",
            },
            target=answers[i % len(answers)],
            references=[answers[i % len(answers)]],
        )
        for i in range(count)
    ]
