"""A whole distillation run from a :class:`ctkd.config.DistillConfig`, top to bottom.

1. Output folder: refuse to overwrite a finished run (unless ``output.overwrite``), continue an unfinished one
   only with ``resume`` (one that stopped before its first checkpoint has nothing to continue: a new run starts
   again there); write the resolved ``config.yaml``. The data is read before, so a wrong path writes nothing.
2. Load student and teacher (or a teacher cache), the task's splits, the prompts; tokenize once.
3. Evaluate the student before training (generation, the paper's protocol).
4. Train with :class:`ctkd.train.trainer.DistillTrainer` (checkpoints under ``checkpoints/``).
5. Save the student (safetensors + tokenizer) to ``student/`` atomically, evaluate it again, write the training
   log, the plots, the model card, and last ``summary.json``: a folder without ``summary.json`` is not a finished
   run, whatever else it holds.

Folder layout::

    config.yaml            resolved config (written first)
    checkpoints/           Trainer checkpoints (resume from here)
    student/               the distilled student: safetensors weights, config, tokenizer
    eval/before/, eval/after/   predictions.jsonl + report.json of each evaluation
    eval/scores.png        before/after scores;  training_curves.png: loss components per step
    train_log.jsonl        one row per logged step (loss, ce, kd, had, sl, sd, lr, grad_norm)
    README.md              model card;  summary.json: headline numbers (written last)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ctkd.config import ConfigError, DistillConfig
from ctkd.data import DistillCollator, Example, PromptBuilder, SideConfig, builtin_data_dir, default_prompt, load_task

logger = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
STUDENT_DIR = "student"
CHECKPOINT_DIR = "checkpoints"


@dataclass
class RunSummary:
    """Headline facts of a finished run (also written as ``summary.json``)."""

    output_dir: str
    student: str
    teacher: str
    method: str
    task: str
    metric: str | None = None
    before: float | None = None
    after: float | None = None
    eval_examples: int = 0
    train_examples: int = 0
    dropped_examples: int = 0
    steps: int = 0
    first_loss: float | None = None
    last_loss: float | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    complete: bool = True

    def table(self) -> str:
        """A readable summary table (Markdown)."""
        total = sum(self.seconds.values())
        lines = [
            f"ctkd distill: {self.teacher} -> {self.student}, {self.method}, task {self.task}",
            "",
            "| stage | " + (self.metric or "metric") + " (%) | examples |",
            "|---|---|---|",
        ]
        for stage, value in (("before", self.before), ("after", self.after)):
            if value is not None:
                lines.append(f"| {stage} | {value:.2f} | {self.eval_examples} |")
        if self.before is not None and self.after is not None:
            lines.append(f"| change | {self.after - self.before:+.2f} | |")
        lines += [
            "",
            f"training: {self.train_examples} examples ({self.dropped_examples} dropped), {self.steps} steps, "
            f"loss {_fmt(self.first_loss)} -> {_fmt(self.last_loss)}",
            "time: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items()) + f" (total {total:.0f} s)",
            f"output: {self.output_dir}",
        ]
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# ------------------------------------------------------------------------------------------------------------
# Output folder
# ------------------------------------------------------------------------------------------------------------
def last_checkpoint(out: Path) -> Path | None:
    """The newest ``checkpoints/checkpoint-N`` folder, or None."""
    folder = out / CHECKPOINT_DIR
    if not folder.is_dir():
        return None
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max(found, key=lambda p: int(p.name.split("-")[-1])) if found else None


def prepare_output_dir(config: DistillConfig, resume: bool) -> Path:
    """Create or check the output folder (see the module docstring for the rules)."""
    out = Path(config.output.dir)
    finished = (out / SUMMARY_FILE).exists()
    started = (out / "config.yaml").exists()
    clear = config.output.overwrite
    if started and not resume and not finished and not any((out / CHECKPOINT_DIR).glob("checkpoint-*")):
        # a run that stopped before its first checkpoint (a wrong model name, an interrupted evaluation)
        # holds nothing --resume could continue from: start again in the same folder
        logger.info("%s holds a run that stopped before its first checkpoint; starting it again", out)
        started, clear = False, True
    if finished and not config.output.overwrite:
        raise ConfigError(f"{out} already holds a finished run ({SUMMARY_FILE}); choose another output.dir or set "
                          "output.overwrite=true to replace it")
    if resume:
        if not started:
            raise ConfigError(f"--resume: {out} holds no run to resume (no config.yaml); start it without --resume")
        mine = dataclasses.replace(config, output=dataclasses.replace(config.output, overwrite=False))
        from ctkd.config import load_config

        theirs = load_config(out / "config.yaml")
        theirs.output.overwrite = False
        if theirs.to_dict() != mine.to_dict():
            diff = _diff(theirs.to_dict(), mine.to_dict())
            raise ConfigError(f"--resume: the config differs from the one the run started with ({diff}); "
                              f"resume with the same settings (saved in {out / 'config.yaml'})")
    elif started and not config.output.overwrite:
        raise ConfigError(f"{out} holds an unfinished run; pass --resume to continue it, or set "
                          "output.overwrite=true to start again")
    if clear and not resume:
        for name in (SUMMARY_FILE, STUDENT_DIR, CHECKPOINT_DIR, "eval", "train_log.jsonl", "README.md"):
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    config.save(out / "config.yaml")
    return out


def _diff(a: dict, b: dict, prefix: str = "") -> str:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            inner = _diff(va, vb, f"{prefix}{key}.")
            if inner:
                out.append(inner)
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} -> {vb!r}")
    return "; ".join(out)


# ------------------------------------------------------------------------------------------------------------
# Data and prompts
# ------------------------------------------------------------------------------------------------------------
def data_dir(config: DistillConfig) -> str | Path:
    if config.data.data_dir:
        return config.data.data_dir
    try:
        return builtin_data_dir(config.data.task)
    except ValueError:
        raise ConfigError(f"data.data_dir is empty and ctkd ships no copy of task {config.data.task!r}; set data.data_dir "
                          "to the task's folder (laid out like shared/data/<task>/)") from None


def load_examples(config: DistillConfig) -> tuple[list[Example], list[Example]]:
    """Training and evaluation examples; generated targets replace (or join) the ground truth."""
    train = load_train_examples(config)
    return train, load_task(config.data.task, config.data.eval_split, data_dir(config), limit=config.eval.limit)


def load_train_examples(config: DistillConfig) -> list[Example]:
    """The training examples (also the few-shot pool); generated targets replace (or join) the ground truth."""
    train = load_task(config.data.task, config.data.train_split, data_dir(config), limit=config.data.train_limit)
    if config.data.targets:
        train = with_generated_targets(train, config.data.targets, keep_ground_truth=config.data.keep_ground_truth)
    return train


def with_generated_targets(examples: list[Example], path: str, *, keep_ground_truth: bool) -> list[Example]:
    """Replace each example's target by the generated answer with the same id (``ctkd generate`` output)."""
    generated = {ex.id: ex.target for ex in load_task("jsonl", "train", path)}
    out: list[Example] = []
    missing = 0
    for ex in examples:
        if ex.id not in generated:
            missing += 1
            if keep_ground_truth:
                out.append(ex)
            continue
        if keep_ground_truth:
            out.append(ex)
        out.append(dataclasses.replace(ex, id=f"{ex.id}#generated" if keep_ground_truth else ex.id,
                                       target=generated[ex.id]))
    if missing == len(examples):
        raise ConfigError(f"data.targets {path!r} has no answer for any training example id (e.g. {examples[0].id!r}); "
                          "was it generated from the same task and split?")
    if missing:
        logger.warning("data.targets: %d of %d training examples have no generated answer and %s", missing,
                       len(examples), "keep only their ground truth" if keep_ground_truth else "are left out")
    return out


