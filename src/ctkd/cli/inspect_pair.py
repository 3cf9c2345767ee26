"""``ctkd inspect STUDENT TEACHER [--task qed]``: what a pair's tokenizers make of each other and of a task.

Prints the table of :meth:`ctkd.inspect.PairReport.render`; ``--json FILE`` also writes the same facts
as JSON. Models and data that cannot be read (unknown name, missing path, unknown task) end with a
one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

HELP = "Compare a student and a teacher: vocabularies, overlap, and how each tokenizes a task's answers."

EXIT_USAGE = 2
"""Exit code of a command that could not run with the given arguments (as argparse uses)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ctkd.inspect import DEFAULT_MAX_LENGTH, DEFAULT_SPLIT

    parser.add_argument("student", help="short name (smollm2-135m-instruct), hub id, model folder or .gguf file")
    parser.add_argument("teacher", help="short name (gemma-3-270m), hub id, model folder or .gguf file")
    parser.add_argument("--task", help="measure the answers of this task (qed, dialogsum, fairytaleqa, jsonl)")
    parser.add_argument(
        "--data-dir", help="the task's folder (a .jsonl file for jsonl); default: the QED copy shipped with ctkd"
    )
    parser.add_argument("--split", default=DEFAULT_SPLIT, help=f"split to measure (default {DEFAULT_SPLIT})")
    parser.add_argument("--limit", type=int, help="measure only the first N examples of the split")
    parser.add_argument(
        "--student-max-length",
        type=int,
        default=DEFAULT_MAX_LENGTH["student"],
        help="max tokens of the student's prompt + answer, for the drop/truncation counts (default %(default)s)",
    )
    parser.add_argument(
        "--teacher-max-length",
        type=int,
        default=DEFAULT_MAX_LENGTH["teacher"],
        help="max tokens of the teacher's prompt + answer (default %(default)s)",
    )
    parser.add_argument("--cache-dir", help="root of ctkd's caches (default $CTKD_CACHE or ~/.cache/ctkd)")
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def run(args: argparse.Namespace) -> int:
    """Inspect the pair, print the table, write the JSON; 2 when a model, path or task is wrong."""
    start = time.perf_counter()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ctkd inspect: %(message)s"))
    log = logging.getLogger("ctkd.inspect")
    log.addHandler(handler)
    previous_level = log.level
    log.setLevel(logging.INFO)
    try:
        from ctkd.inspect import inspect_pair

        report = inspect_pair(
            args.student,
            args.teacher,
            task=args.task,
            data_dir=args.data_dir,
            split=args.split,
            limit=args.limit,
            cache_dir=args.cache_dir,
            max_length={"student": args.student_max_length, "teacher": args.teacher_max_length},
        )
    except (OSError, ValueError) as error:  # FileNotFoundError, HubUnavailableError, UnknownModelError, InspectError...
        print(f"ctkd inspect: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        log.removeHandler(handler)
        log.setLevel(previous_level)

    sys.stdout.write(report.render())
    if args.json:
        path = Path(args.json)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(report.to_json(), encoding="utf-8")
        except OSError as error:
            print(f"ctkd inspect: error: cannot write {path}: {_one_line(error)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"ctkd inspect: wrote {path}", file=sys.stderr)
    print(f"ctkd inspect: done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0
