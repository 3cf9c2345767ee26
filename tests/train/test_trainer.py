"""The distillation step through the Hugging Face Trainer, on tiny models with different tokenizers."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from ctkd.losses import LOSSES, DistillationLoss, build_loss
from ctkd.teacher import LiveTeacher
from ctkd.train.step import DistillStep
from ctkd.train.trainer import DistillTrainer, trainer_collate_fn

METHOD_PARAMS = {"multilevel_ot": {"top_k": 20}, "uld": {}, "ce": {}}


def make_trainer(tmp_path, tiny_pair, collator, features, *, method="multilevel_ot", params=None, ce_weight=1.0,
                 kd_weight=1.0, **args):
    student, teacher = tiny_pair
    s_vocab = len(collator.sides["student"].tokenizer)
    t_vocab = len(collator.sides["teacher"].tokenizer)
    if params is None and method == "mined":
        from ctkd.align.vocab_map import build_vocab_map

        params = {"vocab_map": build_vocab_map(collator.sides["teacher"].tokenizer, collator.sides["student"].tokenizer,
                                               progress=False)}
    if params is None and method == "dskd":  # projector sizes from the tiny models
        params = {"student_hidden_size": student.config.hidden_size, "teacher_hidden_size": teacher.config.hidden_size}
    loss = build_loss(method, **(METHOD_PARAMS.get(method, {}) if params is None else params))
    step = DistillStep(loss, ce_weight=ce_weight, kd_weight=kd_weight, student_vocab_size=s_vocab)
    defaults = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=6, learning_rate=1e-2,
                    logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, remove_unused_columns=False,
                    disable_tqdm=True, seed=0, lr_scheduler_type="constant")
    defaults.update(args)
    return DistillTrainer(model=student, args=TrainingArguments(**defaults), train_dataset=features,
                          data_collator=trainer_collate_fn(collator), step=step,
                          teacher=LiveTeacher(teacher, t_vocab) if step.needs_teacher else None)


@pytest.mark.parametrize("method", sorted(LOSSES))
def test_every_loss_decreases_on_a_repeated_batch(tmp_path, tiny_pair, collator, features, method):
    trainer = make_trainer(tmp_path, tiny_pair, collator, features[:2], method=method,
                           ce_weight=1.0 if method == "ce" else 0.0, kd_weight=1.0, max_steps=8)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses
    logged = trainer.state.log_history[0]
    own = {"multilevel_ot": {"had", "sl", "sd"}, "dskd": {"ce_t2s", "kd_student", "kd_teacher", "acc_t2s"}}
    expected = {"ce"} if method == "ce" else {"kd"} | own.get(method, {method})
    assert expected <= set(logged), logged


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_gradient_accumulation_gives_the_same_update(tmp_path, pair_tokenizers, collator, features):
    from tiny import tiny_gemma3, tiny_llama

    s_tok, t_tok = pair_tokenizers
    results = []
    for batch, accum in ((4, 1), (2, 2), (1, 4)):
        pair = (tiny_llama(len(s_tok)), tiny_gemma3(len(t_tok)))
        trainer = make_trainer(tmp_path / f"{batch}", pair, collator, features[:4], method="ce", ce_weight=1.0,
                               kd_weight=0.0, per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                               max_steps=1, optim="sgd", learning_rate=1.0, max_grad_norm=0.0)
        trainer.train()
        results.append(_params(pair[0]))
    for other in results[1:]:
        for name, value in results[0].items():
            torch.testing.assert_close(other[name], value, atol=2e-6, rtol=1e-5, msg=name)


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True
        return control


def test_resume_matches_an_uninterrupted_run(tmp_path, pair_tokenizers, collator, features):
    from tiny import tiny_gemma3, tiny_llama

    s_tok, t_tok = pair_tokenizers
    common = dict(max_steps=4, save_strategy="steps", save_steps=2, per_device_train_batch_size=2)

    full_pair = (tiny_llama(len(s_tok)), tiny_gemma3(len(t_tok)))
    make_trainer(tmp_path / "full", full_pair, collator, features, **common).train()

    cut_pair = (tiny_llama(len(s_tok)), tiny_gemma3(len(t_tok)))
    interrupted = make_trainer(tmp_path / "cut", cut_pair, collator, features, **common)
    interrupted.add_callback(StopAt(2))
    interrupted.train()
    assert interrupted.state.global_step == 2

    resumed_pair = (tiny_llama(len(s_tok), seed=123), tiny_gemma3(len(t_tok)))  # weights come from the checkpoint
    resumed = make_trainer(tmp_path / "cut", resumed_pair, collator, features, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "cut" / "out" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    full, again = _params(full_pair[0]), _params(resumed_pair[0])
    for name, value in full.items():
        torch.testing.assert_close(again[name], value, atol=1e-6, rtol=1e-5, msg=name)


def test_answer_forward_matches_full_logits(tiny_pair, collator, features):
    from ctkd.forward import answer_forward

    student, teacher = tiny_pair
    batch = collator.collate(features[:3])
    for model, side in ((student, batch.student), (teacher, batch.teacher)):
        vocab = model.config.vocab_size
        out = answer_forward(model.eval(), side, vocab)
        full = model(input_ids=side.input_ids, attention_mask=side.attention_mask).logits
        expected = full[side.answer_mask]
        torch.testing.assert_close(out.logits[out.mask], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.labels[out.mask], side.labels[side.answer_mask])


def test_step_refuses_to_train_nothing():
    with pytest.raises(ValueError, match="both 0"):
        DistillStep(build_loss("uld"), ce_weight=0.0, kd_weight=0.0, student_vocab_size=10)


class LearnedTemperatureCE(DistillationLoss, torch.nn.Module):
    """A loss with a parameter of its own, standing in for DSKD's projectors."""

    name = "learned_temperature_ce"
    needs = frozenset({"labels"})
    uses_teacher = False

    def __init__(self):
        torch.nn.Module.__init__(self)
        self.log_tau = torch.nn.Parameter(torch.tensor(0.3))

    def compute(self, student_logits, teacher_logits, student_mask, teacher_mask, *, labels, **_):
        from ctkd.types import LossOutput

        logp = torch.log_softmax(student_logits.float() / self.log_tau.exp(), -1)
        picked = logp.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        loss = -(picked * student_mask).sum() / student_mask.sum().clamp_min(1)
        return LossOutput(loss=loss, components={"tau": self.log_tau.exp().detach()}, num_tokens=int(student_mask.sum()))


