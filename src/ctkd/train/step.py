"""One distillation step: ``ce_weight * CE + kd_weight * KD``; the only place where terms are mixed.

The teacher runs without gradients (through a :class:`ctkd.teacher.TeacherSignal`), the student with them;
both are read at their answer positions only (:func:`ctkd.forward.answer_forward`).

Normalisation under gradient accumulation: each loss is a mean over its own answer positions within a
micro-batch. When the trainer passes ``normaliser`` (the number of student answer tokens over all the
micro-batches of one optimiser step, and over all processes), the micro-batch's mean is weighted by its share
of those tokens: ``loss_micro = mean_micro * tokens_micro / normaliser``. The sum over micro-batches is then
the token-weighted mean over the whole optimiser batch, which for the cross-entropy is exactly the mean over
all its tokens, whatever the split into micro-batches or processes. (KD terms averaged over pairs or sequences
are weighted by student tokens too: exact when micro-batches are alike, a token-weighted average otherwise.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ctkd.forward import answer_forward, output_head
from ctkd.losses import CrossEntropy, DistillationLoss
from ctkd.teacher import TeacherSignal
from ctkd.types import DistillBatch


def _unwrap(model):
    return getattr(model, "module", model)


@dataclass
class StepOutput:
    """The result of one micro-batch.

    Attributes:
        loss: scalar to backpropagate (normalised as the module docstring says).
        components: detached scalars for logging: ``ce``, ``kd`` and the method's own components.
        num_tokens: student answer tokens in this micro-batch.
    """

    loss: Tensor
    components: dict[str, Tensor] = field(default_factory=dict)
    num_tokens: int = 0


class DistillStep:
    """Mixes the student's cross-entropy and a distillation loss.

    Args:
        kd_loss: the distillation loss (None, or a ``ce`` loss, for plain SFT / SeqKD).
        ce_weight: weight of the cross-entropy on the student's answer labels.
        kd_weight: weight of the distillation loss.
        student_vocab_size: the student tokenizer's real vocabulary (logit columns kept).
    """

    def __init__(self, kd_loss: DistillationLoss | None, *, ce_weight: float, kd_weight: float,
                 student_vocab_size: int) -> None:
        if kd_loss is not None and kd_loss.name == "ce":
            kd_loss = None  # SFT: the cross-entropy is the whole loss
        self.kd_loss = kd_loss
        self.ce_loss = CrossEntropy()
        self.ce_weight = float(ce_weight)
        self.kd_weight = float(kd_weight) if kd_loss is not None else 0.0
        self.student_vocab_size = int(student_vocab_size)
        if self.ce_weight == 0 and self.kd_weight == 0:
            raise ValueError("ce_weight and kd_weight are both 0: the step would train nothing")

    @property
    def needs_teacher(self) -> bool:
        return self.kd_loss is not None and self.kd_weight > 0 and self.kd_loss.uses_teacher

    def _extras(self, batch: DistillBatch) -> dict[str, Any]:
        extras: dict[str, Any] = dict(batch.extras)
        if batch.alignment is not None:
            extras["alignment"] = batch.alignment
        return extras

    def __call__(self, student_model, teacher: TeacherSignal | None, batch: DistillBatch,
                 normaliser: float | Tensor | None = None) -> StepOutput:
        needs = self.kd_loss.needs if self.kd_loss is not None else frozenset()
        want_hidden = "student_hidden" in needs or "teacher_hidden" in needs
        student = answer_forward(student_model, batch.student, self.student_vocab_size, hidden=want_hidden)
        num_tokens = int(student.mask.sum())
        components: dict[str, Tensor] = {}
        total = student.logits.new_zeros((), dtype=torch.float32)
        if self.ce_weight > 0:
            ce = self.ce_loss(student.logits, None, student.mask, None, labels=student.labels)
            total = total + self.ce_weight * ce.loss
            components["ce"] = ce.loss.detach()
        if self.kd_loss is not None and self.kd_weight > 0:
            t_out = None
            if self.kd_loss.uses_teacher:
                if teacher is None:
                    raise ValueError(f"loss {self.kd_loss.name!r} needs a teacher, but none was given")
                # the teacher gives this loss the cheapest input it accepts (chunked head logits, a cached signal)
                t_out = teacher.outputs_for(self.kd_loss, batch, hidden=want_hidden)
            extras = self._extras(batch)
            extras["labels"] = student.labels
            if want_hidden:
                extras["student_hidden"] = student.hidden
                extras["teacher_hidden"] = t_out.hidden if t_out is not None else None
            if "student_head" in needs:  # (Vs, H) rows of the real vocabulary; trained with the student
                extras["student_head"] = output_head(_unwrap(student_model)).weight[: self.student_vocab_size]
            if "teacher_head" in needs:
                extras["teacher_head"] = teacher.head_weight()
            kd = self.kd_loss(student.logits, t_out.for_loss if t_out is not None else None, student.mask,
                              t_out.mask if t_out is not None else None, **extras)
            total = total + self.kd_weight * kd.loss
            components["kd"] = kd.loss.detach()
            components.update({k: v.detach() for k, v in kd.components.items()})
        if normaliser is not None:
            total = total * (num_tokens / normaliser)
        return StepOutput(loss=total, components=components, num_tokens=num_tokens)
