"""Convert a GGUF model once into a plain, trainable safetensors checkpoint, and cache it.

Why: transformers dequantises a GGUF file to float on load (``from_pretrained(folder,
gguf_file=..., dtype=torch.float32)``), which takes 15-90 s here, and the model it returns carries a
GGUF quantizer (``config.quantization_config``, ``model.hf_quantizer``) that makes it refuse training
and saving. We rebuild a plain model of the same class with ``from_config`` (after deleting
``config.quantization_config``), copy the dequantised weights with ``load_state_dict``, check that
it computes the same logits, and save it with the tokenizer; later loads read safetensors in seconds.

Cache layout (``root`` is ``cache_dir``, else ``$CTKD_CACHE``, else ``$XDG_CACHE_HOME/ctkd``, else
``~/.cache/ctkd``)::

    root/models/<name>-<first 12 hex digits of the GGUF's SHA-256>/
        config.json, generation_config.json, model.safetensors, tokenizer files,
        ctkd_conversion.json          # written last: what was converted, with which versions
    root/gguf/<file>.gguf             # GGUF files joined from split packages (Gemma, Qwen)

The key is the GGUF *content* hash, so a changed file never reuses a stale conversion and a
copied or touched file still hits the cache. Writes are atomic: everything is written into a
hidden ``.<name>.partial-XXXX`` folder beside the target and renamed into place at the end, so an
interrupted conversion never leaves a folder that looks complete (a killed process may leave a
hidden partial folder behind, which is safe to delete). Two processes converting at once both
finish; the second rename loses and its copy is discarded.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .registry import GgufSource, sha256_of_files

CACHE_ENV = "CTKD_CACHE"
"""Environment variable naming the root of ctkd's caches."""

CONVERSION_MARKER = "ctkd_conversion.json"
"""File written last into a converted folder; its presence marks the conversion complete."""

CONVERSION_FORMAT = 1
"""Version of the converted-folder layout, recorded in the marker."""

HASH_PREFIX_CHARS = 12
"""Hex digits of the GGUF's SHA-256 used in the cache folder's name (48 bits)."""

VERIFY_TOKEN_IDS = 8
"""Length of the id sequence both models score to check the conversion (ids spread over the vocabulary)."""

VERIFY_ATOL = 1e-4
"""Largest absolute logit difference tolerated between the GGUF-loaded and the rebuilt model (fp32)."""


def default_cache_root() -> Path:
    """``$CTKD_CACHE``, else ``$XDG_CACHE_HOME/ctkd``, else ``~/.cache/ctkd``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "ctkd"


def resolve_cache_root(cache_dir: str | os.PathLike | None) -> Path:
    """The cache root to use: ``cache_dir`` when given, else :func:`default_cache_root`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()


def slug(name: str) -> str:
    """A file-system-safe, lower-case form of a model name (``SmolLM2 Q4_1`` -> ``smollm2-q4_1``)."""
    cleaned = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-.")
    return cleaned or "model"


def converted_dir(cache_root: Path, name: str, sha256: str) -> Path:
    """Where the conversion of the GGUF with content hash ``sha256`` lives."""
    return cache_root / "models" / f"{slug(name)}-{sha256[:HASH_PREFIX_CHARS]}"


def is_complete(folder: Path) -> bool:
    """Whether ``folder`` is a finished conversion (it holds the marker written last)."""
    return (folder / CONVERSION_MARKER).is_file()


def read_marker(folder: Path) -> dict:
    """The metadata a conversion recorded in its marker file."""
    return json.loads((folder / CONVERSION_MARKER).read_text())


# --------------------------------------------------------------------------------------------------
# GGUF files
# --------------------------------------------------------------------------------------------------


def source_for_file(path: Path) -> GgufSource:
    """A :class:`GgufSource` for a GGUF file on disk (hashes it: about 0.2 s per 250 MB here)."""
    return GgufSource(file_name=path.name, sha256=sha256_of_files([path]), path=path)


def materialise(source: GgufSource, cache_root: Path) -> Path:
    """The GGUF file itself: ``source.path``, or the joined file under ``cache_root/gguf/``.

    A joined file is written to a temporary name, checked against ``source.sha256`` and renamed, so
    a half-written join is never mistaken for a whole one; an existing join with the right hash is
    reused.
    """
    if source.path is not None:
        return source.path
    if source.assemble is None:
        raise ValueError(f"GGUF source {source.file_name!r} has neither a path nor an assemble step")
    target = cache_root / "gguf" / source.file_name
    if target.is_file() and sha256_of_files([target]) == source.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.partial-", dir=target.parent)
    os.close(handle)
    temp = Path(temp_name)
    try:
        os.chmod(temp, _FILE_MODE & ~_current_umask())  # mkstemp makes it private; follow the umask
        source.assemble(temp)
        got = sha256_of_files([temp])
        if got != source.sha256:
            raise ValueError(
                f"joined GGUF {source.file_name} has SHA-256 {got}, expected {source.sha256}; "
                "reinstall the model package"
            )
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target


