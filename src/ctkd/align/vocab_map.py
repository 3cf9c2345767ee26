"""Teacher -> student vocabulary map by minimum string edit distance (MinED, FuseLLM).

Source: Wan, Huang, Cai, Quan, Bi, Shi, "Knowledge Fusion of Large Language Models" (FuseLLM), ICLR 2024,
arXiv 2401.10491, section 3.3 ("token alignment"). FuseLLM replaces the exact-match (EM) vocabulary
correspondence of Fu et al. (2023) by *minimum edit distance*: every source (here: teacher) token is mapped
to the target (student) token whose string is closest in Levenshtein distance, so that the teacher's
probability on, say, ``" Pari"`` is not lost when the student has only ``" Paris"``. Re-implemented from
the paper; no code is taken from the authors' repository (it has no licence).

What is compared: token *texts*, normalised so that two tokenizers spell the same text the same way
(:class:`TokenTexts`):

- byte-level BPE tokens (GPT-2, Qwen, SmolLM2: a ``ByteLevel`` decoder) are mapped back through the
  byte-to-unicode table to their bytes (``"Ġworld"`` -> ``b" world"``, ``"ä¸Ń"`` -> the UTF-8 bytes of 中);
- SentencePiece-style tokens (Llama-2, Mistral, Gemma: ``Metaspace`` or ``Replace("▁", " ")``) get the
  word marker ``▁`` replaced by a space (``"▁world"`` -> ``" world"``);
- byte-fallback tokens ``<0xNN>`` (``ByteFallback`` decoder) become the byte ``0xNN``;
- added tokens (special or not: ``<eos>``, ``<|im_end|>``, Gemma's ``"\\n\\n"``) are taken verbatim, except
  ``<0xNN>`` in a byte-fallback tokenizer (some declare the byte tokens as added tokens), which are bytes;
- the bytes are decoded as UTF-8 with ``surrogateescape``: whole characters stay characters, and a token
  that holds part of a multi-byte character (byte-level BPE splits CJK characters) keeps its raw bytes as
  lone surrogates, so the text is an injective function of the bytes and equal texts mean equal bytes.

Choices where the paper is silent, all written down here:

- **Exact first.** Teacher tokens whose text equals a student token's text map to it (distance 0). When
  several student tokens share a text (Llama-2's ``"▁"`` and ``<0x20>`` are both a space), the student token
  with the *same id* wins if it has that text, else the lowest id: so identical tokenizers map to the identity
  and a vocabulary extended at its end keeps its common part unchanged.
- **Nearest for the rest**, by Levenshtein distance over characters (insert, delete, substitute: cost 1 each)
  between the normalised texts, space markers included (``" Paris"`` vs ``"Paris"`` is distance 1). Ties go
  to the lowest student id. The search is exact, not approximate: the C++ ``rapidfuzz`` library computes
  every distance, in blocks of teacher tokens (:func:`rapidfuzz.process.cdist`, all cores, SIMD over many
  strings at once for strings up to 64 characters). Characters that occur in no student token are first
  replaced by one sentinel character (this changes no distance, as they can never match) and equal queries
  are computed once: 216k non-exact Gemma-3 tokens shrink to 149k queries. Brute force turned out faster
  than pruning: a ``score_cutoff`` (which would prune by length) switches rapidfuzz off its SIMD kernel and
  measured 2-3 times slower per pass.
- **Special roles.** With ``match_special_roles=True`` (default), the teacher's EOS, BOS, UNK and PAD tokens
  map to the student's token of the same role when both exist, whatever their strings (``"<eos>"`` ->
  ``"<|im_end|>"``); ``pairs={teacher_id: student_id}`` adds or overrides pairs by hand (for instance a chat
  end-of-turn token). Such pairs are marked ``exact`` with distance 0. They are applied after the cache, so
  the cached map is the pure string map.
- **Holes.** Ids with no token (``convert_ids_to_tokens`` gives None) or an empty text map to -1 with
  distance -1 ("no map"); losses drop their mass.

Cost: ``O(Vt * Vs)`` distance evaluations, done in C++. Gemma-3 (262,144) -> SmolLM2 (49,152), measured by the
slow test in ``tests/align/test_vocab_map.py`` on 2 shared CPU cores: 86 s from scratch (46,253 exact matches,
148,577 distinct nearest-neighbour queries against 49,152 texts; mean distance 1.94), 3.4 s from the cache
(normalising the two vocabularies again to compute the key is most of it). The map is cached on disk (safetensors + JSON metadata, never pickle) under a key that hashes both normalised
vocabularies and :data:`ALGORITHM_VERSION`, written atomically (temp file + rename).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

logger = logging.getLogger(__name__)

ALGORITHM_VERSION = "mined-vocab-map-1"
"""Part of the cache key: bump it whenever the normalisation or the search changes the result."""

NO_MAP = -1
"""``teacher_to_student`` and ``distance`` value of a teacher id that maps to nothing (a hole in the vocabulary)."""

QUERY_BLOCK = 512
"""Teacher tokens per :func:`rapidfuzz.process.cdist` call: a (512, Vs) int32 block is 100 MB for Vs = 49k."""

SPECIAL_ROLES: tuple[str, ...] = ("eos_token_id", "bos_token_id", "unk_token_id", "pad_token_id")
"""Tokenizer attributes whose tokens are paired by role when ``match_special_roles=True``."""

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def byte_level_decoding_table() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode table: printable character -> byte value.

    Byte-level BPE writes each byte as one printable character: the bytes ``!``..``~``, ``¡``..``¬`` and
    ``®``..``ÿ`` stand for themselves, every other byte ``b`` (in increasing order) for ``chr(256 + n)``, n
    counting those other bytes from 0. So ``" "`` (0x20) is written ``"Ġ"`` (U+0120), ``"\\n"`` is ``"Ċ"``.
    """
    keep = [b for lo, hi in (("!", "~"), ("¡", "¬"), ("®", "ÿ")) for b in range(ord(lo), ord(hi) + 1)]
    table = {chr(b): b for b in keep}
    n = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + n)] = b
            n += 1
    return table


