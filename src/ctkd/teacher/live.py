"""A live teacher: the frozen model, run without gradients on the teacher's side of each batch."""

from __future__ import annotations

from typing import Any

import torch

from ctkd.forward import answer_forward, output_head
from ctkd.teacher.base import TeacherOutputs, TeacherSignal
from ctkd.teacher.chunked import teacher_head_logits
from ctkd.types import DistillBatch


class LiveTeacher(TeacherSignal):
    """Runs the teacher model on its own tokenization of the batch.

    Args:
        model: the teacher causal LM; put in eval mode, its parameters frozen.
        vocab_size: the teacher tokenizer's real vocabulary size (logit columns kept).
        chunk_size: answer positions per chunk of head logits (0: automatic; see :mod:`ctkd.teacher.chunked`).
        chunked: give losses that accept them (``accepts_head_logits``) chunked head logits instead of the full
            (B, L, V) answer logits. False builds the full logits for every loss (the reference for benchmarks).
    """

    def __init__(self, model, vocab_size: int, *, chunk_size: int = 0, chunked: bool = True) -> None:
        self.model = model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.vocab_size = int(vocab_size)
        if chunk_size < 0:
            raise ValueError(f"chunk_size must be >= 0 (0: automatic), got {chunk_size}")
        self.chunk_size = int(chunk_size)
        self.chunked = bool(chunked)

    def to(self, device) -> "LiveTeacher":
        self.model.to(device)
        return self

    def head_weight(self) -> torch.Tensor:
        return output_head(self.model).weight[: self.vocab_size].detach()

    @torch.no_grad()
    def outputs(self, batch: DistillBatch, *, hidden: bool = False) -> TeacherOutputs:
        """The full (B, L, V) answer logits (and hidden states when asked)."""
        out = answer_forward(self.model, batch.teacher, self.vocab_size, hidden=hidden)
        return TeacherOutputs(logits=out.logits, mask=out.mask, hidden=out.hidden)

    @torch.no_grad()
    def head_outputs(self, batch: DistillBatch, *, hidden: bool = False) -> TeacherOutputs:
        """The answer logits as :class:`ctkd.losses._vocab.HeadLogits` (``signal``): a (B, L, V) tensor never
        exists; ``hidden`` also returns the (B, L, H) hidden states (they are computed anyway)."""
        out = answer_forward(self.model, batch.teacher, self.vocab_size, logits=False, hidden=True)
        lazy = teacher_head_logits(self.model, out.hidden, self.vocab_size, self.chunk_size)
        return TeacherOutputs(logits=None, mask=out.mask, hidden=out.hidden if hidden else None, signal=lazy)

    def outputs_for(self, loss: Any, batch: DistillBatch, *, hidden: bool = False) -> TeacherOutputs:
        if self.chunked and getattr(loss, "accepts_head_logits", False):
            return self.head_outputs(batch, hidden=hidden)
        return self.outputs(batch, hidden=hidden)
