"""The interface between the training step and the teacher."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ctkd.types import DistillBatch


@dataclass
class TeacherOutputs:
    """What the teacher contributes to one batch, packed at its answer positions.

    Attributes:
        logits: (B, Lt, Vt) answer logits, or None when ``signal`` replaces them.
        mask: (B, Lt) bool answer mask of the packed layout.
        hidden: (B, Lt, H) final hidden states, for methods that project them (else None).
        signal: what the loss reads in place of logits, or None: a
            :class:`ctkd.losses._vocab.HeadLogits` (live teacher: logits computed in chunks from the hidden
            states), or a precomputed signal from a cache (:class:`ctkd.types.RankedTopK`,
            :class:`ctkd.losses._vocab.TopKLogProbs`).
    """

    logits: Tensor | None
    mask: Tensor
    hidden: Tensor | None = None
    signal: Any = None

    @property
    def for_loss(self) -> Any:
        """The value passed to a loss as its ``teacher_logits`` argument."""
        return self.signal if self.signal is not None else self.logits


class TeacherSignal:
    """Base class of teacher signals.

    The training step calls :meth:`outputs_for` with its loss; a signal gives the loss the cheapest teacher input
    that loss accepts (a live teacher: chunked head logits where the loss says ``accepts_head_logits``, else full
    logits; a cache: the stored signal its ``teacher_request()`` describes).
    """

    def outputs(self, batch: DistillBatch, *, hidden: bool = False) -> TeacherOutputs:  # pragma: no cover
        raise NotImplementedError

    def outputs_for(self, loss: Any, batch: DistillBatch, *, hidden: bool = False) -> TeacherOutputs:
        """The teacher's side of ``batch`` in the form ``loss`` reads (default: :meth:`outputs`)."""
        return self.outputs(batch, hidden=hidden)

    def to(self, device) -> "TeacherSignal":
        return self

    def head_weight(self) -> Tensor:
        """(Vt, H) the teacher's output-head rows of its real vocabulary (for methods that project into it)."""
        raise ValueError(f"{type(self).__name__} has no output head; this method needs a live teacher model")