def _flatten(component: dict | None, key: str) -> list[dict]:
    if not component:
        return []
    if component.get("type") == "Sequence":
        return [c for sub in component.get(key, []) for c in _flatten(sub, key)]
    return [component]


@dataclass(frozen=True)
class TokenScheme:
    """How a tokenizer spells text in its vocabulary (read from its ``tokenizer.json`` decoder).

    Attributes:
        byte_level: tokens are byte-level BPE strings (``ByteLevel`` decoder).
        replacements: ``(old, new)`` string replacements (``("▁", " ")`` for SentencePiece-style tokenizers).
        byte_fallback: ``<0xNN>`` tokens stand for the byte NN.
    """

    byte_level: bool = False
    replacements: tuple[tuple[str, str], ...] = ()
    byte_fallback: bool = False

    @classmethod
    def of(cls, tokenizer: Any) -> "TokenScheme":
        """Read the scheme of a Hugging Face fast tokenizer from its backend's decoder and pre-tokenizer."""
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(
                f"{type(tokenizer).__name__} has no backend_tokenizer; MinED needs a fast Hugging Face tokenizer "
                "(AutoTokenizer.from_pretrained(..., use_fast=True))"
            )
        spec = json.loads(backend.to_str())
        decoders = _flatten(spec.get("decoder"), "decoders")
        pre = _flatten(spec.get("pre_tokenizer"), "pretokenizers")
        byte_level = any(d.get("type") == "ByteLevel" for d in decoders + pre)
        replacements: list[tuple[str, str]] = []
        for d in decoders:
            if d.get("type") == "Metaspace":
                replacements.append((d.get("replacement", "▁"), " "))
            elif d.get("type") == "Replace" and isinstance(d.get("pattern"), dict) and "String" in d["pattern"]:
                replacements.append((d["pattern"]["String"], d.get("content", "")))
        if not byte_level and not replacements and any(p.get("type") == "Metaspace" for p in pre):
            replacements.append(("▁", " "))
        byte_fallback = (any(d.get("type") == "ByteFallback" for d in decoders)
                         or bool(spec.get("model", {}).get("byte_fallback")))
        return cls(byte_level=byte_level, replacements=tuple(replacements), byte_fallback=byte_fallback)

    def token_bytes(self, token: str) -> bytes:
        """The bytes of text a (non-added) vocabulary token stands for."""
        if self.byte_fallback:
            match = _BYTE_FALLBACK.match(token)
            if match:
                return bytes([int(match.group(1), 16)])
        if self.byte_level:
            table = byte_level_decoding_table()
            out = bytearray()
            for ch in token:
                byte = table.get(ch)
                if byte is None:  # not a byte-level character (should not happen in a byte-level vocabulary)
                    out += ch.encode("utf-8")
                else:
                    out.append(byte)
            return bytes(out)
        for old, new in self.replacements:
            token = token.replace(old, new)
        return token.encode("utf-8")


