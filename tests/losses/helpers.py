"""Random loss inputs for tests: logits, shifted answer masks of different lengths, labels."""

from __future__ import annotations

import torch

from ctkd.types import IGNORE_INDEX


def answer_mask(lengths: list[int], starts: list[int], total: int) -> torch.Tensor:
    mask = torch.zeros(len(lengths), total, dtype=torch.bool)
    for b, (start, length) in enumerate(zip(starts, lengths)):
        mask[b, start:start + length] = True
    return mask


def make_inputs(*, batch=3, ts=12, tt=15, vs=70, vt=90, s_len=(5, 3, 6), t_len=(7, 2, 6), seed=0,
                scale=3.0):
    gen = torch.Generator().manual_seed(seed)
    student = (torch.randn(batch, ts, vs, generator=gen) * scale).requires_grad_()
    teacher = (torch.randn(batch, tt, vt, generator=gen) * scale).requires_grad_()
    s_mask = answer_mask(list(s_len[:batch]), [ts - 1 - n for n in s_len[:batch]], ts)
    t_mask = answer_mask(list(t_len[:batch]), [tt - 2 - n for n in t_len[:batch]], tt)
    labels = torch.full((batch, ts), IGNORE_INDEX)
    labels[s_mask] = torch.randint(0, vs, (int(s_mask.sum()),), generator=gen)
    return student, teacher, s_mask, t_mask, labels
