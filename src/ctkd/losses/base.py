"""The interface every loss follows, and the checks that turn bad input into clear errors.

A loss is built with its hyperparameters and called with data::

    loss_fn = build_loss("multilevel_ot", top_k=50)
    out = loss_fn(student_logits, teacher_logits, student_mask, teacher_mask)   # -> LossOutput

- ``student_logits`` (B, Ts, Vs), ``teacher_logits`` (B, Tt, Vt): raw logits, already sliced to each real
  vocabulary (see :mod:`ctkd.models`).
- ``student_mask`` (B, Ts), ``teacher_mask`` (B, Tt): bool, True where that position's logits are the
  distribution of an answer token (shifted: logits at p predict token p + 1).
- keyword extras a method may need (declared in its ``needs`` set): ``labels`` (B, Ts) long, the student's
  answer token ids in the same shifted convention (``ctkd.types.IGNORE_INDEX`` elsewhere);
  ``alignment`` (:class:`ctkd.types.SpanAlignment`); hidden states for methods that project them.

Losses never run a model, and never receive gradient through the teacher.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from ctkd.types import LossOutput


class DistillationLoss:
    """Base class: hyperparameters at construction, tensors at call.

    Subclasses set ``name``, may set ``needs`` (names of keyword inputs they require, e.g. ``{"labels"}``)
    and ``uses_teacher`` (False for the plain cross-entropy), and implement :meth:`compute`.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()
    uses_teacher: ClassVar[bool] = True

    def __call__(
        self,
        student_logits: Tensor,
        teacher_logits: Any,
        student_mask: Tensor,
        teacher_mask: Tensor | None,
        **extras: Any,
    ) -> LossOutput:
        missing = [k for k in sorted(self.needs) if extras.get(k) is None]
        if missing:
            raise ValueError(f"loss {self.name!r} needs the keyword input(s) {missing}; pass them to the call")
        validate_inputs(student_logits, teacher_logits if isinstance(teacher_logits, Tensor) else None,
                        student_mask, teacher_mask, needs_teacher=self.uses_teacher and isinstance(teacher_logits, Tensor))
        return self.compute(student_logits, teacher_logits, student_mask.bool(),
                            None if teacher_mask is None else teacher_mask.bool(), **extras)

    def compute(self, student_logits: Tensor, teacher_logits: Any, student_mask: Tensor,
                teacher_mask: Tensor | None, **extras: Any) -> LossOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """The hyperparameters this loss was built with (JSON-serialisable), for logs and model cards."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_") and _plain(v)}

    def trainable_module(self) -> torch.nn.Module | None:
        """The loss's own trainable parameters (e.g. DSKD's projectors), or None.

        A loss with parameters is also a ``torch.nn.Module``; the trainer optimises its parameters with the
        student's, synchronises their gradients across processes, and saves them in every checkpoint
        (``ctkd_kd_modules.safetensors``) so that ``--resume`` continues exactly; they are never part of the
        exported student.
        """
        if isinstance(self, torch.nn.Module) and any(True for _ in self.parameters()):
            return self
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


def _plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool, type(None))) or (
        isinstance(value, (list, tuple)) and all(_plain(v) for v in value))


def _check_logits(name: str, logits: Tensor) -> None:
    if not isinstance(logits, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor (B, T, V), got {type(logits).__name__}")
    if logits.dim() != 3:
        raise ValueError(f"{name} must be (B, T, V), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a float tensor, got dtype {logits.dtype}")


def _check_mask(name: str, mask: Tensor, logits: Tensor, logits_name: str) -> None:
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name} must be a bool torch.Tensor (B, T), got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"{name} has shape {tuple(mask.shape)} but {logits_name} is {tuple(logits.shape)}: the mask must be "
            f"(B, T) = {tuple(logits.shape[:2])}, True where the logits predict an answer token"
        )
    if mask.dtype not in (torch.bool, torch.uint8, torch.int64, torch.int32):
        raise ValueError(f"{name} must be bool (or 0/1 integers), got dtype {mask.dtype}")


def validate_inputs(student_logits: Tensor, teacher_logits: Tensor | None, student_mask: Tensor,
                    teacher_mask: Tensor | None, *, needs_teacher: bool = True) -> None:
    """Shape and type checks shared by every loss; each error names the argument and its value."""
    _check_logits("student_logits", student_logits)
    _check_mask("student_mask", student_mask, student_logits, "student_logits")
    if needs_teacher:
        if teacher_logits is None:
            raise ValueError("teacher_logits is None but this loss compares with the teacher")
        _check_logits("teacher_logits", teacher_logits)
        if teacher_logits.shape[0] != student_logits.shape[0]:
            raise ValueError(
                f"batch sizes differ: student_logits has B={student_logits.shape[0]}, teacher_logits has "
                f"B={teacher_logits.shape[0]}; both must hold the same examples in the same order"
            )
        if teacher_mask is None:
            raise ValueError("teacher_mask is None but this loss compares with the teacher")
        _check_mask("teacher_mask", teacher_mask, teacher_logits, "teacher_logits")


def check_finite(name: str, values: Tensor) -> None:
    """Raise a ValueError if per-row statistics reveal NaN/inf logits (cheap: (N,) values, not (N, V))."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{name} contain non-finite values (NaN or +/-inf) at {int(bad.sum())} answer row(s), the first being "
            f"answer row {first}; check the model's dtype (fp16 overflow?) and its inputs"
        )


def check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def zero_loss(student_logits: Tensor) -> Tensor:
    """A zero scalar connected to the student logits (valid graph, zero gradient) for all-masked batches."""
    corner = student_logits[:1, :1, :1].float()
    return torch.where(torch.zeros_like(corner, dtype=torch.bool), corner, 0.0).sum()