def prompt_config(config: DistillConfig, role: str):
    override = getattr(config.data, f"{role}_prompt")
    changes = {k: v for k, v in dataclasses.asdict(override).items() if v is not None}
    return dataclasses.replace(default_prompt(config.data.task, role), **changes)


def prompt_builder(config: DistillConfig, role: str, tokenizer, shot_pool: list[Example]) -> PromptBuilder:
    return PromptBuilder(prompt_config(config, role), tokenizer, shot_pool)


def build_collator(config: DistillConfig, student_tok, teacher_tok, shot_pool: list[Example],
                   extras: tuple[str, ...] = ()) -> DistillCollator:
    kwargs: dict[str, Any] = {}
    if extras:
        kwargs["extras"] = extras
    return DistillCollator(
        student_tok,
        teacher_tok,
        prompt_builder(config, "student", student_tok, shot_pool),
        prompt_builder(config, "teacher", teacher_tok, shot_pool),
        SideConfig(max_length=config.data.student_max_length, append_eos=config.data.student_append_eos),
        SideConfig(max_length=config.data.teacher_max_length, append_eos=config.data.teacher_append_eos),
        alignment=config.data.alignment,
        **kwargs,
    )


# ------------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------------
def kd_weight(config: DistillConfig, loss) -> float:
    if config.loss.kd_weight is not None:
        return config.loss.kd_weight
    return float(getattr(loss, "default_kd_weight", 1.0))


