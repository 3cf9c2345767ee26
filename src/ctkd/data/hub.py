"""Optional loading of the three tasks from the Hugging Face hub (``datasets``, imported lazily).

Used by :func:`ctkd.data.load_task` when ``data_dir`` starts with ``hf://``. Rows go through the same
row parsers as the local files, so examples look the same whichever source they come from. The hub
copies differ from the original files in small ways, handled here:

- QED (``google-research-datasets/qed``): ``question`` instead of ``question_text``; answer spans may
  come as a dict of lists.
- DialogSum (``knkarthick/dialogsum``): ``id`` instead of ``fname``; one ``summary`` per row in every
  split (the original test set's three references are not there).
- FairytaleQA (``WorkInTheDark/FairytaleQA``): one row per question with its ``story_section`` text
  already joined; the two references are ``answer1`` and ``answer2``.

Needs network access and ``pip install datasets``; not exercised by the offline tests.
"""

from __future__ import annotations

from ctkd.data.examples import Example, MalformedRow, SkipLog, ensure_nonempty, require_text
from ctkd.data.readers import dialogsum_example, fairytaleqa_example, qed_example

HUB_DATASETS = {
    "qed": "google-research-datasets/qed",
    "dialogsum": "knkarthick/dialogsum",
    "fairytaleqa": "WorkInTheDark/FairytaleQA",
}
"""Default hub data set of each task (``hf://`` with no id)."""


def _fairytaleqa_hub_example(row: dict, fallback_id: str) -> Example:
    return fairytaleqa_example(row, require_text(row, "story_section"), (row.get("story_name") or "").strip(), fallback_id)


_ROW_PARSERS = {"qed": qed_example, "dialogsum": dialogsum_example, "fairytaleqa": _fairytaleqa_hub_example}


def load_hub_task(name: str, split: str, dataset_id: str | None = None) -> list[Example]:
    """Load ``split`` of task ``name`` from the hub data set ``dataset_id`` (default: :data:`HUB_DATASETS`)."""
    if name not in _ROW_PARSERS:
        raise ValueError(
            f"task {name!r} has no hub loader; hub loading supports {', '.join(_ROW_PARSERS)} "
            "(for your own data, give a local .jsonl file)"
        )
    try:
        import datasets
    except ImportError as err:
        raise ImportError(
            "loading a task from the Hugging Face hub needs the 'datasets' package: pip install datasets "
            "(or give a local data folder instead of an hf:// path)"
        ) from err
    dataset_id = dataset_id or HUB_DATASETS[name]
    rows = datasets.load_dataset(dataset_id, split=split)
    parse = _ROW_PARSERS[name]
    log = SkipLog(f"hf://{dataset_id} [{split}]")
    examples: list[Example] = []
    for index, row in enumerate(rows):
        log.rows_read += 1
        try:
            examples.append(parse(dict(row), f"{name}-{split}-{index}"))
        except MalformedRow as err:
            log.skip(index, str(err))
    log.warn()
    ensure_nonempty(examples, [log.path], [log])
    return examples
