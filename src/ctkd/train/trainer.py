"""The Hugging Face Trainer, driving :class:`ctkd.train.step.DistillStep`.

:class:`DistillTrainer` overrides ``compute_loss`` (the distillation math) and ``log`` (to add the loss
components to what is logged); everything else — accelerate, DDP (gloo on CPU), FSDP, DeepSpeed, gradient
accumulation, bf16 autocast, checkpoints and ``resume_from_checkpoint``, ``report_to`` — is the stock Trainer's.

Batches reach ``compute_loss`` as ``{"batch": DistillBatch, "labels"/"shift_labels": student labels}``: the Trainer
moves the labels and counts them (``num_items_in_batch``: student answer tokens over the accumulated
micro-batches and, with ``average_tokens_across_devices``, over all processes); the step weights each
micro-batch by its share of those tokens, and this class multiplies by the number of processes as the stock
``compute_loss`` does, because DDP averages gradients over processes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from transformers import Trainer

from ctkd.data.collator import DistillCollator
from ctkd.teacher import TeacherSignal
from ctkd.train.step import DistillStep
from ctkd.types import DistillBatch


def trainer_collate_fn(collator: DistillCollator):
    """Wrap the two-tokenizer collator into the dict the Trainer expects."""

    def collate(features) -> dict[str, Any]:
        batch = collator.collate(features)
        # "labels" makes the Trainer count num_items_in_batch; "shift_labels" tells it ours are already shifted
        return {"batch": batch, "labels": batch.student.labels, "shift_labels": batch.student.labels}

    return collate


class DistillTrainer(Trainer):
    """``transformers.Trainer`` whose loss is one :class:`DistillStep`.

    Args:
        step: the distillation step (CE + KD mixing).
        teacher: the teacher signal (live model or cache), or None for SFT.
        *args, **kwargs: passed to ``transformers.Trainer`` (``model`` is the student).
    """

    def __init__(self, *args: Any, step: DistillStep, teacher: TeacherSignal | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.step = step
        self.teacher = teacher.to(self.args.device) if teacher is not None else None
        # We normalise by num_items_in_batch ourselves, so ask the Trainer to count it and not to divide by the
        # number of accumulation steps again.
        self.model_accepts_loss_kwargs = True
        self._component_sums: dict[str, float] = defaultdict(float)
        self._component_counts: dict[str, int] = defaultdict(int)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        batch: DistillBatch = inputs["batch"].to(self.args.device)
        out = self.step(model, self.teacher, batch, normaliser=num_items_in_batch)
        loss = out.loss
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes
        if model.training:
            for name, value in out.components.items():
                self._component_sums[name] += float(value)
                self._component_counts[name] += 1
        return (loss, out) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._component_counts:
            for name, total in self._component_sums.items():
                logs[name] = round(total / self._component_counts[name], 6)
            self._component_sums.clear()
            self._component_counts.clear()
        super().log(logs, start_time)
