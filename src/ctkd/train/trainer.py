"""The Hugging Face Trainer, driving :class:`ctkd.train.step.DistillStep`.

:class:`DistillTrainer` overrides ``compute_loss`` (the distillation math), ``log`` (to add the loss
components to what is logged) and ``create_optimizer`` (to add the parameters a loss may own, such as DSKD's
projectors, which :class:`KDModuleCallback` also synchronises and checkpoints); everything else — accelerate, DDP (gloo on CPU), FSDP, DeepSpeed, gradient
accumulation, bf16 autocast, checkpoints and ``resume_from_checkpoint``, ``report_to`` — is the stock Trainer's.

Batches reach ``compute_loss`` as ``{"batch": DistillBatch, "labels"/"shift_labels": student labels}``: the Trainer
moves the labels and counts them (``num_items_in_batch``: student answer tokens over the accumulated
micro-batches and, with ``average_tokens_across_devices``, over all processes); the step weights each
micro-batch by its share of those tokens, and this class multiplies by the number of processes as the stock
``compute_loss`` does, because DDP averages gradients over processes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback

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


KD_MODULES_FILE = "ctkd_kd_modules.safetensors"
"""Checkpoint file holding a loss's own trainable parameters (never part of the exported student)."""


def save_kd_module(module: torch.nn.Module, folder: str | Path) -> Path:
    path = Path(folder) / KD_MODULES_FILE
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}, str(path))
    return path


def load_kd_module(module: torch.nn.Module, folder: str | Path) -> bool:
    """Restore a loss's parameters from a checkpoint folder; False when the folder has none."""
    path = Path(folder) / KD_MODULES_FILE
    if not path.exists():
        return False
    module.load_state_dict(load_file(str(path)))
    return True


class KDModuleCallback(TrainerCallback):
    """Keeps a loss's trainable parameters in step with the student's: same gradients on every process
    (averaged before each optimiser step, as DDP does for the student), zeroed after each optimiser step, and
    saved in every checkpoint."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            for param in self.module.parameters():
                if param.grad is not None:
                    torch.distributed.all_reduce(param.grad)
                    param.grad /= world

    def on_step_end(self, args, state, control, **kwargs):
        # The Trainer zeroes the student's gradients after each optimiser step, not these ones.
        self.module.zero_grad(set_to_none=True)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            save_kd_module(self.module, folder)


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
        self.kd_module = step.kd_loss.trainable_module() if step.kd_loss is not None else None
        if self.kd_module is not None:
            self.kd_module.to(self.args.device)
            self.add_callback(KDModuleCallback(self.kd_module))
        self._component_sums: dict[str, float] = defaultdict(float)
        self._component_counts: dict[str, int] = defaultdict(int)

    def create_optimizer(self, *args: Any, **kwargs: Any):
        """The stock optimizer, plus one parameter group for the loss's own parameters (if any)."""
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.kd_module is not None and not getattr(self, "_kd_group_added", False):
            optimizer.add_param_group({"params": [p for p in self.kd_module.parameters() if p.requires_grad],
                                       "weight_decay": 0.0})
            self._kd_group_added = True
        return optimizer

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
