"""Data shipped inside the package, for the built-in default run and for examples that need no download.

``builtin_data_dir("qed")`` is a folder laid out like the original QED data (``qed-train.jsonlines``
with 200 rows, ``qed-validation.jsonlines`` with 40), so ``load_task("qed", split,
builtin_data_dir("qed"))`` reads it like any other copy. Licence and origin: the folder's ``NOTICE``
(CC BY-SA 3.0, Wikipedia text, from google-research-datasets/QED).
"""

from __future__ import annotations

import atexit
import contextlib
from importlib import resources
from pathlib import Path

BUILTIN_DATA = ("qed",)
"""Tasks with a copy inside the package."""

_extracted = contextlib.ExitStack()
atexit.register(_extracted.close)


def builtin_data_dir(task: str) -> Path:
    """Folder of the copy of ``task`` shipped with the package.

    A normal (unzipped) install returns the folder itself; a zipped install extracts it to a
    temporary folder that lives until the interpreter exits.
    """
    if task not in BUILTIN_DATA:
        raise ValueError(
            f"no built-in data for task {task!r}; built-in: {', '.join(BUILTIN_DATA)}. "
            "Give the task's data folder instead."
        )
    folder = resources.files("ctkd.resources").joinpath(task)
    if isinstance(folder, Path):
        return folder
    return Path(_extracted.enter_context(resources.as_file(folder)))
