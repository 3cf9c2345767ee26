"""Typed containers passed between the stages of the pipeline.

Dimension legend used in every docstring of the package:

====  ==========================================================================
B     batch size (number of examples)
T     sequence length, prompt + answer, padded (``Ts`` student, ``Tt`` teacher)
V     vocabulary size (``Vs`` student, ``Vt`` teacher)
L     answer length in tokens, answer positions only, padded to the batch's longest
K     number of kept (top-k) vocabulary columns
H     hidden size
N     number of answer positions in the whole batch (sum of the answer lengths)
====  ==========================================================================

Mask convention (the one the losses take): an *answer mask* ``(B, T)`` is True at position ``p`` when
the logits at ``p`` are the distribution of an answer token, i.e. when token ``p + 1`` belongs to the
answer (logits are already shifted). Labels follow the same convention: ``labels[b, p]`` is the id of
token ``p + 1`` where the answer mask is True and ``-100`` elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

IGNORE_INDEX = -100
"""Label value of positions that take no part in the cross-entropy (the Hugging Face convention)."""


@dataclass
class LossOutput:
    """What every loss returns, whatever its flags.

    Attributes:
        loss: scalar tensor, the value to minimise (already weighted over its components).
        components: named scalar tensors (detached or not) that make up ``loss``, for logging;
            for example ``{"had": ..., "sl": ..., "sd": ...}``.
        num_tokens: number of answer positions the loss was averaged over (its normaliser), so a
            training step can re-weight correctly under gradient accumulation.
    """

    loss: Tensor
    components: dict[str, Tensor] = field(default_factory=dict)
    num_tokens: int = 0


@dataclass
class SpanAlignment:
    """Groups of answer tokens that cover the same text on both sides.

    Groups are numbered ``0 .. G_b - 1`` in text order within each example; every answer token belongs
    to exactly one group, and a group holds one or more contiguous tokens on each side (byte-offset
    alignment gives monotone, contiguous groups).

    Attributes:
        student_group: (B, Ls) long, group id of the j-th student answer token; -1 on padding.
        teacher_group: (B, Lt) long, group id of the j-th teacher answer token; -1 on padding.
        num_groups: (B,) long, number of groups of each example.
    """

    student_group: Tensor
    teacher_group: Tensor
    num_groups: Tensor

    def to(self, device: torch.device | str) -> "SpanAlignment":
        return SpanAlignment(
            self.student_group.to(device), self.teacher_group.to(device), self.num_groups.to(device)
        )


@dataclass
class TokenizedSide:
    """One model's view of a batch: its own prompt and answer, tokenized by its own tokenizer.

    Attributes:
        input_ids: (B, T) long, prompt followed by answer, right-padded with the pad id.
        attention_mask: (B, T) long, 1 on real tokens.
        answer_mask: (B, T) bool, True at position p when token p + 1 is an answer token (shifted).
        labels: (B, T) long, id of token p + 1 where ``answer_mask`` is True, else ``IGNORE_INDEX``.
    """

    input_ids: Tensor
    attention_mask: Tensor
    answer_mask: Tensor
    labels: Tensor

    def to(self, device: torch.device | str) -> "TokenizedSide":
        return TokenizedSide(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.answer_mask, self.labels)))

    @property
    def answer_lengths(self) -> Tensor:
        """(B,) long, number of answer tokens of each example."""
        return self.answer_mask.sum(dim=1)


@dataclass
class DistillBatch:
    """Everything one training step needs, produced by the two-tokenizer collator on the CPU.

    Attributes:
        student: the student's tokenization (zero-shot prompt + answer).
        teacher: the teacher's tokenization (its own prompt, usually few-shot + answer).
        alignment: optional byte-offset span alignment between the two answers.
        example_ids: identifiers of the examples, in batch order (for caches and logs).
        extras: method-specific tensors computed in the collator (for instance MinED's
            token alignment), keyed by name; empty when no method asks for any.
    """

    student: TokenizedSide
    teacher: TokenizedSide
    alignment: SpanAlignment | None = None
    example_ids: list[str] = field(default_factory=list)
    extras: dict[str, Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "DistillBatch":
        return DistillBatch(
            student=self.student.to(device),
            teacher=self.teacher.to(device),
            alignment=None if self.alignment is None else self.alignment.to(device),
            example_ids=list(self.example_ids),
            extras={k: v.to(device) for k, v in self.extras.items()},
        )

    def __len__(self) -> int:
        return int(self.student.input_ids.shape[0])


@dataclass
class RankedTopK:
    """One side's token-level signal for MultiLevelOT: ranked, truncated log-probabilities per answer position.

    This is all MultiLevelOT needs from the teacher, so it is also what a teacher cache stores for it.

    Attributes:
        ids: (B, L, K) long, the vocabulary column behind each kept entry, in rank order (for sequence- or
            batch-level ranking the same K ids repeat along L, often as an expanded view).
        logp_token: (B, L, K) float32, log-probabilities at the token-level temperature at those columns.
        logp_sd: (B, L, K) float32, log-probabilities at the sequence-level (Sinkhorn cost) temperature.
        valid: (B, L) bool, True on real answer positions.
    """

    ids: Tensor
    logp_token: Tensor
    logp_sd: Tensor
    valid: Tensor

    @property
    def lengths(self) -> Tensor:
        return self.valid.sum(dim=1)

    def to(self, device: torch.device | str) -> "RankedTopK":
        return RankedTopK(*(t.to(device) for t in (self.ids, self.logp_token, self.logp_sd, self.valid)))
