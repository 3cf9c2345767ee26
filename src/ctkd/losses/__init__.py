"""Distillation losses: tensors in, a :class:`ctkd.types.LossOutput` out; they never run a model.

``LOSSES`` is a plain dict from short name to class; :func:`build_loss` builds one by name. Adding a method is:
a file here, a line in the dict, a test, a config, a line in ``docs/losses.md``.
"""

from __future__ import annotations

import inspect
from typing import Any

from ctkd.losses.base import DistillationLoss, validate_inputs
from ctkd.losses.ce import CrossEntropy
from ctkd.losses.mined import MinED
from ctkd.losses.multilevel_ot import PRESETS as MULTILEVEL_OT_PRESETS
from ctkd.losses.multilevel_ot import MultiLevelOT
from ctkd.losses.uld import ULD

LOSSES: dict[str, type[DistillationLoss]] = {
    "ce": CrossEntropy,
    "uld": ULD,
    "multilevel_ot": MultiLevelOT,
    "mined": MinED,
}


def loss_parameters(name: str) -> list[str]:
    """Names of the constructor arguments of the loss registered as ``name``."""
    cls = _lookup(name)
    if cls is MultiLevelOT:
        return ["preset", *MULTILEVEL_OT_PRESETS["paper"]]
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def _lookup(name: str) -> type[DistillationLoss]:
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; registered losses: {sorted(LOSSES)}") from None


def tokenizer_built(name: str, params: dict[str, Any]) -> bool:
    """Whether ``name`` must be built from the tokenizer pair (its ``from_tokenizers``), e.g. MinED's vocabulary
    map when ``params`` does not give one."""
    return hasattr(_lookup(name), "from_tokenizers") and "vocab_map" not in params


def build_loss_for_pair(name: str, params: dict[str, Any], teacher_tokenizer: Any, student_tokenizer: Any, *,
                        cache_dir: Any = None) -> DistillationLoss:
    """:func:`build_loss`, or ``from_tokenizers`` for methods whose parameters come from the tokenizer pair."""
    if tokenizer_built(name, params):
        unknown = sorted(set(params) - set(loss_parameters(name)))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} for loss {name!r}; valid: {loss_parameters(name)}")
        return _lookup(name).from_tokenizers(teacher_tokenizer, student_tokenizer, cache_dir=cache_dir, **params)
    return build_loss(name, **params)


def build_loss(name: str, **params: Any) -> DistillationLoss:
    """Build the loss registered as ``name`` with its hyperparameters.

    Raises:
        ValueError: for an unknown name or parameter (the message lists the valid ones), or a bad value.
    """
    cls = _lookup(name)
    unknown = sorted(set(params) - set(loss_parameters(name)))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for loss {name!r}; valid: {loss_parameters(name)}")
    return cls(**params)


__all__ = [
    "build_loss_for_pair",
    "tokenizer_built","LOSSES", "CrossEntropy", "DistillationLoss", "MinED", "MultiLevelOT", "ULD", "build_loss", "loss_parameters",
           "validate_inputs"]