def mixed_precision(bf16: bool | None) -> bool:
    """``optim.bf16``: None means where bf16 is native on the training device."""
    if bf16 is not None:
        return bf16
    from ctkd.models import native_bf16

    return native_bf16("cuda" if torch.cuda.is_available() else "cpu")


def training_arguments(config: DistillConfig, out: Path, progress: bool):
    from transformers import TrainingArguments

    optim = config.optim
    scheduler = "cosine" if optim.scheduler == "one_cycle" else optim.scheduler
    return TrainingArguments(
        output_dir=str(out / CHECKPOINT_DIR),
        per_device_train_batch_size=optim.batch_size,
        gradient_accumulation_steps=optim.grad_accum,
        optim=optim.optimizer,
        learning_rate=optim.learning_rate,
        weight_decay=optim.weight_decay,
        num_train_epochs=optim.epochs,
        max_steps=optim.max_steps,
        lr_scheduler_type=scheduler,
        warmup_steps=optim.warmup_ratio,
        max_grad_norm=optim.max_grad_norm,
        seed=optim.seed,
        bf16=mixed_precision(optim.bf16),
        use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=optim.gradient_checkpointing,
        logging_steps=config.output.logging_steps,
        logging_first_step=True,
        save_strategy="steps" if config.output.save_steps > 0 else "epoch",
        save_steps=config.output.save_steps or 500,
        save_total_limit=config.output.save_total_limit,
        report_to=config.output.report_to,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=not progress,
    )


def evaluate_student(config: DistillConfig, loaded, examples: list[Example], builder: PromptBuilder, out_dir: Path,
                     *, stage: str, progress: bool):
    from ctkd.eval import run_evaluation

    return run_evaluation(
        loaded.model,
        loaded.tokenizer,
        [builder.render(ex) for ex in examples],
        [ex.references for ex in examples],
        [ex.id for ex in examples],
        metric=config.data.task,
        out_dir=out_dir,
        batch_size=config.eval.batch_size,
        max_new_tokens=config.eval.max_new_tokens,
        stop_at_newline=config.eval.stop_at_newline,
        progress=progress,
        settings={"stage": stage, "student": config.student.name, "method": config.loss.method},
    )


