"""Training: one distillation step (the only place that mixes CE and KD) and the Trainer driver."""

from ctkd.train.step import DistillStep, StepOutput

__all__ = ["DistillStep", "StepOutput"]
