"""DSKD: projectors, gradient paths, a hand-checkable alignment, a literal loop reference, bad inputs, and a whole
tiny run whose checkpoints hold the projectors and whose exported student does not."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ctkd.losses import DSKD, build_loss, build_loss_for_pair, loss_parameters, model_sized, tokenizer_built
from ctkd.losses.dskd import DIVERGENCES, divergence_rows
from ctkd.types import IGNORE_INDEX

from .helpers import make_inputs

HS, HT = 16, 24


def make_case(*, seed=0, hs=HS, ht=HT, vs=70, vt=90, s_len=(5, 3, 6), t_len=(7, 2, 6), head_grad=True):
    """Random logits/masks/labels (tests/losses/helpers.py), hidden states with gradient on the student side, and
    the two heads; the student's logits are independent leaves (the step computes them; see the head test)."""
    student, teacher, s_mask, t_mask, labels = make_inputs(vs=vs, vt=vt, s_len=s_len, t_len=t_len, seed=seed,
                                                           scale=2.0)
    gen = torch.Generator().manual_seed(seed + 100)
    student_hidden = torch.randn(*student.shape[:2], hs, generator=gen).requires_grad_()
    teacher_hidden = (torch.randn(*teacher.shape[:2], ht, generator=gen) * 3 + 0.5).requires_grad_()
    student_head = (torch.randn(vs, hs, generator=gen) / hs ** 0.5).requires_grad_(head_grad)
    teacher_head = (torch.randn(vt, ht, generator=gen) / ht ** 0.5).requires_grad_()
    return dict(student_logits=student, teacher_logits=teacher, student_mask=s_mask, teacher_mask=t_mask,
                labels=labels, student_hidden=student_hidden, teacher_hidden=teacher_hidden,
                student_head=student_head, teacher_head=teacher_head)


def call(loss_fn, case):
    c = dict(case)
    return loss_fn(c.pop("student_logits"), c.pop("teacher_logits"), c.pop("student_mask"), c.pop("teacher_mask"), **c)


# ------------------------------------------------------------------------------------------------------------
# A literal implementation: per example, per position, Python sums, float64
# ------------------------------------------------------------------------------------------------------------
def literal_divergence(name, log_p, log_q, skew):
    p, q = log_p.exp(), log_q.exp()
    if name == "kl":
        return (p * torch.log(p / q)).sum()
    if name == "rkl":
        return (q * torch.log(q / p)).sum()
    if name == "js":
        m = (p + q) / 2
        return 0.5 * (p * torch.log(p / m)).sum() + 0.5 * (q * torch.log(q / m)).sum()
    if name == "skl":
        return (p * torch.log(p / (skew * p + (1 - skew) * q))).sum()
    if name == "srkl":
        return (q * torch.log(q / ((1 - skew) * p + skew * q))).sum()
    raise AssertionError(name)


def literal_dskd(loss_fn, case, *, return_t2s_logits=False):
    """The module docstring's equations, written out per token (no packing, no chunking, no batching)."""
    tau, div, skew = loss_fn.temperature, loss_fn.divergence, loss_fn.skew

    def lin(name, x):
        layer = loss_fn.projectors[name]
        out = layer.weight.double() @ x
        return out + layer.bias.double() if layer.bias is not None else out

    zs_all, zt_all = case["student_logits"], case["teacher_logits"].detach()
    ws = case["student_head"].double() if loss_fn.t2s_head_grad else case["student_head"].detach().double()
    wt = case["teacher_head"].detach().double()
    ce_sum = kds_sum = kdt_sum = 0.0
    ns = nt = 0
    t2s_logits = {}
    for b in range(zs_all.shape[0]):
        s_pos = case["student_mask"][b].nonzero().flatten().tolist()
        t_pos = case["teacher_mask"][b].nonzero().flatten().tolist()
        if not s_pos or not t_pos:
            continue
        h_s = [case["student_hidden"][b, i].double() for i in s_pos]
        h_t = [case["teacher_hidden"][b, j].detach().double() for j in t_pos]
        entries = torch.cat(h_t)
        std = torch.sqrt(((entries - entries.mean()) ** 2).mean())
        keys = [h / std for h in h_t]
        queries = [lin("query", h.detach()) for h in h_s]
        score = [[torch.dot(q, k) / math.sqrt(len(k)) for k in keys] for q in queries]
        for i, pos in enumerate(s_pos):
            weights = torch.softmax(torch.stack(score[i]), 0)
            h = sum(weights[j] * lin("t2s", keys[j]) for j in range(len(keys)))
            z = ws @ h
            t2s_logits[(b, pos)] = z.detach()
            label = int(case["labels"][b, pos])
            ce_sum = ce_sum - torch.log_softmax(z, 0)[label]
            kd = literal_divergence(div, torch.log_softmax(z.detach() / tau, 0),
                                    torch.log_softmax(zs_all[b, pos].double() / tau, 0), skew)
            if not loss_fn.t2s_correct_only or int(z.argmax()) == label:
                kds_sum = kds_sum + kd
            ns += 1
        for j, pos in enumerate(t_pos):
            weights = torch.softmax(torch.stack([score[i][j] for i in range(len(h_s))]), 0)
            h = sum(weights[i] * lin("s2t", h_s[i]) for i in range(len(h_s)))
            kdt_sum = kdt_sum + literal_divergence(div, torch.log_softmax(zt_all[b, pos].double() / tau, 0),
                                                   torch.log_softmax(wt @ h / tau, 0), skew)
            nt += 1
    value = (loss_fn.projector_ce_weight * ce_sum / ns + loss_fn.student_space_weight * kds_sum / ns
             + loss_fn.teacher_space_weight * kdt_sum / nt)
    return (value, ns, t2s_logits) if return_t2s_logits else (value, ns)


