"""Distillation losses: tensors in, a :class:`ctkd.types.LossOutput` out; they never run a model.

``LOSSES`` is a plain dict from short name to class; :func:`build_loss` builds one by name. Adding a method is:
a file here, a line in the dict, a test, a config, a line in ``docs/losses.md``.
"""

from __future__ import annotations

import inspect
from typing import Any

from ctkd.losses.base import DistillationLoss, validate_inputs
from ctkd.losses.ce import CrossEntropy
from ctkd.losses.dskd import DSKD
from ctkd.losses.mined import MinED
from ctkd.losses.multilevel_ot import PRESETS as MULTILEVEL_OT_PRESETS
from ctkd.losses.multilevel_ot import MultiLevelOT
from ctkd.losses.uld import ULD

LOSSES: dict[str, type[DistillationLoss]] = {
    "ce": CrossEntropy,
    "uld": ULD,
    "multilevel_ot": MultiLevelOT,
    "mined": MinED,
    "dskd": DSKD,
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
    """Whether ``name`` can only be built once the tokenizers and models are loaded (so config validation checks
    only its parameter names): MinED's vocabulary map (``from_tokenizers``) when ``params`` does not give one,
    DSKD's projector sizes (:func:`model_sized`) when ``params`` does not give them."""
    return _from_tokenizers(name, params) or bool(model_sized(name, params))


def _from_tokenizers(name: str, params: dict[str, Any]) -> bool:
    return hasattr(_lookup(name), "from_tokenizers") and "vocab_map" not in params


def model_sized(name: str, params: dict[str, Any]) -> list[str]:
    """Constructor arguments of ``name`` read from the loaded models (a loss's ``model_sized`` mapping, e.g. DSKD's
    ``student_hidden_size`` / ``teacher_hidden_size``) that ``params`` does not give."""
    return [key for key in getattr(_lookup(name), "model_sized", {}) if key not in params]


def hidden_size(model: Any) -> int:
    """The hidden size of a causal LM (its text config's ``hidden_size``)."""
    config = model.config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(config.hidden_size)


def build_loss_for_pair(name: str, params: dict[str, Any], teacher_tokenizer: Any, student_tokenizer: Any, *,
                        cache_dir: Any = None, student_model: Any = None, teacher_model: Any = None
                        ) -> DistillationLoss:
    """:func:`build_loss`, or ``from_tokenizers`` for methods whose parameters come from the tokenizer pair; sizes a
    method reads from the models (:func:`model_sized`) are filled from ``student_model`` / ``teacher_model``."""
    missing = model_sized(name, params)
    if missing:
        models = {"student": student_model, "teacher": teacher_model}
        params = dict(params)
        for key in missing:
            role = _lookup(name).model_sized[key]
            if models[role] is None:
                raise ValueError(
                    f"loss {name!r} needs {key}, the {role} model's hidden size, but no {role} model is loaded"
                    + (" (a teacher cache has no hidden states: use a live teacher, teacher.name)" if role == "teacher"
                       else "") + f"; or set loss.params.{key}"
                )
            params[key] = hidden_size(models[role])
    if _from_tokenizers(name, params):
        unknown = sorted(set(params) - set(loss_parameters(name)))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} for loss {name!r}; valid: {loss_parameters(name)}")
        return _lookup(name).from_tokenizers(teacher_tokenizer, student_tokenizer, cache_dir=cache_dir, **params)
    return build_loss(name, **params)


def check_loss_params(name: str, params: dict[str, Any]) -> DistillationLoss:
    """Build ``name`` with ``params`` and placeholders for what only the loaded pair can give (vocabulary map, hidden
    sizes), so that a config's bad values fail at load time rather than after the models are loaded. The result is
    only for inspection (its ``needs``), never for training."""
    import torch

    placeholders: dict[str, Any] = {key: 8 for key in model_sized(name, params)}
    if _from_tokenizers(name, params):
        placeholders["vocab_map"] = torch.zeros(1, dtype=torch.long)
    return build_loss(name, **placeholders, **params)


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
    "check_loss_params",
    "build_loss_for_pair",
    "hidden_size",
    "model_sized",
    "DSKD",
    "tokenizer_built","LOSSES", "CrossEntropy", "DistillationLoss", "MinED", "MultiLevelOT", "ULD", "build_loss", "loss_parameters",
           "validate_inputs"]
