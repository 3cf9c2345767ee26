"""``ctkd eval MODEL [--task qed] [--split validation] [--limit N] [--role student|teacher] [--out DIR] ...``.

Evaluates a model with the paper's protocol (greedy decoding with left padding, at most 150 new tokens, answer cut
at the first newline; token F1 for QED, ROUGE-Lsum for DialogSum and FairytaleQA, in percent) and writes
``report.json`` + ``predictions.jsonl`` to ``--out`` through :func:`ctkd.eval.run_evaluation`, which resumes an
interrupted evaluation from its partial file.

MODEL is a short name, hub id, model folder or ``.gguf`` file, or the folder of a finished ``ctkd distill`` run:
then its ``student/`` is evaluated with the task, data, prompt and evaluation settings of its ``config.yaml``
(``--config`` names another config file; the flags override either). ``--role student`` (default) gives the model
the student's zero-shot plain prompt, ``--role teacher`` the teacher's few-shot prompt, with shots drawn from the
train split.

Settings, each from the first place that has it: the flag; the config (``--config``, or a run folder's); the
defaults of :class:`ctkd.config.DistillConfig`. A finished evaluation in ``--out`` with the same settings is
reported again without generating; other settings need ``--overwrite``. ``--compare DIR ...`` adds other report
folders (or run folders, meaning their ``eval/after``) to the table and draws them side by side with
:func:`ctkd.eval.plot_scores`. Errors the user can fix (a missing model or data folder, an unknown task, a report
from other settings) print one line on stderr and exit 2.

The helpers here (arguments, resolution of MODEL and of the settings, loading data, model and prompts) are
shared with ``ctkd generate`` (:mod:`ctkd.cli.generate`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HELP = ("evaluate a model or a finished distillation run on a task (greedy answers; token F1 for QED, "
        "ROUGE-Lsum for DialogSum/FairytaleQA)")

EXIT_USAGE = 2
"""Exit code of a command that could not run with the given arguments (as argparse uses)."""
EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C (128 + SIGINT), as shells report it."""

ROLES = ("student", "teacher")
RUN_CONFIG = "config.yaml"
"""A ``ctkd distill`` run folder holds its resolved config under this name (and a model folder never does)."""
RUN_STUDENT = "student"
DEFAULT_EVAL_ROOT = "evals"
"""Default ``--out`` root for models that are not run folders: ``evals/<model>/<task>-<split>-<role>``."""
COMPARE_PLOT = "compare.png"
WEIGHT_GLOBS = ("*.safetensors", "*.gguf")
"""Files whose size and modification time identify a local model's weights (see :func:`weights_fingerprint`)."""