def bytes_to_text(data: bytes) -> str:
    """UTF-8 with ``surrogateescape``: an injective bytes -> str, whole characters kept as characters."""
    return data.decode("utf-8", errors="surrogateescape")


class TokenTexts:
    """The normalised text of every id of a tokenizer's vocabulary (module docstring), computed once.

    Args:
        tokenizer: a fast Hugging Face tokenizer.

    Attributes:
        texts: one entry per id of the project's vocabulary policy (:func:`ctkd.models.vocab.policy_vocab_size`:
            ``1 + max id``, less llama.cpp's trailing ``[PAD<id>]`` placeholders; ``len(tokenizer)`` for ordinary
            tokenizers), the size of the logits the losses receive; ``texts[i]`` is None for a hole.
        scheme: the :class:`TokenScheme` read from the tokenizer.
    """

    def __init__(self, tokenizer: Any) -> None:
        from ctkd.models.vocab import policy_vocab_size  # lazy: ctkd.models pulls in transformers' model code

        self.scheme = TokenScheme.of(tokenizer)
        size = policy_vocab_size(tokenizer)
        tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
        added = {int(i) for i in getattr(tokenizer, "added_tokens_decoder", {})}
        texts: list[str | None] = []
        for i, token in enumerate(tokens):
            if token is None:
                texts.append(None)
            elif i in added and not (self.scheme.byte_fallback and _BYTE_FALLBACK.match(str(token))):
                texts.append(str(token))
            else:
                texts.append(bytes_to_text(self.scheme.token_bytes(str(token))) or None)
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, token_id: int) -> str | None:
        return self.texts[token_id]

    def of(self, ids: Sequence[int]) -> list[str]:
        """Texts of a sequence of ids (a hole or an out-of-range id gives the empty string)."""
        size = len(self.texts)
        return [(self.texts[i] or "") if 0 <= i < size else "" for i in ids]

    def fingerprint(self) -> str:
        """SHA-256 of the normalised vocabulary (ids and texts), for cache keys."""
        return vocab_fingerprint(self.texts)


def vocab_fingerprint(texts: Sequence[str | None]) -> str:
    """SHA-256 (hex) of a list of token texts, holes included."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(b"\x00" if text is None else b"\x01" + text.encode("utf-8", errors="surrogatepass") + b"\xff")
    return digest.hexdigest()


@dataclass
class VocabMap:
    """A teacher -> student vocabulary map.

    Attributes:
        teacher_to_student: (Vt,) long, student id of each teacher id; -1 (:data:`NO_MAP`) for no map.
        exact: (Vt,) bool, True where the texts are equal (or the pair was set by role or by hand).
        distance: (Vt,) int32, Levenshtein distance between the two texts (0 when exact, -1 for no map).
        stats: counts and timings, JSON-serialisable (``teacher_vocab_size``, ``student_vocab_size``,
            ``exact``, ``nearest``, ``unmapped``, ``role_pairs``, ``mean_distance``, ``build_seconds``, ...).
    """

    teacher_to_student: Tensor
    exact: Tensor
    distance: Tensor
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = int(self.teacher_to_student.numel())
        for name in ("exact", "distance"):
            if int(getattr(self, name).numel()) != n or getattr(self, name).dim() != 1:
                raise ValueError(
                    f"VocabMap.{name} must be ({n},) like teacher_to_student, got {tuple(getattr(self, name).shape)}"
                )
        self.teacher_to_student = self.teacher_to_student.long()
        self.exact = self.exact.bool()
        self.distance = self.distance.int()

    @property
    def teacher_vocab_size(self) -> int:
        return int(self.teacher_to_student.numel())

    @property
    def student_vocab_size(self) -> int:
        """The student vocabulary size recorded at build time (or 1 + the largest mapped id)."""
        recorded = self.stats.get("student_vocab_size")
        return int(recorded) if recorded is not None else int(self.teacher_to_student.max()) + 1

    def save(self, path: str | os.PathLike) -> Path:
        """Write the map as safetensors (tensors) with JSON stats in its metadata, atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "teacher_to_student": self.teacher_to_student.contiguous(),
            "exact": self.exact.contiguous(),
            "distance": self.distance.contiguous(),
        }
        metadata = {"format": ALGORITHM_VERSION, "stats": json.dumps(self.stats, sort_keys=True)}
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "VocabMap":
        """Read a map written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            missing = {"teacher_to_student", "exact", "distance"} - set(handle.keys())
            if missing:
                raise ValueError(f"{path} is not a VocabMap file: tensors {sorted(missing)} are missing")
            tensors = {key: handle.get_tensor(key) for key in ("teacher_to_student", "exact", "distance")}
        return cls(**tensors, stats=json.loads(metadata.get("stats", "{}")))


def _nearest(queries: list[str], choices: list[str], *, progress: bool, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Index (in ``choices``) and Levenshtein distance of each query's nearest choice; ties: lowest index.

    One exact pass, in blocks of :data:`QUERY_BLOCK` queries against every choice. No ``score_cutoff``: rapidfuzz's
    multi-string SIMD kernel (strings up to 64 characters) only runs without one, and measured 2-3 times faster
    than any cutoff schedule on Gemma-3 -> SmolLM2.
    """
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    best = np.empty(len(queries), dtype=np.int64)
    dist = np.empty(len(queries), dtype=np.int64)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(queries), desc=desc, unit="tok")
    for start in range(0, len(queries), QUERY_BLOCK):
        stop = min(len(queries), start + QUERY_BLOCK)
        scores = process.cdist(queries[start:stop], choices, scorer=Levenshtein.distance, dtype=np.int32, workers=-1)
        arg = scores.argmin(axis=1)  # first minimum: the lowest index
        best[start:stop] = arg
        dist[start:stop] = scores[np.arange(stop - start), arg]
        if bar is not None:
            bar.update(stop - start)
    if bar is not None:
        bar.close()
    return best, dist