def grads_of(value, tensors):
    got = torch.autograd.grad(value, tensors, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, got)]


@pytest.mark.parametrize("params", [
    {},
    {"divergence": "js", "temperature": 1.0},
    {"divergence": "rkl", "t2s_head_grad": True, "projector_bias": False},
    {"divergence": "srkl", "t2s_correct_only": True, "projector_ce_weight": 0.5, "teacher_space_weight": 2.0},
    {"divergence": "skl", "chunk_elements": 150},
], ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()) or "default")
def test_matches_a_literal_loop_value_and_gradients(params):
    # example 1 has no teacher answer tokens: its student tokens take no part
    case = make_case(t_len=(7, 0, 6))
    loss_fn = build_loss("dskd", student_hidden_size=HS, teacher_hidden_size=HT, **params)
    if loss_fn.t2s_correct_only:  # make about half the positions "correct" so the filter matters
        _, _, t2s = literal_dskd(loss_fn, case, return_t2s_logits=True)
        for n, ((b, pos), z) in enumerate(sorted(t2s.items())):
            if n % 2 == 0:
                case["labels"][b, pos] = int(z.argmax())
    expected, count = literal_dskd(loss_fn, case)
    out = call(loss_fn, case)
    assert out.num_tokens == count == 5 + 6
    torch.testing.assert_close(out.loss.double(), expected, atol=1e-5, rtol=1e-5)
    if loss_fn.t2s_correct_only:
        assert 0.4 < float(out.components["acc_t2s"]) < 0.7
    wrt = [case["student_logits"], case["student_hidden"], case["student_head"], *loss_fn.parameters()]
    for name, got, want in zip(["student_logits", "student_hidden", "student_head", *dict(loss_fn.named_parameters())],
                               grads_of(out.loss, wrt), grads_of(expected, wrt)):
        torch.testing.assert_close(got.double(), want.double(), atol=1e-5, rtol=1e-4, msg=name)


# ------------------------------------------------------------------------------------------------------------
# Projectors and gradient paths
# ------------------------------------------------------------------------------------------------------------
def test_projector_shapes_initialisation_and_state_dict():
    loss_fn = DSKD(32, 48)
    shapes = {k: tuple(v.shape) for k, v in loss_fn.state_dict().items()}
    assert shapes == {"projectors.query.weight": (48, 32), "projectors.query.bias": (48,),
                      "projectors.t2s.weight": (32, 48), "projectors.t2s.bias": (32,),
                      "projectors.s2t.weight": (48, 32), "projectors.s2t.bias": (48,)}
    assert loss_fn.trainable_module() is loss_fn
    # nn.Linear's bounds, drawn from init_seed: reproducible whatever the global random state
    torch.manual_seed(123)
    again = DSKD(32, 48)
    for key, value in loss_fn.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
        bound = 1 / math.sqrt(value.shape[-1] if key.endswith("weight") else shapes[key.replace("bias", "weight")][1])
        assert value.abs().max() <= bound
    other = DSKD(32, 48, init_seed=1)
    assert not torch.equal(other.projectors["query"].weight, loss_fn.projectors["query"].weight)
    assert set(DSKD(32, 48, projector_bias=False).state_dict()) == {
        "projectors.query.weight", "projectors.t2s.weight", "projectors.s2t.weight"}
    config = loss_fn.config()
    assert "training" not in config and config["student_hidden_size"] == 32 and config["divergence"] == "kl"
    json.dumps(config)
    assert {"student_hidden_size", "teacher_hidden_size", "temperature", "divergence"} <= set(loss_parameters("dskd"))


