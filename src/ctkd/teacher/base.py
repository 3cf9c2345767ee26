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
        signal: a precomputed per-method signal (for example :class:`ctkd.types.RankedTopK` from a cache) that
            the loss accepts in place of logits, or None.
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
    """Base class of teacher signals."""

    def outputs(self, batch: DistillBatch, *, hidden: bool = False) -> TeacherOutputs:  # pragma: no cover
        raise NotImplementedError

    def to(self, device) -> "TeacherSignal":
        return self

    def head_weight(self) -> Tensor:
        """(Vt, H) the teacher's output-head rows of its real vocabulary (for methods that project into it)."""
        raise ValueError(f"{type(self).__name__} has no output head; this method needs a live teacher model")
