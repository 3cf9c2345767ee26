"""Running a causal LM on one side of a batch, keeping only what the losses read: the answer positions.

A Hugging Face causal LM computes (B, T, V) logits for every position; with a long few-shot prompt and a
262k vocabulary that is gigabytes, and the losses only read answer positions. :func:`answer_forward` runs the
model for its final hidden states (asking the model for the logits of one position only), gathers the answer
positions into a packed (B, L, H) tensor, and applies the output head there: (B, L, V) logits, L = the longest
answer of the batch.

The packed layout is itself a valid loss input: ``answer_mask`` becomes (B, L) with the first
``lengths[b]`` positions True (the shifted convention still holds: packed position j holds the distribution of
answer token j). Logits are sliced to the tokenizer's real vocabulary (the project's vocabulary policy, see
:mod:`ctkd.models`); final-logit soft-capping (Gemma 2 style configs) is applied when the config asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ctkd.align import answer_index
from ctkd.types import IGNORE_INDEX, TokenizedSide


@dataclass
class AnswerOutputs:
    """One model's outputs at the answer positions of a batch, packed.

    Attributes:
        logits: (B, L, V) logits sliced to the real vocabulary (None when not asked for).
        mask: (B, L) bool, True on real answer positions (a loss's answer mask).
        labels: (B, L) long, the answer token each position predicts, ``IGNORE_INDEX`` on padding.
        hidden: (B, L, H) final hidden states (after the final norm), or None.
    """

    logits: Tensor | None
    mask: Tensor
    labels: Tensor
    hidden: Tensor | None


def output_head(model) -> torch.nn.Module:
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings; ctkd needs a causal LM with an LM head")
    return head


def head_parameters(model, vocab_size: int) -> tuple[Tensor, Tensor | None, float | None]:
    """The output head as data: (V, H) weight rows and (V,) bias (or None) of the real vocabulary, and the
    final-logit soft-capping (or None); :func:`head_logits` is ``cap(hidden @ weight.T + bias)``."""
    head = output_head(model)
    weight = head.weight[:vocab_size]
    bias = getattr(head, "bias", None)
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return weight, None if bias is None else bias[:vocab_size], (float(cap) if cap else None)


def head_logits(model, hidden: Tensor, vocab_size: int) -> Tensor:
    """Apply the model's output head (and soft-capping) to hidden states, sliced to ``vocab_size`` columns."""
    logits = output_head(model)(hidden)
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits[..., :vocab_size]


def final_hidden_states(model, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T, H) final hidden states, through the model's own forward (so DDP/FSDP wrappers see the call).

    Without gradients (the teacher), an unwrapped model's decoder runs alone: it returns the same last hidden
    state without keeping every layer's (``output_hidden_states``: 19 x (B, T, H) for Gemma-3-270m).
    """
    decoder = getattr(model, "get_decoder", None)
    if not torch.is_grad_enabled() and decoder is not None and decoder() is not None and decoder() is not model:
        return decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False,
                logits_to_keep=1)
    return out.hidden_states[-1]


def answer_forward(model, side: TokenizedSide, vocab_size: int, *, logits: bool = True,
                   hidden: bool = False) -> AnswerOutputs:
    """Run ``model`` on one side of a batch and return its packed answer-position outputs.

    Args:
        model: a causal LM (possibly wrapped by DDP); gradients flow when called outside ``no_grad``.
        side: the tokenized inputs of this model.
        vocab_size: the real vocabulary size (logits columns kept).
        logits: compute the (B, L, V) answer logits.
        hidden: also return the (B, L, H) answer hidden states.
    """
    states = final_hidden_states(model, side.input_ids, side.attention_mask)
    index = answer_index(side.answer_mask)
    seq_len = side.answer_mask.shape[1]
    b, p = index.seq, index.flat - index.seq * seq_len
    packed = index.pack(states[b, p])
    labels = index.pack(side.labels[b, p], fill=IGNORE_INDEX)
    unwrapped = getattr(model, "module", model)
    out_logits = head_logits(unwrapped, packed, vocab_size) if logits else None
    return AnswerOutputs(logits=out_logits, mask=index.valid, labels=labels, hidden=packed if hidden else None)
