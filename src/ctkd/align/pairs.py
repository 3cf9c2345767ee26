"""Pairing student and teacher answer positions for token-level loss terms.

Two pairings, both batched (no loop over examples):

- **positional** (the paper's, ULD's): the j-th student answer position with the j-th teacher answer
  position, each example cut to its shorter answer.
- **span** (from a :class:`ctkd.types.SpanAlignment`): one pair per aligned group. A group covers the same
  text on both sides but may hold several tokens on either side; ``span="first"`` pairs the first token of
  the group on each side (both distributions predict text that starts at the same byte, so they are
  comparable), ``span="mean"`` pairs the mean of the group's distributions on each side.

Inputs are *packed* per-position tensors (B, L, ...), as built by :meth:`ctkd.align.AnswerIndex.pack`.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ctkd.types import SpanAlignment

SPAN_MODES: tuple[str, ...] = ("first", "mean")


def positional_pairs(student: Tensor, teacher: Tensor, student_valid: Tensor, teacher_valid: Tensor
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """j-th with j-th: returns ``(student (B, P, ...), teacher (B, P, ...), valid (B, P))``, P = min lengths."""
    length = min(student.shape[1], teacher.shape[1])
    return student[:, :length], teacher[:, :length], student_valid[:, :length] & teacher_valid[:, :length]


def _group_reduce(packed: Tensor, group: Tensor, num_groups: int, span: str) -> Tensor:
    """(B, L, ...) per-token values -> (B, G, ...) per-group values (first token, or mean over the group)."""
    bsz, length = group.shape
    trailing = packed.shape[2:]
    valid = group >= 0
    flat_group = (torch.arange(bsz, device=group.device).unsqueeze(1) * num_groups + group.clamp_min(0))[valid]
    rows = packed[:, :length][valid]
    if span == "first":
        # position of the first token of each group: the smallest position j with that group id
        pos = torch.arange(length, device=group.device).expand(bsz, length)[valid]
        first = torch.full((bsz * num_groups,), length, dtype=torch.long, device=group.device)
        first = first.scatter_reduce(0, flat_group, pos, reduce="amin")
        batch_of = torch.arange(bsz * num_groups, device=group.device) // num_groups
        present = first < length
        out = packed.new_zeros(bsz * num_groups, *trailing)
        out[present] = packed[batch_of[present], first[present]]
        return out.view(bsz, num_groups, *trailing)
    total = packed.new_zeros(bsz * num_groups, *trailing).index_add(0, flat_group, rows)
    count = torch.zeros(bsz * num_groups, device=group.device, dtype=packed.dtype).index_add(
        0, flat_group, torch.ones_like(flat_group, dtype=packed.dtype))
    shape = (-1,) + (1,) * len(trailing)
    return (total / count.clamp_min(1).view(shape)).view(bsz, num_groups, *trailing)


def span_pairs(student: Tensor, teacher: Tensor, alignment: SpanAlignment,
               span: Literal["first", "mean"] = "first", *, student_lengths: Tensor | None = None,
               teacher_lengths: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One pair per aligned group: returns ``(student (B, G, ...), teacher (B, G, ...), valid (B, G))``.

    Args:
        student: (B, Ls, ...) packed student values; teacher: (B, Lt, ...) packed teacher values.
        alignment: the groups of each answer token (padding -1).
        span: ``"first"`` or ``"mean"`` (module docstring).
        student_lengths, teacher_lengths: (B,) answer lengths; when given, the alignment must cover exactly
            that many tokens on each side.
    """
    if span not in SPAN_MODES:
        raise ValueError(f"span must be one of {SPAN_MODES}, got {span!r}")
    sg, tg = alignment.student_group.to(student.device), alignment.teacher_group.to(student.device)
    if sg.shape[0] != student.shape[0] or sg.shape[1] > student.shape[1] or tg.shape[1] > teacher.shape[1]:
        raise ValueError(
            f"alignment does not match the answers: student_group {tuple(sg.shape)} vs student answers "
            f"{tuple(student.shape[:2])}, teacher_group {tuple(tg.shape)} vs teacher answers {tuple(teacher.shape[:2])}; "
            "build the alignment from the same batch (the collator does)"
        )
    if student_lengths is not None and teacher_lengths is not None:
        bad = ((sg >= 0).sum(1) != student_lengths.to(sg.device)) | ((tg >= 0).sum(1) != teacher_lengths.to(sg.device))
        if bool(bad.any()):
            b = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"alignment of example {b} covers {int((sg[b] >= 0).sum())} student / {int((tg[b] >= 0).sum())} teacher "
                f"tokens but the answer masks hold {int(student_lengths[b])} / {int(teacher_lengths[b])}; "
                "build the alignment from the same batch (the collator does)"
            )
    num_groups = max(1, int(alignment.num_groups.max()) if alignment.num_groups.numel() else 1)
    s = _group_reduce(student, sg, num_groups, span)
    t = _group_reduce(teacher, tg, num_groups, span)
    valid = torch.arange(num_groups, device=student.device).unsqueeze(0) < alignment.num_groups.to(student.device).unsqueeze(1)
    return s, t, valid