def map_vocab_texts(
    teacher_texts: Sequence[str | None],
    student_texts: Sequence[str | None],
    *,
    progress: bool = False,
) -> VocabMap:
    """The MinED map between two lists of normalised token texts (exact matches, then nearest by edit distance).

    Args:
        teacher_texts: (Vt) text of each teacher id, None for a hole.
        student_texts: (Vs) text of each student id, None for a hole (never a target).
        progress: show a tqdm bar for the nearest-neighbour search.

    Returns:
        A :class:`VocabMap` with ``stats`` (no role pairs: see :func:`build_vocab_map`).
    """
    start = time.perf_counter()
    vt, vs = len(teacher_texts), len(student_texts)
    exact_index: dict[str, int] = {}
    for j, text in enumerate(student_texts):
        if text:
            exact_index.setdefault(text, j)
    if not exact_index:
        raise ValueError("the student vocabulary has no token with a text; cannot map the teacher vocabulary onto it")
    mapping = np.full(vt, NO_MAP, dtype=np.int64)
    distance = np.full(vt, NO_MAP, dtype=np.int64)
    rest: list[int] = []
    for i, text in enumerate(teacher_texts):
        if not text:
            continue
        j = i if i < vs and student_texts[i] == text else exact_index.get(text)
        if j is None:
            rest.append(i)
        else:
            mapping[i], distance[i] = j, 0
    exact_seconds = time.perf_counter() - start
    choice_ids = np.fromiter(exact_index.values(), dtype=np.int64)
    order = np.argsort(choice_ids, kind="stable")  # lowest student id first, so argmin's tie-break is the lowest id
    choice_ids = choice_ids[order]
    choices = [student_texts[j] for j in choice_ids]
    distinct = 0
    if rest:
        # Characters that no student token contains can only ever be substituted, inserted or deleted, never
        # matched: replacing them all by one such sentinel character leaves every distance unchanged, and many
        # teacher tokens (other scripts) then collapse to the same query, computed once.
        alphabet = set().union(*map(set, choices))
        sentinel = next(chr(c) for c in range(0xE000, 0xF900) if chr(c) not in alphabet)
        queries: dict[str, int] = {}
        slot = np.array([
            queries.setdefault("".join(ch if ch in alphabet else sentinel for ch in teacher_texts[i]), len(queries))
            for i in rest
        ], dtype=np.int64)
        distinct = len(queries)
        best, dist = _nearest(list(queries), choices, progress=progress, desc="MinED vocab map")
        mapping[rest] = choice_ids[best[slot]]
        distance[rest] = dist[slot]
    exact = distance == 0
    mapped = mapping >= 0
    stats = {
        "teacher_vocab_size": vt,
        "student_vocab_size": vs,
        "exact": int(exact.sum()),
        "nearest": len(rest),
        "distinct_queries": distinct,
        "unmapped": int((~mapped).sum()),
        "role_pairs": 0,
        "mean_distance": float(distance[mapped].mean()) if mapped.any() else 0.0,
        "max_distance": int(distance.max()) if vt else 0,
        "exact_seconds": round(exact_seconds, 3),
        "build_seconds": round(time.perf_counter() - start, 3),
    }
    return VocabMap(torch.from_numpy(mapping), torch.from_numpy(exact), torch.from_numpy(distance).int(), stats)