def test_gradients_reach_the_student_and_the_projectors_never_the_teacher():
    case = make_case()
    # the step's student logits are its hidden states read by its head: gradients reach both through them too
    student_hidden, student_head = case["student_hidden"], case["student_head"]
    case["student_logits"] = student_hidden @ student_head.t()
    loss_fn = DSKD(HS, HT)
    out = call(loss_fn, case)
    out.loss.backward()
    s_mask = case["student_mask"]
    assert student_hidden.grad[s_mask].abs().sum() > 0 and student_hidden.grad[~s_mask].abs().sum() == 0
    assert student_head.grad.abs().sum() > 0
    for name, param in loss_fn.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    for name in ("teacher_logits", "teacher_hidden", "teacher_head"):
        assert case[name].grad is None, name


def test_the_student_head_is_trained_by_the_projected_cross_entropy_only_when_asked():
    for head_grad in (False, True):
        case = make_case()
        out = call(DSKD(HS, HT, t2s_head_grad=head_grad), case)
        out.loss.backward()
        head = case["student_head"]
        assert (head.grad is not None and head.grad.abs().sum() > 0) == head_grad


def test_each_term_trains_its_own_projectors():
    # ce_t2s: query and t2s; kd_teacher: query and s2t; kd_student: no projector (its target is stop-gradient)
    expected = {
        (1.0, 0.0, 0.0): {"query", "t2s"},
        (0.0, 0.0, 1.0): {"query", "s2t"},
        (0.0, 1.0, 0.0): set(),
    }
    for (ce_w, s_w, t_w), trained in expected.items():
        case = make_case()
        loss_fn = DSKD(HS, HT, projector_ce_weight=ce_w, student_space_weight=s_w, teacher_space_weight=t_w)
        call(loss_fn, case).loss.backward()
        got = {name for name in ("query", "t2s", "s2t")
               if any(p.grad.abs().sum() > 0 for p in loss_fn.projectors[name].parameters())}
        assert got == trained, (ce_w, s_w, t_w)
        # every projector has a gradient tensor (zeros where unused): the same tensors on every process
        assert all(p.grad is not None for p in loss_fn.parameters())
        assert (case["student_logits"].grad is not None and case["student_logits"].grad.abs().sum() > 0) == (s_w > 0)


