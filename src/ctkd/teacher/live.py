"""A live teacher: the frozen model, run without gradients on the teacher's side of each batch."""

from __future__ import annotations

import torch

from ctkd.forward import answer_forward, output_head
from ctkd.teacher.base import TeacherOutputs, TeacherSignal
from ctkd.types import DistillBatch


class LiveTeacher(TeacherSignal):
    """Runs the teacher model on its own tokenization of the batch.

    Args:
        model: the teacher causal LM; put in eval mode, its parameters frozen.
        vocab_size: the teacher tokenizer's real vocabulary size (logit columns kept).
    """

    def __init__(self, model, vocab_size: int) -> None:
        self.model = model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.vocab_size = int(vocab_size)

    def to(self, device) -> "LiveTeacher":
        self.model.to(device)
        return self

    def head_weight(self) -> torch.Tensor:
        return output_head(self.model).weight[: self.vocab_size].detach()

    @torch.no_grad()
    def outputs(self, batch: DistillBatch, *, hidden: bool = False) -> TeacherOutputs:
        out = answer_forward(self.model, batch.teacher, self.vocab_size, hidden=hidden)
        return TeacherOutputs(logits=out.logits, mask=out.mask, hidden=out.hidden)