def _apply_pairs(vmap: VocabMap, pairs: Mapping[int, int], student_size: int) -> VocabMap:
    mapping, exact, distance = vmap.teacher_to_student.clone(), vmap.exact.clone(), vmap.distance.clone()
    for t, s in pairs.items():
        if not (0 <= int(t) < vmap.teacher_vocab_size and 0 <= int(s) < student_size):
            raise ValueError(
                f"pair {t} -> {s} is out of range: teacher ids are 0..{vmap.teacher_vocab_size - 1}, student ids "
                f"0..{student_size - 1}"
            )
        mapping[int(t)], exact[int(t)], distance[int(t)] = int(s), True, 0
    stats = dict(vmap.stats, role_pairs=len(pairs), exact=int(exact.sum()))
    return VocabMap(mapping, exact, distance, stats)


def role_pairs(teacher_tokenizer: Any, student_tokenizer: Any) -> dict[int, int]:
    """Teacher id -> student id for the special roles both tokenizers have (:data:`SPECIAL_ROLES`)."""
    pairs: dict[int, int] = {}
    for role in SPECIAL_ROLES:
        t, s = getattr(teacher_tokenizer, role, None), getattr(student_tokenizer, role, None)
        if t is not None and s is not None:
            pairs.setdefault(int(t), int(s))
    return pairs


def build_vocab_map(
    teacher_tokenizer: Any,
    student_tokenizer: Any,
    *,
    cache_dir: str | os.PathLike | None = None,
    match_special_roles: bool = True,
    pairs: Mapping[int, int] | None = None,
    progress: bool = True,
) -> VocabMap:
    """Build (or load from the cache) the MinED teacher -> student vocabulary map.

    Args:
        teacher_tokenizer, student_tokenizer: fast Hugging Face tokenizers; the map has one entry per teacher id of
            the vocabulary policy (:class:`TokenTexts`), each a student id below the student's policy size (or -1).
        cache_dir: folder of cached maps; None disables the cache. The file name holds a hash of both normalised
            vocabularies and :data:`ALGORITHM_VERSION`.
        match_special_roles: pair the EOS / BOS / UNK / PAD tokens by role (module docstring).
        pairs: extra ``{teacher_id: student_id}`` pairs, applied last (they override everything).
        progress: show a tqdm bar while searching.

    Returns:
        The :class:`VocabMap`; ``stats["cache"]`` says ``"hit"``, ``"miss"`` (built and saved) or ``"off"``.
    """
    teacher, student = TokenTexts(teacher_tokenizer), TokenTexts(student_tokenizer)
    vmap: VocabMap | None = None
    cache_path = None
    status = "off"
    if cache_dir is not None:
        key_text = f"{ALGORITHM_VERSION}|{teacher.fingerprint()}|{student.fingerprint()}"
        key = hashlib.sha256(key_text.encode()).hexdigest()
        cache_path = Path(cache_dir) / f"vocab_map-{key[:32]}.safetensors"
        if cache_path.is_file():
            try:
                vmap = VocabMap.load(cache_path)
                status = "hit"
            except Exception as err:  # a corrupt or foreign file: rebuild rather than fail
                logger.warning("ignoring unreadable vocabulary map cache %s (%s); rebuilding it", cache_path, err)
    if vmap is None:
        vmap = map_vocab_texts(teacher.texts, student.texts, progress=progress)
        if cache_path is not None:
            vmap.save(cache_path)
            status = "miss"
    all_pairs: dict[int, int] = role_pairs(teacher_tokenizer, student_tokenizer) if match_special_roles else {}
    all_pairs.update({int(k): int(v) for k, v in (pairs or {}).items()})
    if all_pairs:
        vmap = _apply_pairs(vmap, all_pairs, len(student.texts))
    vmap.stats["cache"] = status
    if cache_path is not None:
        vmap.stats["cache_path"] = str(cache_path)
    return vmap
