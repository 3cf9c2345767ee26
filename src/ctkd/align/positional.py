"""Answer positions in order, and positional pairing of two answers.

The losses receive (B, T, V) logits and a shifted answer mask (B, T). Everything they compute lives on
answer positions only, so the first step is always the same: list each example's answer positions in
order, as a (B, L) index padded to the longest answer, plus the flat row index of every answer position
in the batch (N = total answer tokens). No Python loop over examples or positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class AnswerIndex:
    """Where the answer positions of a batch are.

    Attributes:
        position: (B, L) long, position p of the j-th answer token of each example (0 on padding).
        valid: (B, L) bool, True for real answer tokens.
        lengths: (B,) long, answer length of each example.
        flat: (N,) long, row index ``b * T + p`` of every answer position, example-major, in order.
        slot: (N,) long, index ``b * L + j`` of each of those rows in the packed (B, L) layout.
        seq: (N,) long, example b of each of those rows.
    """

    position: Tensor
    valid: Tensor
    lengths: Tensor
    flat: Tensor
    slot: Tensor
    seq: Tensor

    @property
    def batch_size(self) -> int:
        return int(self.valid.shape[0])

    @property
    def max_len(self) -> int:
        return int(self.valid.shape[1])

    @property
    def num_tokens(self) -> int:
        return int(self.flat.numel())

    def pack(self, rows: Tensor, fill: float = 0.0) -> Tensor:
        """Scatter per-row values (N, ...) into the padded layout (B, L, ...); differentiable."""
        out = rows.new_full((self.batch_size * self.max_len, *rows.shape[1:]), fill)
        out = out.index_copy(0, self.slot, rows)
        return out.view(self.batch_size, self.max_len, *rows.shape[1:])

    def unpack(self, packed: Tensor) -> Tensor:
        """Inverse of :meth:`pack`: (B, L, ...) -> (N, ...)."""
        return packed.reshape(self.batch_size * self.max_len, *packed.shape[2:]).index_select(0, self.slot)


def answer_index(mask: Tensor) -> AnswerIndex:
    """Index the True positions of a (B, T) bool mask, in order, per example.

    Args:
        mask: (B, T) bool answer mask.

    Returns:
        An :class:`AnswerIndex`; L is the longest answer in the batch (0 when the mask is all False).
    """
    if mask.dim() != 2:
        raise ValueError(f"answer mask must be (B, T), got shape {tuple(mask.shape)}")
    mask = mask.bool()
    batch, length = mask.shape
    lengths = mask.sum(dim=1)
    max_len = int(lengths.max()) if batch > 0 else 0
    b, p = mask.nonzero(as_tuple=True)  # row-major: example by example, positions ascending
    j = (mask.cumsum(dim=1) - 1)[b, p]
    position = torch.zeros(batch, max_len, dtype=torch.long, device=mask.device)
    position[b, j] = p
    valid = torch.arange(max_len, device=mask.device).unsqueeze(0) < lengths.unsqueeze(1)
    return AnswerIndex(
        position=position,
        valid=valid,
        lengths=lengths,
        flat=b * length + p,
        slot=b * max_len + j,
        seq=b,
    )


def paired_prefix(student: AnswerIndex, teacher: AnswerIndex) -> tuple[int, Tensor]:
    """Positional pairing: the j-th student answer token with the j-th teacher answer token.

    Returns:
        ``(L, valid)`` where L = min of the two padded answer lengths and ``valid`` (B, L) is True
        where both examples have a j-th answer token (so each example is cut to its shorter answer).
    """
    length = min(student.max_len, teacher.max_len)
    return length, student.valid[:, :length] & teacher.valid[:, :length]
