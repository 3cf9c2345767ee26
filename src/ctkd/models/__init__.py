"""Load causal LMs (hub id, folder, GGUF file or short name) and state facts about their vocabularies.

Vocabulary policy, applied everywhere in ctkd: **logits are sliced to the real vocabulary**,
``vocab_size = 1 + max token id`` (the ids the tokenizer can produce, added tokens included, less
llama.cpp's trailing ``[PAD<id>]`` placeholders; equal to ``len(tokenizer)`` for a tokenizer.json
with contiguous ids), with :func:`vocab_logits` and :func:`output_embedding`.
Padded embedding rows beyond it are ignored; a tokenizer with more ids than embedding rows is an
error. Details in :mod:`ctkd.models.vocab`.

GGUF models are converted once into a trainable safetensors checkpoint under ``$CTKD_CACHE``
(default ``~/.cache/ctkd``); details in :mod:`ctkd.models.gguf_cache`.
"""

from .gguf_cache import (
    CACHE_ENV,
    GgufConversion,
    convert_gguf,
    converted_dir,
    default_cache_root,
    load_gguf_model,
    plain_model,
)
from .loading import (
    DTYPES,
    HubUnavailableError,
    LoadedModel,
    ModelRef,
    UnknownModelError,
    load_model,
    native_bf16,
    resolve_dtype,
    resolve_model,
)
from .registry import KNOWN_MODELS, GgufSource, KnownModel
from .vocab import (
    SpecialToken,
    VocabFacts,
    VocabOverlap,
    check_vocab_fits,
    describe_vocab,
    normalised_token_texts,
    normalised_vocab,
    output_embedding,
    policy_vocab_size,
    tokenizer_kind,
    vocab_logits,
    vocab_overlap,
)

__all__ = [
    "CACHE_ENV",
    "DTYPES",
    "KNOWN_MODELS",
    "GgufConversion",
    "GgufSource",
    "HubUnavailableError",
    "KnownModel",
    "LoadedModel",
    "ModelRef",
    "SpecialToken",
    "UnknownModelError",
    "VocabFacts",
    "VocabOverlap",
    "check_vocab_fits",
    "convert_gguf",
    "converted_dir",
    "default_cache_root",
    "describe_vocab",
    "load_gguf_model",
    "load_model",
    "native_bf16",
    "resolve_dtype",
    "normalised_token_texts",
    "normalised_vocab",
    "output_embedding",
    "plain_model",
    "policy_vocab_size",
    "resolve_model",
    "tokenizer_kind",
    "vocab_logits",
    "vocab_overlap",
]