def test_a_loss_with_parameters_is_trained_checkpointed_and_resumed(tmp_path, pair_tokenizers, collator, features):
    from tiny import tiny_gemma3, tiny_llama

    from ctkd.train.trainer import KD_MODULES_FILE, load_kd_module

    s_tok, t_tok = pair_tokenizers

    def run(folder, loss, stop=None, resume=None, seed=0):
        pair = (tiny_llama(len(s_tok), seed=seed), tiny_gemma3(len(t_tok)))
        step = DistillStep(loss, ce_weight=0.0, kd_weight=1.0, student_vocab_size=len(s_tok))
        args = TrainingArguments(output_dir=str(folder), per_device_train_batch_size=2, max_steps=4, learning_rate=5e-2,
                                 report_to=[], save_strategy="steps", save_steps=2, use_cpu=True,
                                 remove_unused_columns=False, disable_tqdm=True, seed=0, lr_scheduler_type="constant")
        trainer = DistillTrainer(model=pair[0], args=args, train_dataset=features,
                                 data_collator=trainer_collate_fn(collator), step=step, teacher=None)
        if stop:
            trainer.add_callback(StopAt(stop))
        if resume:
            load_kd_module(loss, resume)
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        return pair[0]

    full_loss = LearnedTemperatureCE()
    full_student = run(tmp_path / "full", full_loss)
    assert abs(full_loss.log_tau.item() - 0.3) > 1e-3  # it was trained
    assert (tmp_path / "full" / "checkpoint-4" / KD_MODULES_FILE).exists()

    cut_loss = LearnedTemperatureCE()
    run(tmp_path / "cut", cut_loss, stop=2)
    resumed_loss = LearnedTemperatureCE()  # starts at 0.3 again; the checkpoint restores it
    resumed_student = run(tmp_path / "cut", resumed_loss, resume=tmp_path / "cut" / "checkpoint-2", seed=7)
    torch.testing.assert_close(resumed_loss.log_tau, full_loss.log_tau)
    for name, value in _params(full_student).items():
        torch.testing.assert_close(_params(resumed_student)[name], value, atol=1e-6, rtol=1e-5)
    # never part of the exported student
    assert not any("log_tau" in k for k in full_student.state_dict())