class CliError(ValueError):
    """A problem with the command's arguments, told to the user in one line."""


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def one_line(error: BaseException) -> str:
    """An exception's message on one line (KeyError's quotes removed)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split()) or type(error).__name__


# ------------------------------------------------------------------------------------------------------------
# Arguments shared by eval and generate
# ------------------------------------------------------------------------------------------------------------
def add_job_arguments(parser: argparse.ArgumentParser, *, command: str, default_split: str, default_role: str,
                      model_optional: bool = False) -> None:
    """MODEL and the flags that say what to run it on and how to decode (``eval`` and ``generate``)."""
    parser.add_argument(
        "model", nargs="?" if model_optional else None, metavar="MODEL",
        help="short name (smollm2-135m-instruct, gemma-3-270m), hub id, model folder, .gguf file, or the folder of a "
             "finished `ctkd distill` run (its student/ and config.yaml)"
             + (" (default: the --config's model of the --role)" if model_optional else ""))
    parser.add_argument("--task", help="qed, dialogsum, fairytaleqa or jsonl (default: the config's, else qed)")
    parser.add_argument("--data-dir", help="the task's folder, or a .jsonl file for jsonl (default: the config's; "
                                           "for qed the copy shipped with ctkd)")
    parser.add_argument("--split", choices=("train", "validation"),
                        help=f"split to {command} (default: the config's, else {default_split})")
    parser.add_argument("--limit", type=positive_int, help="only the first N examples of the split")
    parser.add_argument("--role", choices=ROLES, default=default_role,
                        help="prompt: student = zero-shot plain, teacher = few-shot (shots from the train split), "
                             "with its chat template (default %(default)s)")
    parser.add_argument("--config", help="a `ctkd distill` YAML config to take task, data, prompt and decoding "
                                         "settings from (default: a run folder's own config.yaml)")
    parser.add_argument("--batch-size", type=positive_int, help="prompts per generate call (default: config, else 8)")
    parser.add_argument("--max-new-tokens", type=positive_int,
                        help="most tokens generated per answer (default: config, else 150)")
    parser.add_argument("--no-stop-at-newline", dest="stop_at_newline", action="store_false", default=None,
                        help="do not stop answers at their first newline (the paper's protocol does)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "auto"),
                        help="weight dtype (auto: bfloat16 where native; default %(default)s)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--cache-dir", help="root of ctkd's caches (default $CTKD_CACHE or ~/.cache/ctkd)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo a finished output (eval: needed only when its settings differ; generate: "
                             "replaces OUT)")
    parser.add_argument("--restart", action="store_true",
                        help="discard the partial output of an interrupted run instead of resuming it")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# ------------------------------------------------------------------------------------------------------------
# What to run: MODEL, config and flags resolved into one Job
# ------------------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """A model, the examples to run it on and how, resolved from the flags, a config and the defaults.

    Attributes:
        model: what :func:`ctkd.models.load_model` loads (a run folder's ``student/`` for a run folder).
        label: a short name for tables and default paths.
        run_dir: the ``ctkd distill`` run folder MODEL named, or None.
        config_path: the config the settings came from, or None (defaults).
        config: that config (``DistillConfig()`` without one).
        task, data_dir, split, limit, metric: the data and its metric.
        role: ``student`` or ``teacher`` (selects the prompt).
        prompt: the resolved :class:`ctkd.data.PromptConfig`.
        shot_split, shot_limit: where the few-shot examples come from (used when ``prompt.num_shots > 0``).
        batch_size, max_new_tokens, stop_at_newline: decoding.
    """

    model: str
    label: str
    run_dir: Path | None
    config_path: Path | None
    config: Any
    task: str
    data_dir: str
    split: str
    limit: int | None
    metric: str
    role: str
    prompt: Any
    shot_split: str
    shot_limit: int | None
    batch_size: int
    max_new_tokens: int
    stop_at_newline: bool

    def settings(self) -> dict[str, Any]:
        """JSON-ready facts that decide the answers; a partial or finished output is reused only when they match."""
        return {
            "model": self.model,
            "weights": weights_fingerprint(self.model),
            "role": self.role,
            "task": self.task,
            "split": self.split,
            "prompt": dataclasses.asdict(self.prompt),
        }


def is_run_folder(path: Path) -> bool:
    """A ``ctkd distill`` output folder: it holds ``config.yaml`` and is not itself a model folder."""
    return path.is_dir() and (path / RUN_CONFIG).is_file() and not (path / "config.json").is_file()


def weights_fingerprint(model: str) -> str | None:
    """A short hash of the sizes and modification times of a local model's weight files; None for names.

    Recorded with every output so that a partial or finished output is not reused after the weights at the same
    path changed (retrained, replaced). Short names and hub ids give None: their files are versioned elsewhere.
    """
    path = Path(model).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for pattern in WEIGHT_GLOBS for p in path.glob(pattern))
    else:
        files = []
    if not files:
        return None
    facts = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:16]


def model_label(model: str, run_dir: Path | None) -> str:
    """A file-name-safe short name: the run or folder name, a GGUF's stem, or a name with ``/`` as ``--``."""
    if run_dir is not None:
        return run_dir.resolve().name
    path = Path(model).expanduser()
    if path.exists():
        return path.resolve().stem if path.is_file() else path.resolve().name
    return model.replace("/", "--")


def resolve_job(args: argparse.Namespace, *, default_split_key: str, default_limit_key: str) -> Job:
    """Resolve MODEL, the config and the flags into a :class:`Job` (see the module docstring for the order).

    ``default_split_key`` / ``default_limit_key`` name the config fields that give the split and the limit when the
    flags do not (``data.eval_split`` / ``eval.limit`` for eval, ``data.train_split`` / ``data.train_limit`` for
    generate).

    Raises:
        CliError, ConfigError, FileNotFoundError: with a message that names the value and the fix.
    """
    from ctkd.config import DistillConfig, load_config
    from ctkd.data import TASKS, builtin_data_dir, default_prompt
    from ctkd.eval import resolve_metric
    from ctkd.models import resolve_model
    from ctkd.train.run import prompt_config

    model = args.model
    run_dir = None
    config_path = Path(args.config) if args.config else None
    if model is not None and is_run_folder(Path(model).expanduser()):
        run_dir = Path(model).expanduser()
        student = run_dir / RUN_STUDENT
        if not student.is_dir():
            raise CliError(f"{run_dir} is a ctkd distill run folder without {RUN_STUDENT}/: the run has not finished "
                           "training; wait for it, or resume it with `ctkd distill CONFIG --resume`")
        model = str(student.resolve())
        config_path = config_path or run_dir / RUN_CONFIG
    config = load_config(config_path) if config_path is not None else DistillConfig()
    if model is None:
        model = getattr(config, args.role).name
        if not model or config_path is None:
            raise CliError("no MODEL given" + ("" if config_path is None else f" and {config_path} names no "
                                               f"{args.role}.name") + "; pass a model name, folder or .gguf file")
    if run_dir is None and Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    resolve_model(model)  # a missing path or an unknown name fails here, before any data is read

    task = args.task or config.data.task
    if task not in TASKS:
        raise CliError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    same_task = task == config.data.task
    if args.data_dir:
        data_dir = args.data_dir
    elif same_task and config.data.data_dir:
        data_dir = config.data.data_dir
    else:
        try:
            data_dir = str(builtin_data_dir(task))
        except ValueError:
            raise CliError(f"task {task!r} needs --data-dir (the task's folder, laid out like shared/data/{task}/; "
                           "ctkd ships a copy of qed only)") from None

    section, key = default_split_key.split(".")
    split = args.split or getattr(getattr(config, section), key)
    limit = args.limit
    if limit is None and same_task:
        section, key = default_limit_key.split(".")
        limit = getattr(getattr(config, section), key)
    metric = getattr(args, "metric", None) or task
    try:
        metric = resolve_metric(metric)
    except KeyError as err:
        raise CliError(one_line(err)) from None
    prompt = prompt_config(config, args.role) if same_task else default_prompt(task, args.role)
    return Job(
        model=model,
        label=model_label(model, run_dir),
        run_dir=run_dir,
        config_path=config_path,
        config=config,
        task=task,
        data_dir=data_dir,
        split=split,
        limit=limit,
        metric=metric,
        role=args.role,
        prompt=prompt,
        shot_split=config.data.train_split,
        shot_limit=config.data.train_limit if same_task else None,
        batch_size=args.batch_size or config.eval.batch_size,
        max_new_tokens=args.max_new_tokens or config.eval.max_new_tokens,
        stop_at_newline=config.eval.stop_at_newline if args.stop_at_newline is None else args.stop_at_newline,
    )


def load_job_examples(job: Job) -> tuple[list, list]:
    """The examples of the job's split and the shot pool of its prompt (empty for zero-shot prompts)."""
    from ctkd.data import load_task

    examples = load_task(job.task, job.split, job.data_dir, limit=job.limit)
    shots = load_task(job.task, job.shot_split, job.data_dir, limit=job.shot_limit) if job.prompt.num_shots else []
    return examples, shots


def load_job_model(job: Job, args: argparse.Namespace):
    """The job's model in inference mode (:class:`ctkd.models.LoadedModel`), on ``--device``."""
    import torch

    from ctkd.models import load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return load_model(job.model, role="teacher", dtype=args.dtype, cache_dir=args.cache_dir, device=device)


def render_prompts(job: Job, tokenizer, examples: list, shots: list) -> list[str]:
    """Each example's prompt for the job's role, rendered for ``tokenizer``."""
    from ctkd.data import PromptBuilder

    builder = PromptBuilder(job.prompt, tokenizer, shots)
    return [builder.render(ex) for ex in examples]


def describe(job: Job, count: int) -> str:
    shots = f"{job.prompt.num_shots}-shot" if job.prompt.num_shots else "zero-shot"
    source = f", settings from {job.config_path}" if job.config_path else ""
    return f"{job.label} on {job.task} {job.split} ({count} examples), {job.role} prompt ({shots}){source}"


# ------------------------------------------------------------------------------------------------------------
# eval
# ------------------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_job_arguments(parser, command="evaluate", default_split="validation", default_role="student")
    parser.add_argument("--metric", help="token_f1, rouge_lsum or exact_match (default: the task's)")
    parser.add_argument("--out", help="folder for report.json and predictions.jsonl (default: RUN/eval/<task>-<split>-"
                                      "<role> for a run folder, else evals/<model>/<task>-<split>-<role>)")
    parser.add_argument("--compare", nargs="+", metavar="REPORT_DIR", default=[],
                        help="other evaluation folders (or run folders: their eval/after) to tabulate and plot")
    parser.add_argument("--plot", help=f"draw the scores (with --compare's) to this PNG (default with --compare: "
                                       f"OUT/{COMPARE_PLOT})")


def default_out(job: Job) -> Path:
    name = f"{job.task}-{job.split}-{job.role}"
    if job.run_dir is not None:
        return job.run_dir / "eval" / name
    return Path(DEFAULT_EVAL_ROOT) / job.label / name


def report_dir(path: str | Path) -> Path:
    """An evaluation folder (holds ``report.json``); a run folder means its ``eval/after``."""
    from ctkd.eval.report import REPORT_FILE

    path = Path(path).expanduser()
    if (path / REPORT_FILE).is_file():
        return path
    if is_run_folder(path) and (path / "eval" / "after" / REPORT_FILE).is_file():
        return path / "eval" / "after"
    raise CliError(f"--compare: {path} holds no finished evaluation ({REPORT_FILE}, or eval/after/{REPORT_FILE} "
                   "of a run folder)")


def report_label(path: Path) -> str:
    """``run/after`` for a run's ``eval/after``, else the folder name."""
    path = path.resolve()
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == "eval" else path.name


def unique_labels(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def _decoding_settings(job: Job) -> dict[str, Any]:
    """The part of :func:`ctkd.eval.run_evaluation`'s saved settings known before the model is loaded."""
    return {"run": job.settings(), "max_new_tokens": job.max_new_tokens, "stop_at_newline": job.stop_at_newline}


def reusable_report(out: Path, job: Job, ids: list[str]):
    """The finished evaluation in ``out`` when it has exactly this job's settings and examples, else None.

    Raises:
        CliError: ``out`` holds a finished evaluation of other settings (the message names them).
    """
    from ctkd.eval import load_report
    from ctkd.eval.report import REPORT_FILE
    from ctkd.generate import setting_differences

    path = out / REPORT_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    differences = setting_differences({**saved.get("settings", {}), "metric": saved.get("metric")},
                                      {**_decoding_settings(job), "metric": job.metric})
    report = load_report(out)
    if report.ids != ids:
        differences.append(f"examples: saved {report.n}, now {len(ids)} (or other ids)")
    if differences:
        raise CliError(f"{out} already holds a finished evaluation with other settings ({'; '.join(differences)}); "
                       "pass --overwrite to redo it, or choose another --out")
    return report


def check_partial(path: Path, job: Job) -> None:
    """Refuse early, before loading the model, to resume a partial output (``ctkd eval``'s
    ``predictions.jsonl.partial``, ``ctkd generate``'s ``OUT.partial``) written with other settings."""
    from ctkd.generate import setting_differences

    if not path.is_file():
        return
    with open(path, encoding="utf-8") as handle:
        first = handle.readline()
    try:
        saved = json.loads(first)["header"]["settings"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return  # run_evaluation names the broken file
    differences = setting_differences(saved, _decoding_settings(job))
    if differences:
        raise CliError(f"{path} holds the output of an interrupted run with other settings "
                       f"({'; '.join(differences)}); rerun with those settings to resume it, or pass --restart to "
                       "discard it")


def _stats(out: Path) -> dict:
    from ctkd.eval.report import REPORT_FILE

    return json.loads((out / REPORT_FILE).read_text(encoding="utf-8"))


def table(rows: list[tuple[str, Path]]) -> str:
    """Markdown table of evaluation folders: label, metric, score, n, answer lengths."""
    lines = ["| model | metric | score (%) | n | mean new tokens | empty answers |", "|---|---|---|---|---|---|"]
    for label, folder in rows:
        stats = _stats(folder)
        answers = stats.get("answers", {})
        mean = answers.get("mean_new_tokens")
        lines.append(f"| {label} | {stats['metric']} | {stats['score']:.2f} | {stats['n']} | "
                     f"{'n/a' if mean is None else f'{mean:.1f}'} | {answers.get('empty', 'n/a')} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Evaluate, print the table, draw the comparison; 2 on errors the user can fix, 130 on Ctrl-C."""
    start = time.perf_counter()
    out: Path | None = None
    try:
        from ctkd.eval import load_report, plot_scores, run_evaluation
        from ctkd.eval.evaluate import PARTIAL_SUFFIX
        from ctkd.eval.report import PREDICTIONS_FILE

        job = resolve_job(args, default_split_key="data.eval_split", default_limit_key="eval.limit")
        compare = [report_dir(path) for path in args.compare]
        examples, shots = load_job_examples(job)
        out = Path(args.out).expanduser() if args.out else default_out(job)
        ids = [str(ex.id) for ex in examples]
        report = None if args.overwrite else reusable_report(out, job, ids)
        if report is not None:
            print(f"ctkd eval: {out} already holds this evaluation; reporting it (--overwrite redoes it)",
                  file=sys.stderr)
        else:
            if not args.restart:
                check_partial(out / (PREDICTIONS_FILE + PARTIAL_SUFFIX), job)
            print(f"ctkd eval: {describe(job, len(examples))}", file=sys.stderr)
            loaded = load_job_model(job, args)
            prompts = render_prompts(job, loaded.tokenizer, examples, shots)
            try:
                report = run_evaluation(
                    loaded.model, loaded.tokenizer, prompts, [ex.references for ex in examples], ids,
                    metric=job.metric, out_dir=out, batch_size=job.batch_size, max_new_tokens=job.max_new_tokens,
                    stop_at_newline=job.stop_at_newline, progress=not args.no_progress, resume=not args.restart,
                    overwrite=args.overwrite, settings=job.settings(),
                )
            except ValueError as error:
                if ".partial" not in str(error):
                    raise
                raise CliError(f"{one_line(error)} (with ctkd eval: --restart discards the partial file)") from None
        label = job.label + ("" if job.role == "student" else f" ({job.role} prompt)")
        rows = list(zip(unique_labels([label] + [report_label(p) for p in compare]), [out] + compare))
        plot = None
        if compare or args.plot:
            plot = Path(args.plot).expanduser() if args.plot else out / COMPARE_PLOT
            reports = {name: (report if folder == out else load_report(folder)) for name, folder in rows}
            metrics = sorted({r.metric for r in reports.values()})
            if len(metrics) > 1:
                print(f"ctkd eval: warning: the compared reports use different metrics ({', '.join(metrics)})",
                      file=sys.stderr)
            plot_scores(reports, plot)
    except KeyboardInterrupt:
        where = f" in {out}" if out is not None else ""
        print(f"ctkd eval: interrupted; the answers so far are kept{where}: rerun the same command to continue",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, ValueError) as error:  # ConfigError, CliError, FileNotFoundError, EmptyDatasetError...
        print(f"ctkd eval: error: {one_line(error)}", file=sys.stderr)
        return EXIT_USAGE

    print(f"ctkd eval: {describe(job, report.n)}")
    print()
    print(table(rows))
    print()
    print(f"predictions: {out / 'predictions.jsonl'}")
    print(f"report: {out / 'report.json'}")
    if plot is not None:
        print(f"plot: {plot}")
    print(f"time: {time.perf_counter() - start:.1f} s")
    return 0
