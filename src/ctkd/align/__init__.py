"""How student and teacher tokens correspond.

- :mod:`ctkd.align.positional`: the j-th answer token of one side with the j-th of the other (the
  paper's and ULD's pairing), and the packing of answer positions into (B, L) tensors.
"""

from ctkd.align.positional import AnswerIndex, answer_index, paired_prefix

__all__ = ["AnswerIndex", "answer_index", "paired_prefix"]