def load_gguf_model(
    gguf_path: Path, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF file with transformers, dequantised to ``dtype`` (model still carries the quantizer).

    This is the slow path (15-90 s for the project's models) and the reference the conversion is
    checked against; use :func:`convert_gguf` / ``load_model`` to get a trainable model.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}")
    folder, name = gguf_path.parent, gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    model.eval()
    return model, tokenizer


def plain_model(gguf_model: PreTrainedModel) -> PreTrainedModel:
    """A plain (quantizer-free, trainable) float32 copy of a GGUF-loaded model.

    Rebuilds the same class from the config without ``quantization_config`` and copies every
    weight with a strict ``load_state_dict``; tied embeddings stay tied.
    """
    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {key: value.to(torch.float32) for key, value in gguf_model.state_dict().items()}
    model.load_state_dict(state, strict=True)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    model.eval()
    return model


def embeddings_tied(model: PreTrainedModel) -> bool:
    """Whether the output projection shares its weight tensor with the input embedding."""
    head = model.get_output_embeddings()
    return head is not None and head.weight is model.get_input_embeddings().weight


@torch.no_grad()
def max_logit_difference(model_a: PreTrainedModel, model_b: PreTrainedModel, input_ids: torch.Tensor) -> float:
    """Largest absolute difference of the two models' logits on ``input_ids`` (1, T)."""
    logits_a = model_a(input_ids=input_ids).logits.float()
    logits_b = model_b(input_ids=input_ids).logits.float()
    return (logits_a - logits_b).abs().max().item()


def verification_ids(tokenizer: PreTrainedTokenizerBase, num_rows: int) -> torch.Tensor:
    """(1, T) a short fixed id sequence: BOS (when the tokenizer has one), then ids evenly spread
    over the first ``num_rows`` (the model's embedding rows)."""
    last = min(len(tokenizer), num_rows) - 1
    ids = [round(i * last / (VERIFY_TOKEN_IDS - 1)) for i in range(VERIFY_TOKEN_IDS)]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    return torch.tensor([ids])


@dataclass(frozen=True)
class GgufConversion:
    """What :func:`convert_gguf` did.

    Attributes:
        folder: the complete converted folder.
        converted: False when the folder already existed (nothing was done).
        seconds: wall time of the conversion (0 when nothing was done).
        max_logit_difference: largest |logit| difference, GGUF-loaded vs rebuilt (NaN when reused).
    """

    folder: Path
    converted: bool
    seconds: float
    max_logit_difference: float


def convert_gguf(source: GgufSource, dest: Path, *, name: str, cache_root: Path) -> GgufConversion:
    """Convert a GGUF model into a plain safetensors checkpoint at ``dest``, atomically, once.

    Args:
        source: the GGUF file (or the parts to join into it).
        dest: the target folder (normally :func:`converted_dir`); reused when already complete.
        name: the model's name, recorded in the marker.
        cache_root: where a joined GGUF file is written when ``source`` is split.

    Returns:
        A :class:`GgufConversion`.

    Raises:
        FileExistsError: ``dest`` exists but is not a complete conversion.
        RuntimeError: the rebuilt model lost its tied embeddings or computes different logits.
    """
    if is_complete(dest):
        return GgufConversion(dest, converted=False, seconds=0.0, max_logit_difference=float("nan"))
    if dest.exists():
        raise FileExistsError(
            f"{dest} exists but holds no {CONVERSION_MARKER}, so it is not a complete conversion; "
            "delete it and load again"
        )
    start = time.perf_counter()
    gguf_path = materialise(source, cache_root)
    gguf_model, tokenizer = load_gguf_model(gguf_path, torch.float32)
    model = plain_model(gguf_model)
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if tied and not embeddings_tied(model):
        raise RuntimeError(f"{name}: the rebuilt model's embeddings are no longer tied")
    probe = verification_ids(tokenizer, model.get_input_embeddings().num_embeddings)
    difference = max_logit_difference(gguf_model, model, probe)
    if not difference <= VERIFY_ATOL:
        raise RuntimeError(
            f"{name}: the rebuilt model's logits differ from the GGUF-loaded model's by {difference:.3g} "
            f"(> {VERIFY_ATOL}); the conversion is wrong for this architecture, please report it"
        )
    del gguf_model

    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        os.chmod(temp, _DIR_MODE & ~_current_umask())  # mkdtemp makes it private; follow the umask
        model.save_pretrained(temp)
        tokenizer.save_pretrained(temp)
        seconds = time.perf_counter() - start
        marker = {
            "format": CONVERSION_FORMAT,
            "name": name,
            "gguf_file": source.file_name,
            "gguf_path": str(gguf_path),
            "gguf_sha256": source.sha256,
            "tie_word_embeddings": tied,
            "max_logit_difference": difference,
            "seconds": round(seconds, 2),
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
        }
        (temp / CONVERSION_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        try:
            os.rename(temp, dest)
        except OSError:
            if not is_complete(dest):  # not a lost race with another converter: a real failure
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return GgufConversion(dest, converted=True, seconds=seconds, max_logit_difference=difference)


_DIR_MODE = 0o777
_FILE_MODE = 0o666


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("transformers", "torch", "gguf", "safetensors"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "unknown"
    return found
