"""Entropic optimal transport, batched, in log space; knows nothing about language models.

- :func:`sinkhorn` / :class:`SinkhornOutput`: log-domain Sinkhorn with masks and three gradient modes.
- :func:`sinkhorn_plain`: the authors' plain-space variant, for the ``reference`` preset.
- :func:`l1_cost`: pairwise L1 cost matrices.
"""

from ctkd.ot.costs import l1_cost
from ctkd.ot.sinkhorn import GRAD_MODES, SinkhornOutput, sinkhorn, sinkhorn_plain

__all__ = ["GRAD_MODES", "SinkhornOutput", "l1_cost", "sinkhorn", "sinkhorn_plain"]
