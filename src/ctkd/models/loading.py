"""Load a causal LM and its tokenizer from a hub id, a local folder, a GGUF file or a short name.

Everything the rest of ctkd needs from a model comes back in one :class:`LoadedModel`, with the
vocabulary policy already applied (``vocab_size`` is the number of ids the tokenizer can produce;
see :mod:`ctkd.models.vocab`).

How a ``name_or_path`` is understood, in this order:

1. an existing ``.gguf`` file -> converted once into the cache, then loaded from there;
2. an existing folder -> loaded with transformers (``config.json``, safetensors weights, tokenizer
   files); with ``gguf_file=`` the named GGUF inside the folder is used instead;
3. a short name from :data:`~ctkd.models.registry.KNOWN_MODELS` -> the installed package's GGUF
   file, or the public hub id when the package is not installed;
4. something that looks like a path (``./x``, ``/x``, ``~/x``, ``x.gguf``) -> ``FileNotFoundError``;
5. ``owner/name`` -> a Hugging Face hub id (``gguf_file=`` downloads that file from the repo);
6. anything else -> an error listing the short names.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .gguf_cache import convert_gguf, converted_dir, is_complete, resolve_cache_root, source_for_file
from .registry import KNOWN_MODELS, GgufSource, KnownModel
from .vocab import check_vocab_fits, output_embedding, policy_vocab_size, vocab_logits

Role = Literal["student", "teacher"]
Source = Literal["hub", "folder", "gguf", "cache"]

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
"""The weight dtypes ``load_model`` accepts, by name."""

ROLES: tuple[str, ...] = ("student", "teacher")

CONFIG_FILE = "config.json"
WEIGHT_PATTERNS = ("model.safetensors", "model.safetensors.index.json", "*.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class HubUnavailableError(OSError):
    """A hub id could not be loaded: no network, not in the local hub cache, or no such repository."""


class UnknownModelError(ValueError):
    """A bare name that is neither a short name, a path nor an ``owner/name`` hub id."""


@dataclass
class LoadedModel:
    """A causal LM ready for ctkd, with its tokenizer and vocabulary facts.

    Attributes:
        model: the transformers model, on ``device``, in ``dtype``; a teacher is in eval mode with
            every parameter frozen, a student is in train mode.
        tokenizer: its tokenizer; it always has a pad token (EOS when it had none,
            see ``pad_token_from_eos``).
        vocab_size: the policy vocabulary size ``V`` (ids the tokenizer can produce); slice logits
            with :meth:`vocab_logits`.
        embedding_rows: rows of the model's embedding matrix (``>= vocab_size``).
        name: the short name, hub id, folder name or GGUF file stem the model was asked for by.
        source: ``hub``, ``folder``, ``gguf`` (converted during this call) or ``cache`` (converted earlier).
        path: the local folder the weights were read from (for ``gguf``/``cache`` the converted
            folder); ``None`` for a hub model whose snapshot folder cannot be found.
        gguf_path: the GGUF file a converted model came from (``None`` for hub/folder models, and
            for cache hits of split packages, whose joined file may not exist).
        role: ``student`` or ``teacher``.
        dtype: the weights' dtype.
        pad_token_from_eos: True when the tokenizer had no pad token and EOS was set as pad.
    """

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    vocab_size: int
    embedding_rows: int
    name: str
    source: Source
    path: Path | None
    gguf_path: Path | None = None
    role: Role = "student"
    dtype: torch.dtype = torch.float32
    pad_token_from_eos: bool = False

    def vocab_logits(self, logits: torch.Tensor, *, contiguous: bool = True) -> torch.Tensor:
        """(..., R) -> (..., V): the logits of the ids the tokenizer can produce (see :func:`vocab_logits`)."""
        return vocab_logits(logits, self.vocab_size, contiguous=contiguous)

    def output_embedding(self) -> torch.Tensor:
        """(V, H) the LM-head rows of the real vocabulary (see :func:`output_embedding`)."""
        return output_embedding(self.model, self.vocab_size)


# --------------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelRef:
    """Where a ``name_or_path`` points, before anything heavy is loaded.

    Attributes:
        kind: ``folder``, ``gguf`` (a GGUF to convert or take from the cache) or ``hub``.
        name: the name the model is known by (short name, hub id, folder name or GGUF stem).
        folder: the local folder (``folder`` kind).
        hub_id: the hub repository (``hub`` kind, and ``gguf`` kind with a hub-hosted file).
        gguf: the GGUF source (``gguf`` kind; ``None`` for a hub-hosted GGUF not downloaded yet).
        hub_gguf_file: the GGUF file name inside ``hub_id`` (hub-hosted GGUF only).
        known: the registry entry when ``name`` is a short name.
    """

    kind: Literal["folder", "gguf", "hub"]
    name: str
    folder: Path | None = None
    hub_id: str | None = None
    gguf: GgufSource | None = None
    hub_gguf_file: str | None = None
    known: KnownModel | None = None


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith((".", "/", "~", os.sep))
        or text.lower().endswith(".gguf")
        or (os.altsep is not None and os.altsep in text)
        or text.count("/") > 1
    )


def resolve_model(name_or_path: str | os.PathLike, *, gguf_file: str | None = None) -> ModelRef:
    """Decide what ``name_or_path`` refers to (see the module docstring for the order of the rules).

    Hashes a local GGUF file (about 0.2 s per 250 MB) but loads nothing.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()

    if gguf_file is not None:
        if path.is_dir():
            file = path / gguf_file
            if not file.is_file():
                found = sorted(p.name for p in path.glob("*.gguf"))
                raise FileNotFoundError(
                    f"GGUF file {gguf_file!r} not found in {path}; .gguf files there: {found or 'none'}"
                )
            return ModelRef("gguf", name=file.stem, gguf=source_for_file(file))
        if _HUB_ID.match(text) and not path.exists():
            return ModelRef("gguf", name=Path(gguf_file).stem, hub_id=text, hub_gguf_file=gguf_file)
        raise FileNotFoundError(
            f"gguf_file={gguf_file!r} needs a folder that holds it or an owner/name hub id, got {text!r}"
        )

    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(
                f"{path} is a file but not a .gguf file; pass a .gguf file or a model folder "
                f"(with {CONFIG_FILE}, safetensors weights and tokenizer files)"
            )
        return ModelRef("gguf", name=path.stem, gguf=source_for_file(path))
    if path.is_dir():
        _check_folder(path)
        return ModelRef("folder", name=path.resolve().name, folder=path)

    known = KNOWN_MODELS.get(text.lower())
    if known is not None:
        source = known.locate()
        if source is not None:
            return ModelRef("gguf", name=known.name, gguf=source, known=known)
        return ModelRef("hub", name=known.name, hub_id=known.hub_id, known=known)

    if _looks_like_path(text):
        raise FileNotFoundError(f"model path not found: {path.resolve()} (from {text!r})")
    if _HUB_ID.match(text):
        return ModelRef("hub", name=text, hub_id=text)
    raise UnknownModelError(
        f"unknown model name {text!r}: not a local path, not a short name, not an owner/name hub id. "
        f"Known short names: {', '.join(sorted(KNOWN_MODELS))}. For a hub model write its full id "
        "(for example openai-community/gpt2)."
    )