def test_no_vocabulary_sized_activation_is_kept_for_the_backward():
    case = make_case(vs=70, vt=90)  # 70 and 90 are no other dimension of the problem
    inputs = {t.data_ptr() for t in case.values() if isinstance(t, torch.Tensor)}
    saved = []

    def pack(t):
        saved.append((tuple(t.shape), t.data_ptr()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = call(DSKD(HS, HT), case)
    assert saved
    wide = [shape for shape, ptr in saved if ptr not in inputs and {70, 90} & set(shape)]
    assert not wide, wide
    out.loss.backward()  # and the backward still works from what was kept


def test_chunking_does_not_change_value_or_gradients():
    results = []
    for chunk in (1, 1 << 24):  # one row per chunk, and every row in one chunk
        case = make_case()
        loss_fn = DSKD(HS, HT, chunk_elements=chunk, t2s_head_grad=True)
        out = call(loss_fn, case)
        out.loss.backward()
        results.append((out.loss.detach(), case["student_logits"].grad, case["student_hidden"].grad,
                        case["student_head"].grad, loss_fn.projectors["query"].weight.grad))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# The cross-model attention, by hand
# ------------------------------------------------------------------------------------------------------------
def identity_dskd(size):
    loss_fn = DSKD(size, size, projector_bias=False)
    with torch.no_grad():
        for layer in loss_fn.projectors.values():
            layer.weight.copy_(torch.eye(size))
    return loss_fn


def test_identical_states_and_identity_projectors_attend_to_the_matching_token():
    # a * orthonormal states: keys are states / std, std = a * sqrt((1 / H) (1 - 1 / (H L))) for L unit vectors,
    # so the matching score is about a and every other score 0
    size, length, scale = 16, 5, 20.0
    basis = torch.linalg.qr(torch.randn(size, size, generator=torch.Generator().manual_seed(3)))[0]
    states = scale * basis[:length]
    student_hidden = torch.zeros(2, 9, size)
    teacher_hidden = torch.zeros(2, 12, size)
    student_mask = torch.zeros(2, 9, dtype=torch.bool)
    teacher_mask = torch.zeros(2, 12, dtype=torch.bool)
    student_hidden[0, 3:8], student_mask[0, 3:8] = states, True  # answers at different offsets on the two sides
    teacher_hidden[0, 6:11], teacher_mask[0, 6:11] = states, True
    # example 1: the teacher splits the third token into two (an extra state between 2 and 3)
    extra = scale * basis[length]
    student_hidden[1, 1:6], student_mask[1, 1:6] = states, True
    teacher_hidden[1, 2:8], teacher_mask[1, 2:8] = torch.cat([states[:3], extra[None], states[3:]]), True
    cma = identity_dskd(size).attention(student_hidden, teacher_hidden, student_mask, teacher_mask)
    assert cma.t2s.shape == (2, 5, 6) and cma.s2t.shape == (2, 6, 5)
    t2s0 = cma.t2s[0, :, :5]
    torch.testing.assert_close(t2s0.sum(-1), torch.ones(5))
    assert torch.equal(t2s0.argmax(-1), torch.arange(5)) and bool((t2s0.diagonal() > 0.99).all())
    assert float(cma.t2s[0, :, 5].detach().abs().max()) == 0.0  # padded teacher slot of example 0
    assert torch.equal(cma.s2t[0, :5].argmax(-1), torch.arange(5))
    # example 1: student token i attends to teacher token i (i < 3) or i + 1 (i >= 3); the extra teacher token
    # spreads its weight evenly (no student state is like it)
    assert torch.equal(cma.t2s[1].argmax(-1), torch.tensor([0, 1, 2, 4, 5]))
    assert bool((cma.t2s[1].amax(-1) > 0.99).all())
    torch.testing.assert_close(cma.s2t[1, 3], torch.full((5,), 0.2), atol=1e-4, rtol=0)
    # the exact softmax of the hand-computed scores
    entries = states.flatten()
    std = entries.std(correction=0)
    scores = (states @ states.t()) / std / math.sqrt(size)
    torch.testing.assert_close(t2s0, torch.softmax(scores, -1), atol=1e-6, rtol=1e-5)


def test_identical_models_with_identity_projectors_have_small_kd_terms():
    # same states, same head, same logits on both sides: the aligned distributions nearly coincide
    size, vocab, length = 16, 40, 5
    gen = torch.Generator().manual_seed(5)
    basis = torch.linalg.qr(torch.randn(size, size, generator=gen))[0]
    hidden = 20.0 * basis[:length].unsqueeze(0)
    head = torch.randn(vocab, size, generator=gen) * 0.05
    logits = hidden @ head.t()
    mask = torch.ones(1, length, dtype=torch.bool)
    out = identity_dskd(size)(logits, logits, mask, mask, student_hidden=hidden, teacher_hidden=hidden,
                              student_head=head, teacher_head=head, labels=logits.argmax(-1))
    # teacher space: the student's states, aligned to the teacher's identical tokens, give the teacher's logits;
    # student space: the t2s path reads normalised states (hidden / std), so its logits are the teacher's / std,
    # with the same argmax
    assert float(out.components["kd_teacher"]) < 1e-2
    assert float(out.components["acc_t2s"]) == 1.0


# ------------------------------------------------------------------------------------------------------------
# Divergences
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DIVERGENCES)
def test_divergences_are_zero_on_equal_rows_positive_otherwise_and_match_their_formula(name):
    gen = torch.Generator().manual_seed(0)
    p = torch.log_softmax(torch.randn(6, 30, generator=gen) * 2, -1)
    q = torch.log_softmax(torch.randn(6, 30, generator=gen) * 2, -1)
    torch.testing.assert_close(divergence_rows(name, p, p), torch.zeros(6), atol=1e-6, rtol=0)
    values = divergence_rows(name, p, q)
    assert bool((values > 0).all())
    expected = torch.stack([literal_divergence(name, p[r].double(), q[r].double(), 0.1) for r in range(6)])
    torch.testing.assert_close(values.double(), expected, atol=1e-6, rtol=1e-5)


def test_kl_matches_torch_kl_div_and_js_is_symmetric():
    gen = torch.Generator().manual_seed(1)
    p = torch.log_softmax(torch.randn(4, 12, generator=gen), -1)
    q = torch.log_softmax(torch.randn(4, 12, generator=gen), -1)
    torch.testing.assert_close(divergence_rows("kl", p, q),
                               F.kl_div(q, p, log_target=True, reduction="none").sum(-1))
    torch.testing.assert_close(divergence_rows("js", p, q), divergence_rows("js", q, p))
    torch.testing.assert_close(divergence_rows("rkl", p, q), divergence_rows("kl", q, p))


# ------------------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------------------
def test_hidden_size_mismatch_and_missing_inputs_are_errors_naming_the_value():
    case = make_case(hs=20)
    with pytest.raises(ValueError, match=r"student_hidden has hidden size 20.*student_hidden_size=16"):
        call(DSKD(HS, HT), case)
    case = make_case()
    with pytest.raises(ValueError, match=r"teacher_hidden has hidden size 24.*teacher_hidden_size=30"):
        call(DSKD(HS, 30), case)
    for key in ("student_hidden", "teacher_hidden", "student_head", "teacher_head", "labels"):
        broken = dict(make_case(), **{key: None})
        with pytest.raises(ValueError, match=key):
            call(DSKD(HS, HT), broken)
    broken = make_case()
    broken["student_hidden"] = broken["student_hidden"][:, :-1]
    with pytest.raises(ValueError, match=r"student_hidden has shape \(3, 11, 16\)"):
        call(DSKD(HS, HT), broken)
    broken = make_case()
    broken["teacher_head"] = broken["teacher_head"][:-1]
    with pytest.raises(ValueError, match=r"teacher_head has shape \(89, 24\).*\(90, 24\)"):
        call(DSKD(HS, HT), broken)
    broken = make_case()
    broken["labels"] = broken["labels"].clone()
    broken["labels"][broken["student_mask"]] = IGNORE_INDEX
    with pytest.raises(ValueError, match="labels hold -100"):
        call(DSKD(HS, HT), broken)
    broken = make_case()
    broken["teacher_hidden"] = broken["teacher_hidden"].detach().clone()
    broken["teacher_hidden"][broken["teacher_mask"]] = float("nan")
    with pytest.raises(ValueError, match="teacher_hidden contain non-finite"):
        call(DSKD(HS, HT), broken)
    broken = make_case()
    broken["teacher_logits"] = object()
    with pytest.raises(ValueError, match="live teacher"):
        call(DSKD(HS, HT), broken)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "student_hidden_size is None"),
    ({"student_hidden_size": 16}, "teacher_hidden_size is None"),
    ({"student_hidden_size": 0, "teacher_hidden_size": 8}, "student_hidden_size must be an int >= 1"),
    ({"student_hidden_size": 8, "teacher_hidden_size": 8, "divergence": "tvd"}, "divergence"),
    ({"student_hidden_size": 8, "teacher_hidden_size": 8, "temperature": 0}, "temperature"),
    ({"student_hidden_size": 8, "teacher_hidden_size": 8, "skew": 1.0}, "skew"),
    ({"student_hidden_size": 8, "teacher_hidden_size": 8, "teacher_space_weight": -1}, "teacher_space_weight"),
    ({"student_hidden_size": 8, "teacher_hidden_size": 8, "projector_ce_weight": 0, "student_space_weight": 0,
      "teacher_space_weight": 0}, "all 0"),
    ({"student_hidden_size": 8, "teacher_hidden_size": 8, "t2s_correct_only": "yes"}, "t2s_correct_only"),
])
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_loss("dskd", **kwargs)


