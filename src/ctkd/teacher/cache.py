"""A teacher cache: the teacher's signal for every training example, computed once and stored on disk.

``ctkd cache-teacher`` (:func:`write_teacher_cache`) runs the teacher over the training split, with its own
prompts exactly as training builds them, and stores per example what the configured loss reads from the
teacher (its ``teacher_request()``, :class:`ctkd.losses._vocab.TeacherRequest`) and nothing more:

===============  ===========================================================  =====================================
signal           stored per example (L = its teacher answer length)           serves
===============  ===========================================================  =====================================
``ranked_topk``  K column ids (per sequence; (L, K) for token ranking) and    MultiLevelOT (sequence or token
                 (L, K) float32 log-probabilities at each temperature          ranking), exactly: the ranking saw the
                                                                               full softmax at cache time
``topk``         (L, K) ids and float32 log-probabilities at one temperature  ULD, approximately (the mass outside
                                                                               the top-K follows the student's sorted
                                                                               tail; error in ``docs/teacher_cache.md``)
===============  ===========================================================  =====================================

:class:`CachedTeacher` serves them to training (``teacher.cache=PATH``) through the same
:class:`ctkd.teacher.TeacherSignal` interface as a live teacher, so the loss cannot tell the difference.

Folder layout::

    manifest.json           identity, signals and plan (written first)
    tokenizer/              the teacher tokenizer (training needs it, not the teacher model)
    shard-00000.safetensors signals of ``shard_size`` examples, in plan order; the shard's example list is in the
    ...                     safetensors metadata; each shard is written to a temporary file and renamed
    index.json              written last, once every shard exists: a folder without it is an incomplete cache

Identity: the teacher (name, revision, dtype, vocabulary size), a SHA-256 of the saved tokenizer files, the
teacher's resolved prompt settings and length policy, and the data (task, split, SHA-256 of each data file,
of the loaded examples, of the generated-targets file, ``train_limit``). :meth:`CachedTeacher.open` compares
these with the training config and raises :class:`CacheError` naming every difference.

Keys: every example is stored under its id and a hash of its exact teacher tokenization (input ids, answer start
and length: :func:`teacher_key`). Training looks up each batch's example ids and checks the hash against the
batch's own teacher tokens, so a batch can never receive another tokenization's rows.

Resuming: the plan (example ids and keys, shard size) is fixed in ``manifest.json``. Rerunning the same
command skips the shards that exist; a different identity, signal set or plan is an error (``--overwrite``
starts again). An interrupted run leaves no ``index.json``, and :meth:`CachedTeacher.open` refuses it, saying how
many shards are missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ctkd.config import ConfigError, DistillConfig
from ctkd.losses._vocab import PAD_LOGP, TeacherRequest, TopKLogProbs, topk_log_probs
from ctkd.teacher.base import TeacherOutputs, TeacherSignal
from ctkd.types import DistillBatch, RankedTopK, TokenizedSide

logger = logging.getLogger(__name__)

CACHE_FORMAT = "ctkd-teacher-cache"
CACHE_VERSION = 1
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.json"
TOKENIZER_DIR = "tokenizer"
SHARD_NAME = "shard-{:05d}.safetensors"

DEFAULT_SHARD_SIZE = 256
"""Examples per shard: small enough that an interrupted run loses little, large enough to keep files few."""

DEFAULT_BATCH_SIZE = 8
"""Examples per teacher forward at cache time."""

DEFAULT_ULD_TOP_K = 256
"""Columns per position cached for ULD when ``--topk`` is not given (error measured in docs/teacher_cache.md)."""

SHARD_MEMORY_BYTES = 1 << 30
"""Bytes of loaded shards a :class:`CachedTeacher` keeps in memory (least recently used shards go first)."""

KEY_HEX_CHARS = 32
"""Hex characters kept of each example's SHA-256 teacher key (128 bits)."""


class CacheError(ConfigError):
    """A teacher cache that is missing, incomplete, or does not match the training settings."""