def _check_folder(folder: Path) -> None:
    """Fail early, naming the missing files, when a folder is not a loadable model folder."""
    if not (folder / CONFIG_FILE).is_file():
        ggufs = sorted(p.name for p in folder.glob("*.gguf"))
        hint = (
            f" It holds GGUF files ({', '.join(ggufs)}): pass one of them as the path, or "
            "gguf_file=<name>."
            if ggufs
            else ""
        )
        raise FileNotFoundError(
            f"{folder} is not a model folder: expected {CONFIG_FILE}, safetensors weights "
            f"(model.safetensors or model.safetensors.index.json) and tokenizer files "
            f"({' or '.join(TOKENIZER_FILES)}); {CONFIG_FILE} is missing.{hint}"
        )
    if not any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS):
        pickles = [name for name in PICKLE_WEIGHTS if (folder / name).exists()]
        extra = (
            f" It holds {', '.join(pickles)}, a pickle file, which ctkd does not load; re-save the "
            "model with save_pretrained (safetensors is the default)."
            if pickles
            else ""
        )
        raise FileNotFoundError(
            f"{folder} has {CONFIG_FILE} but no safetensors weights (model.safetensors or "
            f"model.safetensors.index.json).{extra}"
        )
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{folder} has no tokenizer files: expected one of {', '.join(TOKENIZER_FILES)}; save the "
            "tokenizer next to the model with tokenizer.save_pretrained(folder)"
        )


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 matrix work is native (fast) on ``device``.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: the AVX512-BF16 or AMX-BF16 instructions. Without them bf16
    matrix products are emulated: measured here on an AVX2-only AMD EPYC, 0.9 GFLOP/s in bf16 against 62 in
    float32, so ``"auto"`` must not pick bf16 there.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """``"auto"`` -> bfloat16 where it is native on ``device`` (see :func:`native_bf16`), else float32."""
    if dtype == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return _parse_dtype(dtype)


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {sorted(DTYPES) + ['auto']}, got {dtype!r}")


