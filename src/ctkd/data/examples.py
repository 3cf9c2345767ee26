"""The :class:`Example` record every reader returns, and the bookkeeping of malformed rows.

Malformed-row policy (every reader follows it): a row that lacks a required field, has an empty answer,
or cannot be parsed is *skipped and counted*; after reading a file, one :class:`MalformedRowWarning`
per file names the file, how many rows were skipped, and the first few line numbers with their
reasons. A split that ends up with no usable example raises :class:`EmptyDatasetError` naming the
file(s). A data set is never silently empty.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MAX_REPORTED_SKIPS = 5
"""How many skipped rows a warning lists individually (the count is always complete)."""


@dataclass(frozen=True)
class Example:
    """One task instance, independent of any tokenizer.

    Attributes:
        id: identifier, unique within a split (few-shot sampling excludes by it; caches key by it).
        task: task name (``qed``, ``dialogsum``, ``fairytaleqa``, ``jsonl``), selects default prompts.
        fields: the named texts a prompt template may use, e.g. ``context``, ``question``, ``title``
            (QED, FairytaleQA), ``dialogue`` (DialogSum), ``prompt`` (generic JSONL).
        target: the one answer used for training (cross-entropy and distillation positions).
        references: every acceptable answer, for evaluation. For the task readers the target is
            ``references[0]``; for teacher-generated files the target is the generated answer and the
            references stay the gold ones.
    """

    id: str
    task: str
    fields: dict[str, str]
    target: str
    references: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """The serialised form read back by the ``jsonl`` reader (see :mod:`ctkd.data.readers`)."""
        return {
            "id": self.id,
            "task": self.task,
            "fields": dict(self.fields),
            "target": self.target,
            "references": list(self.references),
        }


class MalformedRowWarning(UserWarning):
    """Rows of a data file were skipped because they could not be used."""


class EmptyDatasetError(ValueError):
    """A split has no usable example (missing, empty, or entirely malformed file)."""


class MalformedRow(Exception):
    """Raised by a row parser; the reader catches it, counts the row and goes on."""


@dataclass
class SkipLog:
    """Skipped rows of one file: counts them and emits one warning at the end."""

    path: Path | str
    rows_read: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)

    def skip(self, line: int, reason: str) -> None:
        self.skipped.append((line, reason))

    def summary(self) -> str:
        shown = ", ".join(f"line {line}: {reason}" for line, reason in self.skipped[:MAX_REPORTED_SKIPS])
        more = len(self.skipped) - MAX_REPORTED_SKIPS
        return shown + (f", and {more} more" if more > 0 else "")

    def warn(self) -> None:
        """Emit one :class:`MalformedRowWarning` if any row was skipped."""
        if self.skipped:
            warnings.warn(
                f"skipped {len(self.skipped)} of {self.rows_read} rows of {self.path} as malformed ({self.summary()})",
                MalformedRowWarning,
                stacklevel=3,
            )


def require_text(row: dict, key: str) -> str:
    """The stripped, non-empty string ``row[key]``, or :class:`MalformedRow` saying what is wrong."""
    if key not in row or row[key] is None:
        raise MalformedRow(f"missing field {key!r}")
    value = row[key]
    if not isinstance(value, str):
        raise MalformedRow(f"field {key!r} is {type(value).__name__}, expected a string")
    value = value.strip()
    if not value:
        raise MalformedRow(f"field {key!r} is empty")
    return value


def dedupe(texts: Iterable[str]) -> list[str]:
    """Texts in first-seen order without repeats."""
    return list(dict.fromkeys(texts))


def ensure_nonempty(examples: Sequence[Example], sources: Sequence[Path | str], logs: Sequence[SkipLog]) -> None:
    """Raise :class:`EmptyDatasetError` when nothing usable was read, naming the files and skips."""
    if examples:
        return
    names = ", ".join(str(p) for p in sources) or "(no file)"
    skipped = sum(len(log.skipped) for log in logs)
    read = sum(log.rows_read for log in logs)
    detail = "; ".join(f"{log.path}: {log.summary()}" for log in logs if log.skipped)
    raise EmptyDatasetError(
        f"no usable example in {names}: {read} rows read, {skipped} skipped as malformed"
        + (f" ({detail})" if detail else "")
        + ". Check that the file is the right one for this task and split."
    )


def write_examples_jsonl(examples: Iterable[Example], path: str | os.PathLike) -> Path:
    """Write examples as JSON lines ``{"id", "task", "fields", "target", "references"}``.

    The inverse of reading with the ``jsonl`` reader: ``load_task("jsonl", split, path)`` returns the
    same examples in the same order. The file is written to a temporary name and renamed, so a
    crash never leaves a half-written file behind. Returns the path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for example in examples:
                out.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions of a normal write
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