# ------------------------------------------------------------------------------------------------------------
# Keys and fingerprints
# ------------------------------------------------------------------------------------------------------------
def teacher_key(input_ids: Sequence[int], answer_start: int, answer_length: int) -> str:
    """A hash of one example's exact teacher tokenization: its token ids and where its answer is."""
    digest = hashlib.sha256(f"{int(answer_start)}:{int(answer_length)}:".encode())
    digest.update(torch.as_tensor(list(input_ids), dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()[:KEY_HEX_CHARS]


def side_keys(side: TokenizedSide) -> list[str]:
    """:func:`teacher_key` of every row of a collated teacher side (the same value as for its features)."""
    lengths = side.attention_mask.sum(dim=1).tolist()
    counts = side.answer_mask.sum(dim=1).tolist()
    first = side.answer_mask.int().argmax(dim=1).tolist()  # position predicting answer token 0
    ids = side.input_ids.cpu()
    return [teacher_key(ids[b, :n].tolist(), first[b] + 1, counts[b]) for b, n in enumerate(lengths)]


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sha256_json(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def data_files(task: str, split: str, folder: str | Path) -> list[Path]:
    """The files a task reader opens for ``split`` (empty for hub data sets, whose examples are hashed instead)."""
    from ctkd.data.readers import FAIRYTALEQA_SPLIT_FOLDER, HUB_PREFIX, JSONL_FILES

    if isinstance(folder, str) and folder.startswith(HUB_PREFIX):
        return []
    folder = Path(folder).expanduser()
    if task == "qed":
        return [folder / f"qed-{split}.jsonlines"]
    if task == "dialogsum":
        return [folder / f"dialogsum.{split}.jsonl"]
    if task == "fairytaleqa":
        sub = FAIRYTALEQA_SPLIT_FOLDER[split]
        return sorted((folder / "questions" / sub).glob("*-questions.csv")) + \
            sorted((folder / "section-stories" / sub).glob("*-story.csv"))
    if task == "jsonl":
        return [folder] if folder.is_file() else [folder / JSONL_FILES[split]]
    return sorted(p for p in folder.rglob("*") if p.is_file())


def data_fingerprint(config: DistillConfig, examples: Sequence[Any]) -> dict[str, Any]:
    """What the training data is: task, split, SHA-256 of each data file and of the loaded examples."""
    from ctkd.train.run import data_dir

    folder = data_dir(config)
    names = {}
    for path in data_files(config.data.task, config.data.train_split, folder):
        root = Path(folder)
        name = str(path.relative_to(root)) if root.is_dir() and path.is_relative_to(root) else path.name
        names[name] = _sha256_file(path) if path.is_file() else None
    rows = [[ex.id, ex.fields, ex.target] for ex in examples]
    return {
        "task": config.data.task,
        "split": config.data.train_split,
        "files": names,
        "train_limit": config.data.train_limit,
        "targets": _sha256_file(Path(config.data.targets)) if config.data.targets else None,
        "keep_ground_truth": config.data.keep_ground_truth,
        "examples": len(rows),
        "examples_sha256": _sha256_json(rows),
    }


def prompt_fingerprint(config: DistillConfig) -> dict[str, Any]:
    """The teacher's resolved prompt settings and length policy."""
    from ctkd.train.run import prompt_config

    return {
        "prompt": dataclasses.asdict(prompt_config(config, "teacher")),
        "max_length": config.data.teacher_max_length,
        "append_eos": config.data.teacher_append_eos,
    }


def tokenizer_sha256(folder: Path) -> str:
    """SHA-256 over the saved tokenizer files (names and contents, in name order)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        digest.update(path.name.encode() + b"\0")
        digest.update(_sha256_file(path).encode())
    return digest.hexdigest()


def _differences(stored: Any, current: Any, prefix: str) -> list[str]:
    if isinstance(stored, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(stored) | set(current), key=str):
            out += _differences(stored.get(key), current.get(key), f"{prefix}.{key}")
        return out
    return [] if stored == current else [f"{prefix}: cache {stored!r}, now {current!r}"]


# ------------------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------------------
def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, ensure_ascii=False))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CacheError(f"cannot read {path}: {err}; rerun ctkd cache-teacher with --overwrite") from None


def _shard_examples(path: Path) -> list[list[Any]] | None:
    """The example list in a shard's metadata, or None when the file is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            return json.loads((handle.metadata() or {})["examples"])
    except Exception:  # a damaged shard is simply recomputed
        return None


def _shard_bounds(num_examples: int, shard_size: int) -> list[tuple[int, int]]:
    return [(start, min(num_examples, start + shard_size)) for start in range(0, num_examples, shard_size)]


# ------------------------------------------------------------------------------------------------------------
# Signals
# ------------------------------------------------------------------------------------------------------------
def _signal_rows(request: TeacherRequest, loss: Any, logits: Any, valid: Tensor) -> dict[str, Tensor]:
    """The tensors stored for ``request`` from one batch: rows of real answer positions, in example order."""
    if request.kind == "ranked_topk":
        signal: RankedTopK = loss.teacher_signal(logits, valid)
        rows = {"logp0": signal.logp_token[valid].float()}
        if len(request.temperatures) > 1:
            rows["logp1"] = signal.logp_sd[valid].float()
        ids = signal.ids[:, 0] if request.ranking == "sequence" else signal.ids[valid]
        rows["ids"] = ids.to(torch.int32)
        return rows
    top = topk_log_probs(logits, valid, request.top_k, request.temperatures[0])
    return {"ids": top.ids[valid].to(torch.int32), "logp0": top.logp[valid].float()}


def _per_example(request: TeacherRequest) -> bool:
    """Whether the signal's ``ids`` has one row per example (sequence ranking) instead of one per position."""
    return request.kind == "ranked_topk" and request.ranking == "sequence"


def cache_requests(loss: Any, *, topk: int = 0, topk_temperature: float = 1.0,
                   method: str | None = None) -> list[TeacherRequest]:
    """The signals a cache stores for ``loss`` (its ``teacher_request()``), plus a per-position top-``topk``.

    ``loss`` is None for a method without ``teacher_request`` (``method`` names it in the error).

    Raises:
        CacheError: the loss reads the teacher's full logits (no ``teacher_request``) and no ``topk`` was asked
            for, or its settings cannot be cached (the loss says why).
    """
    requests: list[TeacherRequest] = []
    ask = getattr(loss, "teacher_request", None) if loss is not None else None
    if ask is not None:
        try:
            request = ask()
        except ValueError as err:
            raise CacheError(str(err)) from None
        if request.kind == "topk" and request.top_k == 0:  # any k will do (ULD): take the asked or default k
            request = dataclasses.replace(request, top_k=topk or DEFAULT_ULD_TOP_K)
        requests.append(request)
    elif not topk:
        name = getattr(loss, "name", None) or method
        raise CacheError(f"loss {name!r} reads the teacher's full logits (or no teacher at all), which a cache does "
                         "not hold; methods that train from a cache: multilevel_ot (ranking sequence or token), uld")
    if topk:
        extra = TeacherRequest(kind="topk", top_k=int(topk), temperatures=(float(topk_temperature),))
        if extra not in requests:
            requests.append(extra)
    return requests


# ------------------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------------------
@dataclass
class CacheSummary:
    """What :func:`write_teacher_cache` did.

    Attributes:
        path: the cache folder.
        examples: examples in the cache.
        answer_tokens: teacher answer positions stored.
        bytes: size of the shards.
        shards_written: shards computed by this call (the others existed already).
        seconds: wall time of this call.
        signals: the stored signals, described.
    """

    path: str
    examples: int
    answer_tokens: int
    bytes: int
    shards_written: int
    seconds: float
    signals: list[str]

    @property
    def bytes_per_answer_token(self) -> float:
        return self.bytes / max(1, self.answer_tokens)

    def table(self) -> str:
        return "\n".join([
            f"teacher cache: {self.path}",
            f"signals: {'; '.join(self.signals)}",
            f"examples: {self.examples}, answer tokens: {self.answer_tokens}",
            f"size: {self.bytes / 2**20:.2f} MiB ({self.bytes_per_answer_token:.0f} bytes per answer token)",
            f"shards written now: {self.shards_written}; time: {self.seconds:.1f} s",
        ])


def _prepare_folder(out: Path, manifest: dict[str, Any], overwrite: bool) -> bool:
    """Create, check or clear the cache folder; True when it already holds a complete matching cache."""
    manifest_path = out / MANIFEST_FILE
    if overwrite and manifest_path.exists():
        for path in out.iterdir():
            if path.name in (MANIFEST_FILE, INDEX_FILE, TOKENIZER_DIR) or path.name.startswith("shard-") or \
                    path.name.endswith(".tmp"):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    if manifest_path.exists():
        stored = _read_json(manifest_path)
        diff = _differences({k: v for k, v in stored.items() if k not in ("created", "plan")},
                            {k: v for k, v in manifest.items() if k not in ("created", "plan")}, "manifest")
        if stored.get("plan") != manifest["plan"]:
            diff.append(f"the examples or their teacher tokenizations differ ({len(stored.get('plan', []))} examples "
                        f"in the cache, {len(manifest['plan'])} now)")
        if diff:
            shown = "; ".join(diff[:6]) + (f"; ... ({len(diff)} differences)" if len(diff) > 6 else "")
            raise CacheError(f"{out} holds a teacher cache written with other settings ({shown}); pass --overwrite to "
                             "replace it, or choose another folder")
        return (out / INDEX_FILE).exists()
    if out.exists() and any(out.iterdir()):
        raise CacheError(f"{out} is not empty and holds no teacher cache ({MANIFEST_FILE}); choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return False


def write_teacher_cache(config: DistillConfig, out: str | Path, *, topk: int = 0, topk_temperature: float = 1.0,
                        batch_size: int = DEFAULT_BATCH_SIZE, shard_size: int = DEFAULT_SHARD_SIZE,
                        chunk_size: int | None = None, device: str | None = None, overwrite: bool = False,
                        progress: bool = True, teacher: Any = None) -> CacheSummary:
    """Run the teacher once over the training split and write its signals to ``out`` (module docstring).

    Args:
        config: the training config (teacher, data, prompts, loss): the cache serves training with it.
        out: the cache folder (new, empty, or a cache of the same settings to resume).
        topk: also store each position's top-``topk`` log-probabilities (for ULD); 0: only the loss's signal.
        topk_temperature: temperature of those log-probabilities (ULD's ``temperature``).
        batch_size: examples per teacher forward.
        shard_size: examples per shard (part of the plan: keep it when resuming).
        chunk_size: positions per chunk of head logits (None: ``config.teacher.chunk_size``).
        device: where the teacher runs (None: CUDA when available, else the CPU).
        overwrite: replace a cache written with other settings.
        progress: show a progress bar.
        teacher: an already loaded :class:`ctkd.models.LoadedModel` (tests, benchmarks); None loads
            ``config.teacher``.

    Returns:
        :class:`CacheSummary`.
    """
    from tqdm.auto import tqdm

    from ctkd.data import DistillCollator, SideConfig
    from ctkd.losses import LOSSES, build_loss
    from ctkd.models import load_model
    from ctkd.teacher.live import LiveTeacher
    from ctkd.train.run import load_train_examples, prompt_builder

    tick = time.perf_counter()
    out = Path(out)
    if batch_size < 1 or shard_size < 1:
        raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size} and {shard_size}")
    if not config.teacher.name and teacher is None:
        raise CacheError("teacher.name is empty: ctkd cache-teacher runs the teacher model; set teacher.name")
    cls = LOSSES[config.loss.method]
    loss = build_loss(config.loss.method, **config.loss.params) if hasattr(cls, "teacher_request") else None
    requests = cache_requests(loss, topk=topk, topk_temperature=topk_temperature, method=config.loss.method)

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if teacher is None:
        teacher = load_model(config.teacher.name, role="teacher", dtype=config.teacher.dtype, device=device,
                             cache_dir=config.teacher.cache_dir, trust_remote_code=config.teacher.trust_remote_code,
                             revision=config.teacher.revision)
    examples = load_train_examples(config)
    builder = prompt_builder(config, "teacher", teacher.tokenizer, examples)
    side = SideConfig(max_length=config.data.teacher_max_length, append_eos=config.data.teacher_append_eos)
    # the teacher side of the training collator (both sides teacher: only examples the teacher cannot fit drop)
    collator = DistillCollator(teacher.tokenizer, teacher.tokenizer, builder, builder, side, side)
    features = collator.prepare(examples).features
    plan = [[f.example_id, teacher_key(f.teacher.input_ids, f.teacher.answer_start, f.teacher.answer_length),
             f.teacher.answer_length] for f in features]

    tok_dir = out / TOKENIZER_DIR
    staging = out.parent / f".{out.name}.tokenizer.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    teacher.tokenizer.save_pretrained(str(staging))
    hidden_size = int(getattr(teacher.model.config, "hidden_size", 0) or 0)
    manifest = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "teacher": {"name": config.teacher.name, "revision": config.teacher.revision, "dtype": config.teacher.dtype,
                    "vocab_size": int(teacher.vocab_size), "hidden_size": hidden_size},
        "tokenizer_sha256": tokenizer_sha256(staging),
        "teacher_side": prompt_fingerprint(config),
        "data": data_fingerprint(config, examples),
        "signals": [r.to_dict() for r in requests],
        "shard_size": int(shard_size),
        "plan": plan,
    }
    try:
        complete = _prepare_folder(out, manifest, overwrite)
        if not (out / MANIFEST_FILE).exists():  # first: a folder with a manifest is a (possibly partial) cache
            _write_json(out / MANIFEST_FILE, {**manifest, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if not tok_dir.exists():
            staging.rename(tok_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    bounds = _shard_bounds(len(plan), shard_size)
    if complete:
        logger.info("%s already holds this complete teacher cache; nothing to do", out)
        return _summary(out, manifest, 0, time.perf_counter() - tick)

    live = LiveTeacher(teacher.model, teacher.vocab_size,
                       chunk_size=config.teacher.chunk_size if chunk_size is None else chunk_size)
    pending = [i for i, (a, b) in enumerate(bounds) if _shard_examples(out / SHARD_NAME.format(i)) != plan[a:b]]
    done_examples = sum(b - a for i, (a, b) in enumerate(bounds) if i not in set(pending))
    bar = tqdm(total=len(plan), initial=done_examples, desc="cache-teacher", unit="ex", disable=not progress)
    for shard in pending:
        start, stop = bounds[shard]
        parts: dict[str, list[Tensor]] = {}
        for first in range(start, stop, batch_size):
            batch = collator.collate(features[first:min(stop, first + batch_size)])
            teacher_out = live.head_outputs(batch.to(device))
            for j, request in enumerate(requests):
                for name, rows in _signal_rows(request, loss, teacher_out.signal, teacher_out.mask).items():
                    parts.setdefault(f"s{j}.{name}", []).append(rows.cpu())
            bar.update(batch.teacher.input_ids.shape[0])
        tensors = {name: torch.cat(chunks).contiguous() for name, chunks in parts.items()}
        path = out / SHARD_NAME.format(shard)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"examples": json.dumps(plan[start:stop])})
        os.replace(tmp, path)
    bar.close()
    index = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "complete": True,
             "shards": [SHARD_NAME.format(i) for i in range(len(bounds))]}
    _write_json(out / INDEX_FILE, index)  # last: marks the cache complete
    return _summary(out, manifest, len(pending), time.perf_counter() - tick)


def _summary(out: Path, manifest: dict[str, Any], written: int, seconds: float) -> CacheSummary:
    shards = _shard_bounds(len(manifest["plan"]), manifest["shard_size"])
    size = sum((out / SHARD_NAME.format(i)).stat().st_size for i in range(len(shards)))
    return CacheSummary(path=str(out), examples=len(manifest["plan"]),
                        answer_tokens=sum(int(row[2]) for row in manifest["plan"]), bytes=size,
                        shards_written=written, seconds=seconds,
                        signals=[TeacherRequest.from_dict(s).describe() for s in manifest["signals"]])


# ------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    key: str
    shard: int
    slot: int  # the example's index within its shard
    row: int  # its first answer row within the shard
    length: int


class CachedTeacher(TeacherSignal):
    """The teacher signal read from a cache written by ``ctkd cache-teacher`` (module docstring).

    Build it with :meth:`open`. Attributes: ``tokenizer`` (the teacher tokenizer, saved with the cache),
    ``vocab_size``, ``requests`` (the stored signals), ``path``.
    """

    def __init__(self, path: Path, manifest: dict[str, Any], tokenizer: Any) -> None:
        self.path = path
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.vocab_size = int(manifest["teacher"]["vocab_size"])
        self.requests = [TeacherRequest.from_dict(s) for s in manifest["signals"]]
        self.device = torch.device("cpu")
        self._where: dict[str, list[_Entry]] = {}
        plan = manifest["plan"]
        for shard, (start, stop) in enumerate(_shard_bounds(len(plan), manifest["shard_size"])):
            row = 0
            for slot, (example_id, key, length) in enumerate(plan[start:stop]):
                self._where.setdefault(example_id, []).append(_Entry(key, shard, slot, row, int(length)))
                row += int(length)
        self._shards: OrderedDict[int, dict[str, Tensor]] = OrderedDict()
        self._shard_bytes = 0
        self._warned: set[str] = set()

    # --- opening -------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, config: DistillConfig | None = None) -> "CachedTeacher":
        """Open a complete cache; with ``config``, check that it was written for this training setup.

        Raises:
            CacheError: not a cache, an incomplete cache (an interrupted ``ctkd cache-teacher``), a damaged one,
                or one whose teacher, prompts or data differ from ``config`` (every difference is named).
        """
        from transformers import AutoTokenizer

        path = Path(path)
        manifest_path = path / MANIFEST_FILE
        if not manifest_path.exists():
            raise CacheError(f"teacher.cache {str(path)!r} is not a teacher cache (no {MANIFEST_FILE}); write one with "
                             "ctkd cache-teacher")
        manifest = _read_json(manifest_path)
        if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
            raise CacheError(f"{path} holds format {manifest.get('format')!r} version {manifest.get('version')!r}; "
                             f"this ctkd reads {CACHE_FORMAT!r} version {CACHE_VERSION}: rewrite it with "
                             "ctkd cache-teacher --overwrite")
        bounds = _shard_bounds(len(manifest["plan"]), manifest["shard_size"])
        if not (path / INDEX_FILE).exists():
            present = sum((path / SHARD_NAME.format(i)).exists() for i in range(len(bounds)))
            raise CacheError(f"the teacher cache at {path} is incomplete ({present} of {len(bounds)} shards written; "
                             "ctkd cache-teacher was interrupted): rerun the same ctkd cache-teacher command to finish it")
        missing = [SHARD_NAME.format(i) for i in range(len(bounds)) if not (path / SHARD_NAME.format(i)).exists()]
        tok_dir = path / TOKENIZER_DIR
        if missing or not tok_dir.is_dir():
            raise CacheError(f"the teacher cache at {path} is damaged (missing {missing or [TOKENIZER_DIR]}); rewrite it "
                             "with ctkd cache-teacher --overwrite")
        if tokenizer_sha256(tok_dir) != manifest["tokenizer_sha256"]:
            raise CacheError(f"the tokenizer files in {tok_dir} changed since the cache was written; rewrite the cache "
                             "with ctkd cache-teacher --overwrite")
        cache = cls(path, manifest, AutoTokenizer.from_pretrained(str(tok_dir)))
        if config is not None:
            cache.check_config(config)
        return cache

    def check_config(self, config: DistillConfig) -> None:
        """Raise :class:`CacheError` naming every way the cache's teacher, prompts or data differ from ``config``."""
        from ctkd.train.run import load_train_examples

        stored = self.manifest
        problems: list[str] = []
        teacher = stored["teacher"]
        if config.teacher.name:
            for key in ("name", "revision", "dtype"):
                if getattr(config.teacher, key) != teacher[key]:
                    problems.append(f"teacher.{key}: cache {teacher[key]!r}, config {getattr(config.teacher, key)!r}")
        problems += _differences(stored["teacher_side"], prompt_fingerprint(config), "teacher prompt")
        data = data_fingerprint(config, load_train_examples(config))
        for key in ("task", "split", "train_limit", "keep_ground_truth"):
            if stored["data"][key] != data[key]:
                problems.append(f"data.{'train_split' if key == 'split' else key}: cache {stored['data'][key]!r}, "
                                f"config {data[key]!r}")
        for name in sorted(set(stored["data"]["files"]) | set(data["files"])):
            was, now = stored["data"]["files"].get(name), data["files"].get(name)
            if was != now:
                state = "is missing now" if now is None else "was not read when the cache was written" \
                    if was is None else f"changed (sha256 {was[:12]}... -> {now[:12]}...)"
                problems.append(f"data file {name} {state}")
        if stored["data"]["targets"] != data["targets"]:
            problems.append("data.targets: the generated-targets file differs from the one the cache was written with")
        if not problems and stored["data"]["examples_sha256"] != data["examples_sha256"]:
            problems.append(f"data: the {data['examples']} loaded training examples differ from the "
                            f"{stored['data']['examples']} the cache was written from")
        if problems:
            raise CacheError(f"the teacher cache at {self.path} does not match the config: " + "; ".join(problems) +
                             ". Write a cache for this config with ctkd cache-teacher (or use the settings it was "
                             "written with)")

    def check(self, *, loss: Any = None, features: Sequence[Any] | None = None) -> None:
        """Before training: the loss can read a stored signal, and every training example is in the cache with the
        same teacher tokenization (a :class:`CacheError` otherwise, naming examples)."""
        if loss is not None:
            self._serving(loss)
        if features is not None:
            missing, changed = [], []
            for f in features:
                key = teacher_key(f.teacher.input_ids, f.teacher.answer_start, f.teacher.answer_length)
                entries = self._where.get(f.example_id)
                if not entries:
                    missing.append(f.example_id)
                elif all(e.key != key for e in entries):
                    changed.append(f.example_id)
            if missing or changed:
                raise CacheError(
                    f"{len(missing)} training example(s) are not in the teacher cache at {self.path} "
                    f"(e.g. {missing[:3]}) and {len(changed)} have another teacher tokenization than when it was "
                    f"written (e.g. {changed[:3]}); the cache was written for other data, prompts or tokenizer: "
                    "rerun ctkd cache-teacher for this config")

    # --- serving ---------------------------------------------------------------------------------------------
    def to(self, device) -> "CachedTeacher":
        self.device = torch.device(device)
        return self

    def _serving(self, loss: Any) -> tuple[int, TeacherRequest, TeacherRequest]:
        """(index, stored, requested) of the stored signal that answers ``loss``'s request."""
        name = getattr(loss, "name", type(loss).__name__)
        ask = getattr(loss, "teacher_request", None)
        if ask is None:
            raise CacheError(f"loss {name!r} reads the teacher's full logits, which a teacher cache does not hold; "
                             "train it with a live teacher (teacher.name, no teacher.cache)")
        try:
            request = ask()
        except ValueError as err:
            raise CacheError(str(err)) from None
        reasons = []
        for j, stored in enumerate(self.requests):
            reason = request.served_by(stored)
            if reason is None:
                if request.kind == "topk" and request.top_k == 0 and name not in self._warned:
                    self._warned.add(name)
                    logger.warning("loss %r trains from the cached top-%d teacher probabilities: an approximation "
                                   "(docs/teacher_cache.md gives its measured error)", name, stored.top_k)
                return j, stored, request
            reasons.append(f"{stored.describe()}: {reason}")
        raise CacheError(f"the teacher cache at {self.path} holds no signal for loss {name!r} "
                         f"({request.describe()}): " + "; ".join(reasons) +
                         ". Write a cache for this loss with ctkd cache-teacher")

    def _shard(self, shard: int) -> dict[str, Tensor]:
        if shard in self._shards:
            self._shards.move_to_end(shard)
            return self._shards[shard]
        tensors = load_file(str(self.path / SHARD_NAME.format(shard)))
        self._shards[shard] = tensors
        self._shard_bytes += sum(t.numel() * t.element_size() for t in tensors.values())
        while self._shard_bytes > SHARD_MEMORY_BYTES and len(self._shards) > 1:
            _, old = self._shards.popitem(last=False)
            self._shard_bytes -= sum(t.numel() * t.element_size() for t in old.values())
        return tensors

    def _entries(self, batch: DistillBatch) -> list[_Entry]:
        keys = side_keys(batch.teacher)
        if len(batch.example_ids) != len(keys):
            raise CacheError(f"the batch has {len(keys)} examples but {len(batch.example_ids)} example ids; a cached "
                             "teacher finds each example's rows by its id (the collator sets example_ids)")
        found = []
        for example_id, key in zip(batch.example_ids, keys):
            entry = next((e for e in self._where.get(example_id, ()) if e.key == key), None)
            if entry is None:
                what = "is not in the cache" if example_id not in self._where else \
                    "has another teacher tokenization than when the cache was written"
                raise CacheError(f"training example {example_id!r} {what} ({self.path}); rerun ctkd cache-teacher "
                                 "for this config")
            found.append(entry)
        return found

    def outputs(self, batch: DistillBatch, *, hidden: bool = False) -> TeacherOutputs:
        raise CacheError("a teacher cache serves a loss's own signal: call outputs_for(loss, batch)")

    def outputs_for(self, loss: Any, batch: DistillBatch, *, hidden: bool = False) -> TeacherOutputs:
        """The stored signal for ``loss`` over ``batch``, packed (B, L, K) like the live teacher's."""
        if hidden:
            raise CacheError(f"loss {getattr(loss, 'name', loss)!r} needs the teacher's hidden states, which a "
                             "teacher cache does not hold; use a live teacher")
        j, stored, request = self._serving(loss)
        entries = self._entries(batch)
        lengths = torch.tensor([e.length for e in entries])
        length = int(lengths.max()) if len(entries) else 0
        valid = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
        k = request.top_k or stored.top_k
        temps = [next(i for i, t in enumerate(stored.temperatures) if math.isclose(t, r))
                 for r in request.temperatures]

        def rows(name: str) -> Tensor:
            out = []
            for e in entries:
                tensor = self._shard(e.shard)[f"s{j}.{name}"]
                out.append(tensor[e.row:e.row + e.length, :k])
            return torch.cat(out)

        def pack(flat: Tensor, fill: float) -> Tensor:
            packed = flat.new_full((len(entries), length, flat.shape[-1]), fill)
            packed[valid] = flat
            return packed

        if _per_example(stored):
            per_seq = torch.stack([self._shard(e.shard)[f"s{j}.ids"][e.slot, :k] for e in entries]).long()
            ids = per_seq.unsqueeze(1).expand(-1, length, -1) * valid.unsqueeze(-1)  # 0 on padding, as live
        else:
            ids = pack(rows("ids").long(), 0)
        logps = [pack(rows(f"logp{t}"), PAD_LOGP) for t in temps]
        if request.kind == "ranked_topk":
            signal: Any = RankedTopK(ids=ids, logp_token=logps[0], logp_sd=logps[-1], valid=valid)
        else:
            signal = TopKLogProbs(ids=ids, logp=logps[0], valid=valid, vocab_size=self.vocab_size,
                                  temperature=stored.temperatures[temps[0]])
        signal = signal.to(self.device)
        return TeacherOutputs(logits=None, mask=valid.to(self.device), signal=signal)
