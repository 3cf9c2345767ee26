"""``ctkd generate MODEL --task qed [--split train] [--role teacher] --out answers.jsonl``: generated targets.

Runs a model (usually the teacher, with its few-shot prompt: ``--role teacher``, the default) greedily over a
data split and writes its answers as a JSON-lines data file of serialised examples: same ``id``, ``fields`` and
``references``, ``target`` = the generated answer. ``ctkd distill`` takes the file as ``data.targets`` (SeqKD, and
the paper's unlabeled setting with ``loss.ce_weight`` for the generated answers); ``load_task("jsonl", ...)`` reads
it. Files and policies are those of :func:`ctkd.generate.generate_targets`:

- resumable: answers are appended to ``OUT.partial`` (fsync-ed per batch) and ``OUT`` is written by rename at the
  end, so a file at ``OUT`` is always complete; rerunning the same command continues from the partial file
  (``--restart`` discards it; other settings are refused);
- an empty answer is left out of ``OUT`` and counted (its id listed in ``OUT.report.json``);
- an existing ``OUT`` is kept unless ``--overwrite``.

MODEL, the flags and ``--config`` resolve as for ``ctkd eval`` (:mod:`ctkd.cli.evaluate`), with the train split by
default (and ``data.train_limit`` of a config as the default ``--limit``); without MODEL, the ``--config``'s model
of the ``--role`` runs. Errors the user can fix print one line on stderr and exit 2; Ctrl-C exits 130 and keeps
the partial file.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ctkd.cli.evaluate import (
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    add_job_arguments,
    check_partial,
    describe,
    load_job_examples,
    load_job_model,
    one_line,
    render_prompts,
    resolve_job,
)

HELP = "run a model (usually the teacher) over a data split and save its answers as training targets (SeqKD)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser, command="answer", default_split="train", default_role="teacher", model_optional=True)
    parser.add_argument("--out", required=True, help="the JSON-lines file to write (e.g. answers.jsonl)")


def run(args: argparse.Namespace) -> int:
    """Generate and write the targets, print what was written; 2 on errors the user can fix, 130 on Ctrl-C."""
    from ctkd.generate import generate_targets, partial_path

    start = time.perf_counter()
    out = Path(args.out).expanduser()
    try:
        job = resolve_job(args, default_split_key="data.train_split", default_limit_key="data.train_limit")
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
        if not args.restart:
            check_partial(partial_path(out), job)
        examples, shots = load_job_examples(job)
        print(f"ctkd generate: {describe(job, len(examples))}", file=sys.stderr)
        loaded = load_job_model(job, args)
        prompts = render_prompts(job, loaded.tokenizer, examples, shots)
        result = generate_targets(
            loaded.model, loaded.tokenizer, examples, prompts, out, batch_size=job.batch_size,
            max_new_tokens=job.max_new_tokens, stop_at_newline=job.stop_at_newline, progress=not args.no_progress,
            resume=not args.restart, overwrite=args.overwrite, settings=job.settings(),
        )
    except KeyboardInterrupt:
        print(f"ctkd generate: interrupted; the answers so far are in {partial_path(out)}: rerun the same command "
              "to continue", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, ValueError) as error:  # ConfigError, CliError, FileNotFoundError, GenerationSettingsError...
        print(f"ctkd generate: error: {one_line(error)}", file=sys.stderr)
        return EXIT_USAGE

    print(f"ctkd generate: {describe(job, result.examples)}")
    print(f"wrote {result.written} examples to {result.path} ({result.generated} generated now, "
          f"{result.resumed} resumed from a partial file)")
    if result.empty_ids:
        shown = ", ".join(result.empty_ids[:5]) + (", ..." if len(result.empty_ids) > 5 else "")
        print(f"left out {len(result.empty_ids)} empty answers ({shown}); their ids are in {result.report_path}")
    mean = "n/a" if result.mean_new_tokens is None else f"{result.mean_new_tokens:.1f}"
    print(f"answers: {mean} new tokens on average, {result.at_max_new_tokens} stopped at --max-new-tokens "
          f"{job.max_new_tokens}")
    print(f"report: {result.report_path}")
    print(f"time: {time.perf_counter() - start:.1f} s")
    return 0