def _hub_error(ref: ModelRef, error: Exception) -> HubUnavailableError:
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    message = (
        f"could not load {ref.hub_id!r} from the Hugging Face hub: no network / not cached, or no such "
        f"repository ({first_line})."
    )
    if ref.known is not None:
        message += (
            f" {ref.name!r} resolves to that hub id because its package is not installed; install it "
            f"to work offline: {ref.known.pip_install}"
        )
    else:
        message += " Connect to the network, or pass a local model folder or .gguf file."
    return HubUnavailableError(message)


def _hub_snapshot_folder(hub_id: str, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, CONFIG_FILE, revision=revision)
    return Path(found).parent if isinstance(found, str) else None


def _load_pretrained(
    ref: str | Path, *, dtype: torch.dtype, revision: str | None, trust_remote_code: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(ref, revision=revision, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        ref, dtype=dtype, revision=revision, trust_remote_code=trust_remote_code, use_safetensors=True
    )
    return model, tokenizer


def _load_gguf(
    ref: ModelRef, *, dtype: torch.dtype, cache_root: Path, revision: str | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Source, Path, Path | None]:
    source = ref.gguf
    if source is None:  # a GGUF hosted in a hub repository: download it first
        from huggingface_hub import hf_hub_download

        try:
            downloaded = Path(hf_hub_download(ref.hub_id, ref.hub_gguf_file, revision=revision))
        except Exception as error:  # network, auth and missing-file errors all end here
            raise _hub_error(ref, error) from error
        source = source_for_file(downloaded)
    folder = converted_dir(cache_root, ref.name, source.sha256)
    if is_complete(folder):
        result: Source = "cache"
    else:
        convert_gguf(source, folder, name=ref.name, cache_root=cache_root)
        result = "gguf"
    model, tokenizer = _load_pretrained(folder, dtype=dtype, revision=None, trust_remote_code=False)
    gguf_path = source.path
    if gguf_path is None:
        joined = cache_root / "gguf" / source.file_name
        gguf_path = joined if joined.is_file() else None
    return model, tokenizer, result, folder, gguf_path


def load_model(
    name_or_path: str | os.PathLike,
    *,
    role: Role = "student",
    dtype: str | torch.dtype = "float32",
    cache_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    gguf_file: str | None = None,
    resize_embeddings: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, apply the vocabulary policy, and prepare it for its role.

    Args:
        name_or_path: a hub id (``owner/name``), a local model folder, a ``.gguf`` file, or a short
            name from ``KNOWN_MODELS`` (see the module docstring for how it is resolved).
        role: ``student`` (train mode, trainable) or ``teacher`` (eval mode, every parameter has
            ``requires_grad=False``).
        dtype: ``float32`` or ``bfloat16`` (bf16 runs about twice as fast on CPUs with avx512_bf16).
        cache_dir: root of ctkd's caches, where GGUF models are converted once (``models/``) and
            split GGUF files are joined (``gguf/``); default ``$CTKD_CACHE``, else
            ``~/.cache/ctkd``. Hub downloads stay in Hugging Face's own cache (``HF_HOME``).
        trust_remote_code: let transformers run code from the model repository; off unless asked.
        device: where the model goes (``cpu``, ``cuda``, ``cuda:1``...).
        revision: hub branch, tag or commit (hub ids only).
        gguf_file: a GGUF file name inside the ``name_or_path`` folder or hub repository.
        resize_embeddings: when the tokenizer can produce more ids than the model has embedding
            rows, grow the embedding instead of raising (transformers' mean resizing: new rows are
            drawn around the mean of the existing rows, and are untrained).

    Returns:
        A :class:`LoadedModel`.

    Raises:
        FileNotFoundError: a path that does not exist, or a folder without the expected files.
        UnknownModelError: a bare name that is not a short name (the message lists them).
        HubUnavailableError: a hub id that cannot be fetched (no network / not cached).
        ValueError: a bad ``role``/``dtype``, a tokenizer with neither pad nor EOS token, or more
            token ids than embedding rows without ``resize_embeddings``.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    torch_dtype = resolve_dtype(dtype, device)
    ref = resolve_model(name_or_path, gguf_file=gguf_file)

    gguf_path: Path | None = None
    if ref.kind == "folder":
        model, tokenizer = _load_pretrained(
            ref.folder, dtype=torch_dtype, revision=revision, trust_remote_code=trust_remote_code
        )
        source: Source = "folder"
        path: Path | None = ref.folder
    elif ref.kind == "gguf":
        model, tokenizer, source, path, gguf_path = _load_gguf(
            ref, dtype=torch_dtype, cache_root=resolve_cache_root(cache_dir), revision=revision
        )
    else:
        try:
            AutoConfig.from_pretrained(ref.hub_id, revision=revision, trust_remote_code=trust_remote_code)
        except OSError as error:
            raise _hub_error(ref, error) from error
        model, tokenizer = _load_pretrained(
            ref.hub_id, dtype=torch_dtype, revision=revision, trust_remote_code=trust_remote_code
        )
        source, path = "hub", _hub_snapshot_folder(ref.hub_id, revision)

    pad_from_eos = _ensure_pad_token(model, tokenizer, ref.name)
    vocab_size = policy_vocab_size(tokenizer)
    rows = model.get_input_embeddings().num_embeddings
    if vocab_size > rows and resize_embeddings:
        model.resize_token_embeddings(vocab_size)
        rows = model.get_input_embeddings().num_embeddings
    check_vocab_fits(vocab_size, rows, ref.name)

    model.to(device)
    if role == "teacher":
        model.eval()
        model.requires_grad_(False)
    else:
        model.train()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        vocab_size=vocab_size,
        embedding_rows=rows,
        name=ref.name,
        source=source,
        path=path,
        gguf_path=gguf_path,
        role=role,
        dtype=torch_dtype,
        pad_token_from_eos=pad_from_eos,
    )


def _ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> bool:
    """Give the tokenizer a pad token when it has none, reusing EOS; return whether it did.

    Padding positions are always masked out (attention mask, answer mask), so reusing EOS changes
    no loss; adding a new token instead would grow the vocabulary past the embedding. The model's
    config and generation config get the pad id when they have none.
    """
    added = False
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(
                f"{name}: the tokenizer has neither a pad token nor an EOS token to pad with; set "
                "tokenizer.pad_token to a token of its vocabulary"
            )
        tokenizer.pad_token = tokenizer.eos_token
        added = True
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None and generation.pad_token_id is None:
        generation.pad_token_id = tokenizer.pad_token_id
    return added
