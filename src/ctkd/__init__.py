"""ctkd: cross-tokenizer knowledge distillation of language models.

The pipeline runs one way (see ``docs/architecture.md``)::

    text -> two tokenizations -> two models -> a teacher signal and student logits -> one loss -> one step

Public entry points: :func:`ctkd.losses.build_loss`, :func:`ctkd.ot.sinkhorn`, and the ``ctkd`` command.
"""

__version__ = "0.1.0"
