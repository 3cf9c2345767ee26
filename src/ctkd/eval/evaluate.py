"""Generate, score and save an evaluation run, resumably, so that nothing partial looks complete.

Files in ``out_dir``:

``predictions.jsonl.partial``
    Written while generating. First line a header ``{"header": {"format": ..., "settings": {...}}}``
    with the settings that decide the predictions; then one row per finished example
    (``id``, ``prompt``, ``prediction``, ``references``, ``num_new_tokens``), appended, flushed and
    fsync-ed after every batch. A run that stops midway leaves only this file; the next run with the
    same settings reads it, skips the ids already there and generates the rest.
``predictions.jsonl``
    The finished rows, in input order, with each example's ``score`` (percent). Written to a temporary
    file and renamed into place once every example has a prediction.
``report.json``
    Metric, score (percent), ``n``, settings, timing and ``"complete": true``. Written last (temporary
    file, then rename), after ``predictions.jsonl``; its presence is what marks the folder complete.
    The partial file is removed after it.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

from .generation import DEFAULT_MAX_NEW_TOKENS, END_OF_TURN_TOKENS, iter_generate
from .metrics import resolve_metric
from .report import PREDICTIONS_FILE, REPORT_FILE, EvalReport, check_references, evaluate_predictions

PARTIAL_SUFFIX = ".partial"
PARTIAL_FORMAT = "ctkd.eval.partial/1"
"""Version tag in the partial file's header; a file with another tag is not resumed."""


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one, never half.

    Writes a temporary file in the same folder, fsyncs it and renames it over ``path``
    (``os.replace`` is atomic on POSIX and Windows within one file system).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _model_facts(model, tokenizer) -> dict:
    config = getattr(model, "config", None)
    parameter = next(model.parameters(), None)
    return {
        "model": getattr(config, "_name_or_path", None) or type(model).__name__,
        "model_dtype": str(parameter.dtype).removeprefix("torch.") if parameter is not None else None,
        "tokenizer": getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__,
    }


