"""Typed, nested run configuration: loaded from YAML, validated at load, saved with every run.

A config file is a YAML mapping whose sections mirror :class:`DistillConfig`::

    student: {name: smollm2-135m-instruct, dtype: float32}
    teacher: {name: gemma-3-270m, dtype: bfloat16}
    data:    {task: qed, data_dir: null, train_limit: 200}
    loss:    {method: multilevel_ot, params: {preset: paper}, ce_weight: 1.0, kd_weight: null}
    optim:   {learning_rate: 1.0e-6, epochs: 5, batch_size: 2}
    eval:    {before: true, after: true, limit: 40}
    output:  {dir: runs/default}

Overrides use dotted keys: ``optim.learning_rate=2e-5 loss.params.top_k=20`` (values parsed as YAML). Unknown
keys fail with the list of valid ones; values are type-checked; the resolved config is written into the output
folder as ``config.yaml``. No import paths in YAML: methods and tasks are names from plain registries.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration problem, with the offending key and what to do about it."""


@dataclass
class ModelConfig:
    """One model of the pair."""

    name: str = ""
    """Short name (``smollm2-135m-instruct``, ``gemma-3-270m``, ...), hub id, local folder or ``.gguf`` file."""
    dtype: str = "float32"
    """``float32``, ``bfloat16``, or ``auto`` (bfloat16 where the device runs it natively, else float32: CPUs
    without AVX512-BF16/AMX emulate bf16 matrix products about 70 times slower than float32)."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) for hub ids."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub repository (off by default: it executes someone else's code)."""
    cache_dir: str | None = None
    """Where GGUF conversions are cached (default: ``$CTKD_CACHE`` or ``~/.cache/ctkd``)."""


@dataclass
class TeacherConfig(ModelConfig):
    """The teacher: a model, or a cache of its outputs written by ``ctkd cache-teacher``."""

    cache: str | None = None
    """Path of a teacher cache to train from instead of running the teacher model."""
    chunk_size: int = 0
    """Answer positions per chunk when computing teacher statistics from hidden states (0: automatic)."""


@dataclass
class PromptOverride:
    """Overrides of one side's prompt; empty fields keep the task's default for that role."""

    template: str | None = None
    instruction: str | None = None
    num_shots: int | None = None
    use_chat_template: bool | None = None
    seed: int | None = None


@dataclass
class DataConfig:
    """Task, files and tokenization policy."""

    task: str = "qed"
    """``qed``, ``dialogsum``, ``fairytaleqa`` or ``jsonl``."""
    data_dir: str | None = None
    """The task's folder (laid out like ``shared/data/<task>/``) or, for ``jsonl``, a file; None uses the small
    QED subset shipped with ctkd (QED only)."""
    train_split: str = "train"
    eval_split: str = "validation"
    train_limit: int | None = None
    """Use only the first N training examples (None: all)."""
    targets: str | None = None
    """A JSONL file of generated answers (``ctkd generate``) that replace the ground-truth targets (SeqKD, the
    unlabeled setting); None trains on the ground truth."""
    keep_ground_truth: bool = False
    """With ``targets``: also keep the ground-truth examples (each example appears twice)."""
    student_max_length: int = 512
    teacher_max_length: int = 1024
    student_append_eos: bool = True
    teacher_append_eos: bool = True
    alignment: bool = False
    """Compute the byte-offset span alignment in the collator (needed by ``pairing: span``)."""
    student_prompt: PromptOverride = field(default_factory=PromptOverride)
    teacher_prompt: PromptOverride = field(default_factory=PromptOverride)


@dataclass
class LossConfig:
    """The distillation method and how it is mixed with the cross-entropy."""

    method: str = "multilevel_ot"
    """A name in ``ctkd.losses.LOSSES`` (``ce`` alone is SFT / SeqKD)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Constructor arguments of the method (see ``docs/losses.md``)."""
    ce_weight: float = 1.0
    """Weight of the student's cross-entropy on its answer labels (0 for the unlabeled setting)."""
    kd_weight: float | None = None
    """Weight of the distillation term; None takes the method's default (0.15 for the paper preset of
    multilevel_ot, 1.5 for its reference preset, 1.0 otherwise)."""


@dataclass
class OptimConfig:
    """Optimisation (passed to ``transformers.TrainingArguments``)."""

    optimizer: str = "adamw_torch"
    """A ``transformers`` optimizer name (``adamw_torch``, ``sgd``, ``adafactor``, ...)."""
    learning_rate: float = 1e-6
    weight_decay: float = 0.1
    epochs: float = 5.0
    max_steps: int = -1
    """Stop after this many optimiser steps (-1: run ``epochs``)."""
    batch_size: int = 2
    """Per-process micro-batch size."""
    grad_accum: int = 1
    scheduler: str = "one_cycle"
    """``one_cycle`` (the authors' choice: warm-up then cosine decay), or any Hugging Face scheduler name
    (``linear``, ``cosine``, ``constant``, ...)."""
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 42
    bf16: bool | None = False
    """Mixed precision (bf16 autocast) for the student's forward and backward; None: where bf16 is native
    (see ``ModelConfig.dtype``). Master weights stay float32."""
    gradient_checkpointing: bool = False