def run_distillation(config: DistillConfig, *, resume: bool = False, progress: bool = True) -> RunSummary:
    """Run the whole distillation described by ``config`` and return its summary (see the module docstring)."""
    from accelerate import PartialState

    from ctkd.losses import build_loss_for_pair
    from ctkd.models import load_model
    from ctkd.teacher import LiveTeacher
    from ctkd.train.report import write_reports
    from ctkd.train.step import DistillStep
    from ctkd.train.trainer import DistillTrainer, trainer_collate_fn

    # TrainingArguments first: it sets up the process group under torchrun / `accelerate launch --multi_gpu`
    # (gloo on CPU), so that PartialState below sees every process.
    args = training_arguments(config, Path(config.output.dir), progress)
    state = PartialState()
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    # the data first: a wrong data_dir fails in a second, before any model loads or anything is written
    train_examples, eval_examples = load_examples(config)
    out = prepare_output_dir(config, resume) if state.is_main_process else Path(config.output.dir)
    state.wait_for_everyone()

    student = load_model(config.student.name, role="student", dtype=config.student.dtype,
                         cache_dir=config.student.cache_dir, trust_remote_code=config.student.trust_remote_code,
                         revision=config.student.revision)
    teacher_signal = None
    teacher_tok = None
    if config.teacher.cache:
        from ctkd.teacher.cache import CachedTeacher  # written by `ctkd cache-teacher`

        teacher_signal = CachedTeacher.open(config.teacher.cache, config=config)
        teacher_tok = teacher_signal.tokenizer
    elif config.teacher.name:
        teacher = load_model(config.teacher.name, role="teacher", dtype=config.teacher.dtype,
                             cache_dir=config.teacher.cache_dir, trust_remote_code=config.teacher.trust_remote_code,
                             revision=config.teacher.revision)
        teacher_tok = teacher.tokenizer
    if teacher_tok is None:
        teacher_tok = student.tokenizer  # SFT without any teacher: the teacher side mirrors the student
    live_teacher = teacher.model if config.teacher.name and not config.teacher.cache else None
    # sizes a method reads from the models (DSKD's projectors) come from the loaded configs unless params give them
    loss = build_loss_for_pair(config.loss.method, config.loss.params, teacher_tok, student.tokenizer,
                               cache_dir=config.student.cache_dir, student_model=student.model,
                               teacher_model=live_teacher)
    step = DistillStep(loss, ce_weight=config.loss.ce_weight, kd_weight=kd_weight(config, loss),
                       student_vocab_size=student.vocab_size)
    if teacher_signal is None and step.needs_teacher and not config.teacher.cache:
        teacher_signal = LiveTeacher(teacher.model, teacher.vocab_size, chunk_size=config.teacher.chunk_size)
    timings["load models"] = time.perf_counter() - tick

    tick = time.perf_counter()
    extras = tuple(sorted(n for n in loss.needs if n.startswith("mined_")))
    collator = build_collator(config, student.tokenizer, teacher_tok, train_examples, extras)
    prepared = collator.prepare(train_examples, progress=progress)
    if config.teacher.cache and step.needs_teacher:  # fail now, not at the first batch the cache cannot serve
        teacher_signal.check(loss=loss, features=prepared.features)
    timings["tokenize"] = time.perf_counter() - tick

    eval_builder = prompt_builder(config, "student", student.tokenizer, train_examples)
    before = after = None
    if config.eval.before and state.is_main_process:
        tick = time.perf_counter()
        before = evaluate_student(config, student, eval_examples, eval_builder, out / "eval" / "before",
                                  stage="before", progress=progress)
        timings["eval before"] = time.perf_counter() - tick
    state.wait_for_everyone()

    tick = time.perf_counter()
    student.model.train()
    trainer = DistillTrainer(
        model=student.model,
        args=args,
        train_dataset=prepared.features,
        data_collator=trainer_collate_fn(collator),
        processing_class=student.tokenizer,
        step=step,
        teacher=teacher_signal,
    )
    checkpoint = last_checkpoint(out) if resume else None
    if resume and checkpoint is None:
        logger.warning("--resume: no checkpoint in %s yet; training starts from the beginning", out / CHECKPOINT_DIR)
    if checkpoint is not None and trainer.kd_module is not None:
        from ctkd.train.trainer import load_kd_module

        if not load_kd_module(trainer.kd_module, checkpoint):
            raise ConfigError(f"--resume: {checkpoint} has no saved parameters for the loss {config.loss.method!r}; "
                              "it was written by another method or an older ctkd")
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    timings["train"] = time.perf_counter() - tick

    if state.is_main_process:
        final = out / STUDENT_DIR
        partial = out / (STUDENT_DIR + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        trainer.save_model(str(partial))
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
    state.wait_for_everyone()

    if config.eval.after and state.is_main_process:
        tick = time.perf_counter()
        student.model.eval()
        after = evaluate_student(config, student, eval_examples, eval_builder, out / "eval" / "after",
                                 stage="after", progress=progress)
        timings["eval after"] = time.perf_counter() - tick

    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    metric = (before or after).metric if (before or after) else None
    summary = RunSummary(
        output_dir=str(out), student=config.student.name, teacher=config.teacher.name or "(none)",
        method=config.loss.method, task=config.data.task, metric=metric,
        before=before.score if before else None, after=after.score if after else None,
        eval_examples=len(eval_examples), train_examples=prepared.report.num_kept,
        dropped_examples=prepared.report.num_examples - prepared.report.num_kept,
        steps=trainer.state.global_step, first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None, seconds={k: round(v, 1) for k, v in timings.items()},
    )
    if state.is_main_process:
        write_reports(out, config, summary, trainer.state.log_history, {"before": before, "after": after},
                      loss_config=loss.config(), kd_weight=step.kd_weight)
        tmp = out / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(summary), indent=2))
        tmp.replace(out / SUMMARY_FILE)  # last: its presence marks a finished run
    state.wait_for_everyone()
    return summary