def _read_partial(path: Path, settings: dict, prompts_by_id: dict[str, str]) -> dict[str, dict]:
    """Rows already generated in a partial file, keyed by id; checks they belong to this run.

    A torn last line (the process died mid-write) is dropped. Rows of ids that are not in this run are
    ignored.

    Raises:
        ValueError: when the header's settings differ from this run's, or an id's prompt changed.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        return {}
    try:
        header = json.loads(lines[0])["header"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path} has no valid header line; delete it to start this evaluation over") from err
    if header.get("format") != PARTIAL_FORMAT:
        raise ValueError(f"{path} has format {header.get('format')!r}, expected {PARTIAL_FORMAT!r}; delete it")
    differences = {
        key: (header["settings"].get(key), value)
        for key, value in settings.items()
        if header["settings"].get(key) != value
    }
    if differences:
        detail = ", ".join(f"{k}: saved {old!r}, now {new!r}" for k, (old, new) in differences.items())
        raise ValueError(
            f"{path} was generated with other settings ({detail}); rerun with the saved settings to resume, "
            "or pass resume=False (or delete the file) to start over"
        )
    done: dict[str, dict] = {}
    for number, line in enumerate(lines[1:], start=2):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break  # torn final line: that example is generated again
            raise ValueError(f"{path} line {number} is not valid JSON; delete the file to start over")
        key = str(row["id"])
        if key not in prompts_by_id:
            continue
        if row["prompt"] != prompts_by_id[key]:
            raise ValueError(
                f"{path}: the saved prompt of example {key!r} differs from this run's prompt; the data or "
                "prompt format changed, so pass resume=False (or delete the file) to start over"
            )
        done[key] = row
    return done


def run_evaluation(
    model,
    tokenizer,
    prompts: Sequence[str],
    references: Sequence[Sequence[str]],
    ids: Sequence[str],
    *,
    metric: str,
    out_dir: str | Path,
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    stop_at_newline: bool = True,
    add_special_tokens: bool | None = None,
    end_of_turn_tokens: Sequence[str] = END_OF_TURN_TOKENS,
    progress: bool = True,
    resume: bool = True,
    overwrite: bool = False,
    settings: dict | None = None,
) -> EvalReport:
    """Generate greedy answers, score them and write ``predictions.jsonl`` and ``report.json``.

    Args:
        model, tokenizer: the causal LM to evaluate and its tokenizer.
        prompts: one prompt per example (the student's zero-shot prompt, or a chat-rendered one).
        references: one list of reference answers per example.
        ids: one unique id per example (stored as strings); resuming matches rows by id.
        metric: a task name (``"qed"``, ...) or a metric name (``"token_f1"``, ...).
        out_dir: folder for the files (created if needed).
        batch_size, max_new_tokens, stop_at_newline, add_special_tokens, end_of_turn_tokens, progress:
            as in :func:`ctkd.eval.generation.generate_answers`.
        resume: continue from ``predictions.jsonl.partial`` when one exists (its settings must match);
            ``False`` discards it.
        overwrite: redo an evaluation whose ``report.json`` already exists (deleted first, so the
            folder never looks complete while the new run is going).
        settings: extra JSON-ready facts about the run (e.g. checkpoint, method, seed), recorded in
            ``report.json`` under ``settings.run``; a partial file is resumed only when they match, so
            a partial from another checkpoint is never mixed in.

    Returns:
        The :class:`~ctkd.eval.report.EvalReport` over all examples.

    Raises:
        FileExistsError: ``out_dir`` already holds a finished evaluation and ``overwrite`` is False.
        ValueError: mismatched list lengths, duplicate ids, or a partial file from other settings.
    """
    start_time = time.perf_counter()
    resolve_metric(metric)  # fail before any generation when the name is wrong
    n = len(prompts)
    if n == 0:
        raise ValueError("no examples to evaluate: prompts is empty")
    references = check_references(references, n)
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} ids for {n} prompts; give one id per example")
    keys = [str(i) for i in ids]
    if len(set(keys)) != n:
        duplicates = sorted(k for k, count in Counter(keys).items() if count > 1)[:5]
        raise ValueError(f"example ids must be unique (resuming matches by id); repeated: {duplicates}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final_path = out_dir / PREDICTIONS_FILE
    partial_path = out_dir / (PREDICTIONS_FILE + PARTIAL_SUFFIX)
    report_path = out_dir / REPORT_FILE
    if report_path.exists():
        if not overwrite:
            raise FileExistsError(
                f"{out_dir} already holds a finished evaluation ({report_path.name}); pass overwrite=True "
                "to redo it, or choose another out_dir"
            )
        report_path.unlink()  # first, so the folder stops looking complete
        final_path.unlink(missing_ok=True)
        partial_path.unlink(missing_ok=True)

    generation_settings = {
        **_model_facts(model, tokenizer),
        "max_new_tokens": max_new_tokens,
        "stop_at_newline": stop_at_newline,
        "add_special_tokens": add_special_tokens,
        "end_of_turn_tokens": list(end_of_turn_tokens),
        "decoding": "greedy",
        "run": dict(settings or {}),  # the caller's facts (checkpoint, method, ...) must match to resume
    }
    prompts_by_id = dict(zip(keys, prompts))
    done: dict[str, dict] = {}
    if partial_path.exists() and resume:
        done = _read_partial(partial_path, generation_settings, prompts_by_id)
    header = {"header": {"format": PARTIAL_FORMAT, "settings": generation_settings}}
    # Rewrite the partial cleanly (header + intact rows of this run) before appending to it.
    atomic_write_text(partial_path, _jsonl([header, *done.values()]))

    todo = [i for i, key in enumerate(keys) if key not in done]
    generation_seconds = 0.0
    new_token_count = 0
    if todo:
        gen_start = time.perf_counter()
        with open(partial_path, "a", encoding="utf-8") as handle:
            for batch in iter_generate(
                model,
                tokenizer,
                [prompts[i] for i in todo],
                batch_size=batch_size,
                max_new_tokens=max_new_tokens,
                stop_at_newline=stop_at_newline,
                add_special_tokens=add_special_tokens,
                end_of_turn_tokens=end_of_turn_tokens,
                progress=progress,
            ):
                rows = []
                for local, text, count in zip(batch.indices, batch.texts, batch.num_new_tokens):
                    index = todo[local]
                    row = {
                        "id": keys[index],
                        "prompt": prompts[index],
                        "prediction": text,
                        "references": references[index],
                        "num_new_tokens": count,
                    }
                    rows.append(row)
                    done[keys[index]] = row
                    new_token_count += count
                handle.write(_jsonl(rows))
                handle.flush()
                os.fsync(handle.fileno())
        generation_seconds = time.perf_counter() - gen_start

    predictions = [done[key]["prediction"] for key in keys]
    report = evaluate_predictions(metric, predictions, references, keys)
    final_rows = [
        {
            "id": key,
            "prompt": prompts[i],
            "prediction": predictions[i],
            "references": references[i],
            "score": report.per_example[i],
            "num_new_tokens": done[key].get("num_new_tokens"),
        }
        for i, key in enumerate(keys)
    ]
    atomic_write_text(final_path, _jsonl(final_rows))

    lengths = [row["num_new_tokens"] for row in final_rows if row["num_new_tokens"] is not None]
    summary = {
        **report.summary(),
        "complete": True,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "predictions_file": PREDICTIONS_FILE,
        "settings": {**generation_settings, "batch_size": batch_size},
        "answers": {
            "mean_new_tokens": sum(lengths) / len(lengths) if lengths else None,
            "at_max_new_tokens": sum(1 for n_tok in lengths if n_tok >= max_new_tokens),
            "empty": sum(1 for p in predictions if not p),
        },
        "timing": {
            "examples_generated": len(todo),
            "examples_resumed": n - len(todo),
            "generation_seconds": round(generation_seconds, 3),
            "seconds_per_example": round(generation_seconds / len(todo), 4) if todo else None,
            "new_tokens_per_second": round(new_token_count / generation_seconds, 2) if generation_seconds else None,
            "total_seconds": round(time.perf_counter() - start_time, 3),
        },
        "versions": {"torch": torch.__version__, "transformers": _transformers_version()},
    }
    atomic_write_text(report_path, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    partial_path.unlink(missing_ok=True)
    return report


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def read_partial_rows(out_dir: str | Path) -> list[dict]:
    """Rows of an unfinished run's partial file (header skipped, a torn last line dropped)."""
    path = Path(out_dir) / (PREDICTIONS_FILE + PARTIAL_SUFFIX)
    rows = []
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    for number, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines) - 1:
                raise
    return rows