@dataclass
class EvalConfig:
    """Generation-based evaluation (the paper's protocol by default)."""

    before: bool = True
    """Evaluate the student before training."""
    after: bool = True
    """Evaluate the student after training."""
    limit: int | None = None
    """Evaluate on the first N examples of the evaluation split (None: all)."""
    batch_size: int = 8
    max_new_tokens: int = 150
    stop_at_newline: bool = True


@dataclass
class OutputConfig:
    """Where and how often things are written."""

    dir: str = "runs/ctkd"
    logging_steps: int = 5
    save_steps: int = 0
    """Save a checkpoint every N steps (0: at the end of each epoch)."""
    save_total_limit: int = 2
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    overwrite: bool = False
    """Allow writing into a folder that already holds a finished run."""


@dataclass
class DistillConfig:
    """A whole distillation run."""

    student: ModelConfig = field(default_factory=lambda: ModelConfig(name="smollm2-135m-instruct"))
    teacher: TeacherConfig = field(default_factory=lambda: TeacherConfig(name="gemma-3-270m"))
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as YAML (atomically)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_yaml())
        tmp.replace(path)
        return path


# ------------------------------------------------------------------------------------------------------------
# Building typed configs from plain mappings, with errors that name the key
# ------------------------------------------------------------------------------------------------------------
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping with keys {sorted(_field_types(annotation))}, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if annotation is Any:
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build the dataclass ``cls`` from a mapping; unknown keys fail with the list of valid ones."""
    fields = _field_types(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]} in {where}; valid keys there: {sorted(fields)}"
        )
    values = {name: _coerce(data[name], fields[name], prefix + name) for name in fields if name in data}
    base = cls()
    for name, value in values.items():
        setattr(base, name, value)
    return base


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["optim.learning_rate=2e-5", "loss.params.top_k=20"]`` -> a nested mapping (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. optim.learning_rate=2e-5")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({err})") from None
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "params":
            out[key] = _merge(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):  # loss.params: merge too
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _drop_stale_params(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Loss parameters belong to one method: an override that names another method (``loss.method=uld``)
    or gives ``loss.params={}`` starts from no parameters instead of merging into the file's (the default
    file's ``preset: paper`` means nothing to ``uld``). Parameters given by overrides are kept."""
    loss, new = base.get("loss"), extra.get("loss")
    if not isinstance(loss, dict) or not isinstance(new, dict) or not isinstance(loss.get("params"), dict):
        return base
    switched = "method" in new and new["method"] != loss.get("method")
    reset = new.get("params") == {}
    if not (switched or reset):
        return base
    return {**base, "loss": {k: v for k, v in loss.items() if k != "params"}}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DistillConfig:
    """Load a YAML config (None: the built-in defaults), apply dotted overrides, validate.

    Raises:
        ConfigError: missing file, YAML syntax error, unknown key, wrongly typed value, unknown method/task.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} not found; pass a YAML file (see configs/ for examples)")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections, got {type(loaded).__name__}")
        data = loaded
    if overrides:
        extra = parse_overrides(overrides)
        data = _drop_stale_params(data, extra)
        data = _merge(data, extra)
    config = from_dict(DistillConfig, data)
    validate(config)
    return config


def validate(config: DistillConfig) -> None:
    """Checks that need more than types: registered names, ranges, combinations."""
    from ctkd.data import TASKS
    from ctkd.losses import LOSSES, check_loss_params

    if config.loss.method not in LOSSES:
        raise ConfigError(f"loss.method {config.loss.method!r} is not a registered loss; choose from {sorted(LOSSES)}")
    if config.data.task not in TASKS:
        raise ConfigError(f"data.task {config.data.task!r} is unknown; choose from {sorted(TASKS)}")
    for side in ("student", "teacher"):
        dtype = getattr(config, side).dtype
        if dtype not in ("float32", "bfloat16", "auto"):
            raise ConfigError(f"{side}.dtype must be float32, bfloat16 or auto, got {dtype!r}")
    if not config.student.name:
        raise ConfigError("student.name is empty; give a short name, hub id, folder or .gguf file")
    if not config.teacher.name and not config.teacher.cache and config.loss.method != "ce":
        raise ConfigError("teacher.name and teacher.cache are both empty; the method needs a teacher")
    for key, limit in (("data.train_limit", config.data.train_limit), ("eval.limit", config.eval.limit)):
        if limit is not None and limit < 1:
            raise ConfigError(f"{key} must be a positive number of examples or null (all of them), got {limit}")
    if config.optim.batch_size < 1 or config.optim.grad_accum < 1:
        raise ConfigError("optim.batch_size and optim.grad_accum must be >= 1")
    if config.optim.learning_rate <= 0:
        raise ConfigError(f"optim.learning_rate must be > 0, got {config.optim.learning_rate}")
    if config.loss.ce_weight < 0 or (config.loss.kd_weight is not None and config.loss.kd_weight < 0):
        raise ConfigError("loss.ce_weight and loss.kd_weight must be >= 0")
    if config.data.targets is None and config.loss.ce_weight == 0 and config.loss.method == "ce":
        raise ConfigError("loss.method=ce with loss.ce_weight=0 trains nothing")
    try:
        loss = check_loss_params(config.loss.method, config.loss.params)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"loss.params: {err}") from None
    if "alignment" in loss.needs and not config.data.alignment:
        raise ConfigError(f"loss {config.loss.method!r} pairs aligned spans (pairing: span): set data.alignment: true")
