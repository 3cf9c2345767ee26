"""Vocabulary facts and the project's vocabulary policy.

The policy (applied everywhere in ctkd)
---------------------------------------
A model's embedding matrix often has more rows than its tokenizer has ids: Qwen2.5-7B pads 151,665
token ids to 152,064 rows, for instance, so that the matrix shape is a multiple of a kernel-friendly
number. The extra rows are never trained towards anything and the tokenizer can never produce their
ids. ctkd therefore defines

    ``vocab_size = 1 + max(id for id in tokenizer.get_vocab().values())``, not counting a trailing run
    of llama.cpp vocabulary placeholders ``[PAD<id>]``,

the number of ids the tokenizer can produce, added tokens included. For a tokenizer read from
``tokenizer.json`` this equals ``len(tokenizer)`` (which counts the added tokens; it would differ
only if the id space had holes, and then the larger number is the safe one). It is *not*
``tokenizer.vocab_size``, which in transformers counts the base vocabulary without added tokens
(151,643 for Qwen 1.5, not 151,646).

The placeholder rule matters for GGUF files: llama.cpp's converter pads the token list to the
embedding rows with ordinary (non-added) tokens spelled ``[PAD151665]``, ``[PAD151666]``, ...,
which no text can produce (the pre-tokenizer splits ``[PAD151665]`` into pieces). Qwen2.5-Coder-0.5B's
GGUF tokenizer lists 151,936 tokens of which the last 271 are such placeholders; the policy gives
151,665, the same as the hub tokenizer, so the model's vocabulary does not depend on where it was
loaded from.

**Logits are sliced to the real vocabulary** before any softmax, top-k or loss:
``vocab_logits(logits, vocab_size) = logits[..., :vocab_size]``, and a loss that builds logits from
hidden states uses ``output_embedding(model, vocab_size)``, the first ``vocab_size`` rows of the
output projection. A tokenizer with *more* ids than the model has embedding rows is an error (the
model cannot score those tokens); :func:`check_vocab_fits` raises it, and ``load_model`` offers to
grow the embedding instead when asked.

Normalised vocabularies
-----------------------
Tokenizer families spell the same text differently: GPT-2-style byte-level BPE writes a leading
space as ``Ġ`` and every byte through a printable stand-in character, SentencePiece writes it as
``▁`` and falls back to ``<0xNN>`` byte tokens. :func:`normalised_vocab` maps every token to the
text it stands for so that vocabularies can be compared (:func:`vocab_overlap`):

* byte-level tokens are mapped back to their bytes and decoded as UTF-8; a byte that is not part of
  a complete UTF-8 character is written ``<0xNN>`` (upper-case hex), the SentencePiece spelling, so
  the two families agree on lone bytes;
* SentencePiece tokens have ``▁`` replaced by a space; byte-fallback tokens ``<0xNN>`` below 0x80 become
  their ASCII character, the others stay ``<0xNN>``;
* added tokens (``<|im_end|>``, ``<start_of_turn>``) are kept as the raw text they match, with the
  SentencePiece ``▁`` replacement when they are matched against normalised text;
* any other tokenizer gets ``Ġ`` and ``▁`` replaced by a space.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

TokenizerKind = Literal["byte_level", "sentencepiece", "other"]

SPACE_MARKERS = ("\u0120", "\u2581")
"""``Ġ`` (byte-level BPE's spelling of the space byte) and ``▁`` (SentencePiece's space marker)."""

_SENTENCEPIECE_SPACE = "\u2581"
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_ASCII_LIMIT = 0x80
_HEX_BYTE_ERRORS = "ctkd-hex-byte"


def _hex_byte_errors(error: UnicodeError) -> tuple[str, int]:
    """Codec error handler: write each undecodable byte as ``<0xNN>`` (SentencePiece's byte spelling)."""
    if not isinstance(error, UnicodeDecodeError):
        raise error
    bad = error.object[error.start : error.end]
    return "".join(f"<0x{byte:02X}>" for byte in bad), error.end


codecs.register_error(_HEX_BYTE_ERRORS, _hex_byte_errors)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters.

    Bytes that are printable (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to themselves; the other 68
    map, in order, to code points 256, 257, ... (so the space byte 0x20 becomes ``Ġ`` U+0120 and the
    newline 0x0A becomes ``Ċ`` U+010A). Written from the published definition (Radford et al. 2019).
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    mapping = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


_BYTE_SYMBOLS_TO_LATIN1 = str.maketrans({char: chr(byte) for byte, char in _bytes_to_unicode().items()})
"""``str.translate`` table from byte symbols to the Latin-1 character of the same byte value."""


# --------------------------------------------------------------------------------------------------
# The policy
# --------------------------------------------------------------------------------------------------


def policy_vocab_size(tokenizer: PreTrainedTokenizerBase) -> int:
    """Number of ids the tokenizer can produce: ``1 + max id`` over its vocabulary and added tokens,
    less a trailing run of llama.cpp placeholders ``[PAD<id>]``.

    Equals ``len(tokenizer)`` for tokenizers whose ids are contiguous and carry no placeholders;
    see the module docstring for why this, not ``tokenizer.vocab_size``, is the policy value.
    """
    return _policy_size(tokenizer.get_vocab(), tokenizer)


def _policy_size(vocab: dict[str, int], tokenizer: PreTrainedTokenizerBase) -> int:
    if not vocab:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has an empty vocabulary")
    size = max(vocab.values()) + 1
    added = set(tokenizer.added_tokens_decoder)
    while size > 1 and (size - 1) not in added and vocab.get(f"[PAD{size - 1}]") == size - 1:
        size -= 1
    return size


def check_vocab_fits(vocab_size: int, embedding_rows: int, name: str = "model") -> None:
    """Raise ``ValueError`` when the tokenizer can produce ids the model has no embedding row for."""
    if vocab_size > embedding_rows:
        missing = (
            f"id {embedding_rows}" if vocab_size == embedding_rows + 1 else f"ids {embedding_rows}..{vocab_size - 1}"
        )
        raise ValueError(
            f"{name}: the tokenizer can produce {vocab_size} token ids but the model has only "
            f"{embedding_rows} embedding rows, so {missing} cannot be embedded or scored. Use the "
            "tokenizer that was trained with this model, or grow the embedding with "
            "load_model(..., resize_embeddings=True) (new rows are drawn around the mean embedding "
            "and are untrained)."
        )


def vocab_logits(logits: Tensor, vocab_size: int, *, contiguous: bool = True) -> Tensor:
    """Slice logits to the real vocabulary: ``logits[..., :vocab_size]``.

    Args:
        logits: (..., R) scores over the model's ``R >= vocab_size`` embedding rows.
        vocab_size: the policy vocabulary size (:func:`policy_vocab_size`).
        contiguous: when columns are dropped, return a contiguous copy (one extra ``(..., V)``
            buffer, but every later softmax / gather reads it at full speed); ``False`` returns the
            strided view. When nothing is dropped the input tensor itself is returned either way.

    Returns:
        (..., V) the logits of the ids the tokenizer can produce; gradients flow to ``logits``.
    """
    rows = logits.shape[-1]
    if vocab_size > rows:
        raise ValueError(
            f"vocab_size={vocab_size} is larger than the logits' last dimension {rows}; the model "
            "cannot score every token id (see ctkd.models.check_vocab_fits)"
        )
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if vocab_size == rows:
        return logits
    sliced = logits[..., :vocab_size]
    return sliced.contiguous() if contiguous else sliced


def output_embedding(model: PreTrainedModel, vocab_size: int) -> Tensor:
    """Rows ``[:vocab_size]`` of the model's output projection (the LM head), a view with gradient.

    ``hidden @ output_embedding(model, V).T`` reproduces ``vocab_logits(model(...).logits, V)`` for
    models whose head is a plain bias-free linear map, which holds for Llama, Qwen2 and Gemma-3
    (Gemma-2's ``final_logit_softcapping`` would additionally apply ``c * tanh(logits / c)``).

    Args:
        model: a causal LM.
        vocab_size: the policy vocabulary size.

    Returns:
        (V, H) weight; tied models return rows of the input embedding itself.
    """
    head = model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(
            f"{type(model).__name__} has no linear output embedding (got {type(head).__name__}); "
            "compute logits with the model's forward instead"
        )
    if head.bias is not None:
        raise ValueError(
            f"{type(model).__name__}'s LM head has a bias, so logits are not hidden @ W.T alone; "
            "compute logits with the model's forward instead"
        )
    check_vocab_fits(vocab_size, head.weight.shape[0], type(model).__name__)
    return head.weight[:vocab_size]


# --------------------------------------------------------------------------------------------------
# Facts for `ctkd inspect`
# --------------------------------------------------------------------------------------------------


def tokenizer_kind(tokenizer: PreTrainedTokenizerBase) -> TokenizerKind:
    """How the tokenizer spells text: ``byte_level`` (GPT-2 style), ``sentencepiece`` (``▁``), ``other``.

    Read from the fast tokenizer's decoder (a ``ByteLevel`` decoder, or a ``Metaspace`` /
    ``▁``-replacing / ``ByteFallback`` one); tokenizers without a fast backend are ``other``.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None) if backend is not None else None
    if decoder is None:
        return "other"
    spec = json.loads(decoder.__getstate__())
    types: list[str] = []
    replaces_marker = False

    def walk(node: dict) -> None:
        nonlocal replaces_marker
        types.append(node.get("type", ""))
        if node.get("type") == "Replace" and node.get("pattern", {}).get("String") == _SENTENCEPIECE_SPACE:
            replaces_marker = True
        for child in node.get("decoders", []) or []:
            walk(child)

    walk(spec)
    if "ByteLevel" in types:
        return "byte_level"
    if "Metaspace" in types or "ByteFallback" in types or replaces_marker:
        return "sentencepiece"
    return "other"


@dataclass(frozen=True)
class SpecialToken:
    """One named special token: its text and id (``None`` when the tokenizer has none)."""

    token: str | None
    id: int | None


@dataclass(frozen=True)
class VocabFacts:
    """What ``ctkd inspect`` reports about a tokenizer.

    Attributes:
        length: ``len(tokenizer)``, base vocabulary plus added tokens.
        vocab_size: the policy value, ``1 + max id`` less trailing ``[PAD<id>]`` placeholders (see
            the module docstring); ``length - vocab_size`` placeholders are left out.
        base_vocab_size: ``tokenizer.vocab_size``, the base vocabulary *without* added tokens.
        num_added_tokens: tokens added on top of the model vocabulary (specials, chat markers).
        kind: ``byte_level``, ``sentencepiece`` or ``other`` (:func:`tokenizer_kind`).
        special: the named special tokens ``bos``, ``eos``, ``pad``, ``unk``.
        additional_special_tokens: every other special token, sorted by id.
        has_chat_template: whether ``apply_chat_template`` will work without a template argument.
        adds_bos: whether plain ``tokenizer(text)`` prepends the BOS id.
        adds_eos: whether plain ``tokenizer(text)`` appends the EOS id.
    """

    length: int
    vocab_size: int
    base_vocab_size: int
    num_added_tokens: int
    kind: TokenizerKind
    special: dict[str, SpecialToken] = field(default_factory=dict)
    additional_special_tokens: list[str] = field(default_factory=list)
    has_chat_template: bool = False
    adds_bos: bool = False
    adds_eos: bool = False


_PROBE_TEXT = "a"
"""Text encoded to see which special tokens the tokenizer adds around plain text."""


def describe_vocab(tokenizer: PreTrainedTokenizerBase) -> VocabFacts:
    """Facts about a tokenizer's vocabulary and special tokens (see :class:`VocabFacts`)."""
    special: dict[str, SpecialToken] = {}
    named_ids: set[int] = set()
    for role in ("bos", "eos", "pad", "unk"):
        token = getattr(tokenizer, f"{role}_token", None)
        token_id = getattr(tokenizer, f"{role}_token_id", None) if token is not None else None
        special[role] = SpecialToken(token=token, id=token_id)
        if token_id is not None:
            named_ids.add(token_id)
    all_special = set(tokenizer.all_special_tokens)
    for added in tokenizer.added_tokens_decoder.values():
        if added.special:
            all_special.add(added.content)
    vocab = tokenizer.get_vocab()
    additional = sorted(
        (tok for tok in all_special if tok in vocab and vocab[tok] not in named_ids),
        key=lambda tok: vocab[tok],
    )
    probe = tokenizer(_PROBE_TEXT, add_special_tokens=True)["input_ids"]
    bos_id, eos_id = special["bos"].id, special["eos"].id
    return VocabFacts(
        length=len(tokenizer),
        vocab_size=_policy_size(vocab, tokenizer),
        base_vocab_size=int(tokenizer.vocab_size),
        num_added_tokens=len(tokenizer.get_added_vocab()),
        kind=tokenizer_kind(tokenizer),
        special=special,
        additional_special_tokens=additional,
        has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
        adds_bos=bos_id is not None and len(probe) > 0 and probe[0] == bos_id,
        adds_eos=eos_id is not None and len(probe) > 0 and probe[-1] == eos_id,
    )


# --------------------------------------------------------------------------------------------------
# Normalised vocabularies and their overlap
# --------------------------------------------------------------------------------------------------


def _byte_level_text(token: str) -> str:
    """Decode a byte-level BPE token to text; undecodable bytes become ``<0xNN>``."""
    try:
        raw = token.translate(_BYTE_SYMBOLS_TO_LATIN1).encode("latin-1")
    except UnicodeEncodeError:  # a character outside the byte alphabet: already plain text
        return token
    return raw.decode("utf-8", errors=_HEX_BYTE_ERRORS)


def _sentencepiece_text(token: str) -> str:
    """Replace ``▁`` by a space; ASCII byte-fallback tokens become their character."""
    match = _BYTE_TOKEN.match(token)
    if match:
        value = int(match.group(1), 16)
        return chr(value) if value < _ASCII_LIMIT else f"<0x{value:02X}>"
    return token.replace(_SENTENCEPIECE_SPACE, " ")


def _other_text(token: str) -> str:
    for marker in SPACE_MARKERS:
        token = token.replace(marker, " ")
    return token


def normalised_token_texts(tokenizer: PreTrainedTokenizerBase) -> dict[int, str]:
    """Map every id below the policy vocabulary size to the text it stands for, normalised as the
    module docstring describes (llama.cpp placeholders beyond it are left out)."""
    kind = tokenizer_kind(tokenizer)
    convert = {"byte_level": _byte_level_text, "sentencepiece": _sentencepiece_text, "other": _other_text}[kind]
    vocab = tokenizer.get_vocab()
    size = _policy_size(vocab, tokenizer)
    texts = {token_id: convert(token) for token, token_id in vocab.items() if token_id < size}
    for token_id, added in tokenizer.added_tokens_decoder.items():
        text = added.content
        if kind == "sentencepiece" and added.normalized:
            text = text.replace(_SENTENCEPIECE_SPACE, " ")
        texts[token_id] = text
    return texts


def normalised_vocab(tokenizer: PreTrainedTokenizerBase) -> set[str]:
    """The set of texts the tokenizer's tokens stand for, with space markers normalised.

    ``Ġthe`` (byte-level) and ``▁the`` (SentencePiece) both become ``" the"``; see the module
    docstring for byte tokens and added tokens. Distinct tokens may share a text (``<0x41>`` and
    ``A``), so the set can be smaller than the vocabulary.
    """
    return set(normalised_token_texts(tokenizer).values())


@dataclass(frozen=True)
class VocabOverlap:
    """Exact-string overlap of two normalised vocabularies.

    Attributes:
        size_a: number of distinct normalised texts of tokenizer A.
        size_b: same for B.
        shared: texts present in both.
        share_of_a: ``shared / size_a``, the fraction of A's texts that B also has as one token.
        share_of_b: ``shared / size_b``.
        jaccard: ``shared / |A ∪ B|``.
    """

    size_a: int
    size_b: int
    shared: int
    share_of_a: float
    share_of_b: float
    jaccard: float


def vocab_overlap(tokenizer_a: PreTrainedTokenizerBase, tokenizer_b: PreTrainedTokenizerBase) -> VocabOverlap:
    """Count the token texts two tokenizers share after :func:`normalised_vocab`."""
    vocab_a, vocab_b = normalised_vocab(tokenizer_a), normalised_vocab(tokenizer_b)
    shared = len(vocab_a & vocab_b)
    union = len(vocab_a | vocab_b)
    return VocabOverlap(
        size_a=len(vocab_a),
        size_b=len(vocab_b),
        shared=shared,
        share_of_a=shared / len(vocab_a) if vocab_a else 0.0,
        share_of_b=shared / len(vocab_b) if vocab_b else 0.0,
        jaccard=shared / union if union else 0.0,
    )