# ------------------------------------------------------------------------------------------------------------
# Wiring: sizes from the models, a whole tiny run
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizers():
    from tiny import byte_level_tokenizer, metaspace_tokenizer

    return byte_level_tokenizer(), metaspace_tokenizer()


def test_projector_sizes_come_from_the_models_unless_given(tokenizers):
    from tiny import tiny_gemma3, tiny_llama

    s_tok, t_tok = tokenizers
    student, teacher = tiny_llama(len(s_tok)), tiny_gemma3(len(t_tok))
    assert tokenizer_built("dskd", {}) and model_sized("dskd", {"student_hidden_size": 32}) == ["teacher_hidden_size"]
    assert not tokenizer_built("dskd", {"student_hidden_size": 32, "teacher_hidden_size": 48})
    loss_fn = build_loss_for_pair("dskd", {"divergence": "js"}, t_tok, s_tok, student_model=student,
                                  teacher_model=teacher)
    assert (loss_fn.student_hidden_size, loss_fn.teacher_hidden_size, loss_fn.divergence) == (32, 48, "js")
    given = build_loss_for_pair("dskd", {"teacher_hidden_size": 48}, t_tok, s_tok, student_model=student)
    assert given.teacher_hidden_size == 48
    with pytest.raises(ValueError, match="teacher_hidden_size.*live teacher"):
        build_loss_for_pair("dskd", {}, t_tok, s_tok, student_model=student, teacher_model=None)


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory, tokenizers):
    from tiny import tiny_gemma3, tiny_llama

    root = tmp_path_factory.mktemp("dskd_run")
    s_tok, t_tok = tokenizers
    for name, tok, model in (("student", s_tok, tiny_llama(len(s_tok))), ("teacher", t_tok, tiny_gemma3(len(t_tok)))):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    (root / "data").mkdir()
    rows = [{"id": f"train{i}", "prompt": f"Context: The cat sat on mat {i}.\nQuestion: who sat?\nAnswer:",
             "response": ["the cat", "a dog on it", "Paris"][i % 3]} for i in range(4)]
    for split in ("train", "validation"):
        (root / "data" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_a_run_checkpoints_the_projectors_and_exports_a_plain_student(tmp_path, run_dirs):
    import yaml
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ctkd.config import load_config
    from ctkd.train.run import run_distillation
    from ctkd.train.trainer import KD_MODULES_FILE, load_kd_module

    config = {
        "student": {"name": str(run_dirs / "student")}, "teacher": {"name": str(run_dirs / "teacher")},
        "data": {"task": "jsonl", "data_dir": str(run_dirs / "data"), "student_max_length": 64,
                 "teacher_max_length": 64},
        "loss": {"method": "dskd", "params": {"divergence": "kl"}},  # hidden sizes from the loaded models
        "optim": {"learning_rate": 1e-2, "max_steps": 2, "batch_size": 2},
        "eval": {"before": False, "after": False},
        "output": {"dir": str(tmp_path / "run"), "logging_steps": 1, "save_steps": 1, "report_to": []},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = run_distillation(load_config(path), progress=False)
    assert summary.steps == 2
    out = tmp_path / "run"
    fresh = DSKD(32, 48)
    saved = {}
    for step in (1, 2):
        saved[step] = load_file(str(out / "checkpoints" / f"checkpoint-{step}" / KD_MODULES_FILE))
        assert {k: tuple(v.shape) for k, v in saved[step].items()} == {
            k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    # trained (the first step runs at the warm-up's learning rate 0), and restorable
    for key in saved[2]:
        assert not torch.equal(saved[2][key], saved[1][key]), key
    assert load_kd_module(fresh, out / "checkpoints" / "checkpoint-2")
    torch.testing.assert_close(fresh.state_dict(), saved[2])
    # the exported student holds the student's own weights only
    with safe_open(str(out / "student" / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    assert keys and not any("projector" in k for k in keys)
    from transformers import AutoModelForCausalLM

    reference = set(AutoModelForCausalLM.from_pretrained(run_dirs / "student").state_dict())
    assert keys <= reference
    logged = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {"ce_t2s", "kd_student", "kd_teacher", "acc_t2s", "ce", "kd"} <= set(logged[0])


def test_config_validation_leaves_the_sizes_to_the_models_but_checks_the_names(tmp_path):
    import yaml

    from ctkd.config import ConfigError, load_config

    def config_with(params):
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({"student": {"name": "s"}, "teacher": {"name": "t"},
                                        "data": {"task": "jsonl", "data_dir": str(tmp_path)},
                                        "loss": {"method": "dskd", "params": params}}))
        return load_config(path)

    assert config_with({"temperature": 1.0}).loss.params == {"temperature": 1.0}
    with pytest.raises(ConfigError, match="unknown parameter.*temprature"):
        config_with({"temprature": 1.0})
