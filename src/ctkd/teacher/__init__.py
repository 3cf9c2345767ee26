"""The teacher signal: what the training step asks the teacher for, from a live model or a cache.

A loss declares what it reads from the teacher; the training step asks a :class:`TeacherSignal` for it and
never needs to know whether a model ran. :class:`LiveTeacher` runs the model (frozen, without gradients).
"""

from ctkd.teacher.base import TeacherOutputs, TeacherSignal
from ctkd.teacher.live import LiveTeacher

__all__ = ["LiveTeacher", "TeacherOutputs", "TeacherSignal"]
