"""The shared contract, tested once over every registered loss (style.md, principle 9)."""

from __future__ import annotations

import pytest
import torch

from ctkd.align.vocab_map import VocabMap
from ctkd.losses import LOSSES, build_loss
from ctkd.types import LossOutput, SpanAlignment

from .helpers import make_inputs

# MinED's teacher -> student map for make_inputs' vocabularies (Vt = 90 -> Vs = 70): collisions, a few holes (-1).
_MINED_MAP = torch.tensor([(7 * i) % 70 if i < 86 else -1 for i in range(90)])
_MINED_VOCAB_MAP = VocabMap(_MINED_MAP, torch.zeros(90, dtype=torch.bool),
                            torch.where(_MINED_MAP >= 0, torch.arange(90) % 3, torch.full((90,), -1)).int())

# Every registered loss must appear here (checked below); variants exercise the main switches.
CONFIGS: dict[str, list[dict]] = {
    "ce": [{}],
    "uld": [{}],
    "multilevel_ot": [
        {},
        {"preset": "reference"},
        {"ranking": "token"},
        {"student_columns": "greedy", "greedy_candidates": 60},
        {"grad": "last_step", "top_k": 8},
    ],
    "mined": [
        {"vocab_map": _MINED_MAP},
        {"vocab_map": _MINED_MAP, "divergence": "kl", "top_k": 5, "temperature": 2.0},
        {"vocab_map": _MINED_VOCAB_MAP, "renormalize": False, "max_distance": 1},
    ],
    "dskd": [
        {"student_hidden_size": 16, "teacher_hidden_size": 24},
        {"student_hidden_size": 16, "teacher_hidden_size": 24, "divergence": "rkl", "t2s_head_grad": True,
         "chunk_elements": 100},  # one row per chunk
        {"student_hidden_size": 16, "teacher_hidden_size": 24, "divergence": "js", "temperature": 1.0},
        {"student_hidden_size": 16, "teacher_hidden_size": 24, "divergence": "skl", "projector_bias": False},
        {"student_hidden_size": 16, "teacher_hidden_size": 24, "divergence": "srkl", "teacher_space_weight": 0.0},
    ],
}
CASES = [(name, params) for name, variants in CONFIGS.items() for params in variants]
IDS = [f"{name}-{'-'.join(f'{k}={v}' for k, v in p.items() if k != 'vocab_map') or 'default'}" for name, p in CASES]


def test_every_registered_loss_is_covered():
    assert set(CONFIGS) == set(LOSSES)


def mined_alignment(s_mask, t_mask):
    """A monotone token alignment for MinED built from the masks alone (every fourth student token unaligned)."""
    s_len = s_mask.sum(1).tolist()
    t_len = t_mask.sum(1).tolist()
    out = torch.full((len(s_len), max(s_len, default=0)), -1)
    for b, n in enumerate(s_len):
        m = t_len[b] if b < len(t_len) else 0
        for j in range(n):
            out[b, j] = min(j, m - 1) if (m and j % 4 != 3) else -1
    return out


# Method extras a loss may declare in ``needs``, built from the masks so every test gets a consistent one.
EXTRA_FACTORIES = {"mined_alignment": mined_alignment}


def projection_extras(loss_fn, student, teacher):
    """DSKD's hidden states and output heads: the hidden states are the first H logits of each position (so they
    follow padding and batch order like the logits, and carry no gradient), the heads fixed random matrices."""
    hs, ht = loss_fn.student_hidden_size, loss_fn.teacher_hidden_size
    gen = torch.Generator().manual_seed(7)
    return {"student_hidden": student.detach()[..., :hs], "teacher_hidden": teacher.detach()[..., :ht],
            "student_head": torch.randn(student.shape[-1], hs, generator=gen) / hs ** 0.5,
            "teacher_head": torch.randn(teacher.shape[-1], ht, generator=gen) / ht ** 0.5}


def run(loss_fn, student, teacher, s_mask, t_mask, labels, **extra):
    for key in sorted(loss_fn.needs):
        if key in EXTRA_FACTORIES and key not in extra:
            extra[key] = EXTRA_FACTORIES[key](s_mask, t_mask)
    if "student_hidden" in loss_fn.needs:
        extra = {**projection_extras(loss_fn, student, teacher), **extra}
    return loss_fn(student, teacher, s_mask, t_mask, labels=labels, **extra)


@pytest.mark.parametrize("name, params", CASES, ids=IDS)
def test_finite_scalar_and_gradient_reaches_only_the_student(name, params):
    student, teacher, s_mask, t_mask, labels = make_inputs()
    out = run(build_loss(name, **params), student, teacher, s_mask, t_mask, labels)
    assert isinstance(out, LossOutput)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.num_tokens > 0
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.components.values())
    out.loss.backward()
    assert student.grad is not None and torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    assert teacher.grad is None
    # prompt positions never receive gradient
    assert student.grad[~s_mask].abs().sum() == 0


@pytest.mark.parametrize("name, params", CASES, ids=IDS)
def test_all_masked_batch_gives_zero_with_a_valid_graph(name, params):
    student, teacher, s_mask, t_mask, labels = make_inputs()
    s_mask[:] = False
    out = run(build_loss(name, **params), student, teacher, s_mask, t_mask, labels)
    assert out.loss.item() == 0.0 and out.num_tokens == 0
    out.loss.backward()
    assert student.grad is not None and student.grad.abs().sum() == 0


@pytest.mark.parametrize("name, params", CASES, ids=IDS)
def test_extra_padding_does_not_change_the_value(name, params):
    student, teacher, s_mask, t_mask, labels = make_inputs()
    loss_fn = build_loss(name, **params)
    base = run(loss_fn, student, teacher, s_mask, t_mask, labels).loss
    pad = 4
    student2 = torch.cat([student.detach(), torch.randn(3, pad, student.shape[2]) * 5], 1)
    teacher2 = torch.cat([teacher.detach(), torch.randn(3, pad + 2, teacher.shape[2]) * 5], 1)
    s_mask2 = torch.cat([s_mask, torch.zeros(3, pad, dtype=torch.bool)], 1)
    t_mask2 = torch.cat([t_mask, torch.zeros(3, pad + 2, dtype=torch.bool)], 1)
    labels2 = torch.cat([labels, torch.full((3, pad), -100)], 1)
    padded = run(loss_fn, student2, teacher2, s_mask2, t_mask2, labels2).loss
    torch.testing.assert_close(padded, base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, params", CASES, ids=IDS)
def test_batch_order_does_not_change_the_value(name, params):
    student, teacher, s_mask, t_mask, labels = make_inputs()
    loss_fn = build_loss(name, **params)
    base = run(loss_fn, student, teacher, s_mask, t_mask, labels).loss
    perm = torch.tensor([2, 0, 1])
    permuted = run(loss_fn, student[perm], teacher[perm], s_mask[perm], t_mask[perm], labels[perm]).loss
    torch.testing.assert_close(permuted, base, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, params", CASES, ids=IDS)
def test_bf16_input_is_close_to_fp32(name, params):
    student, teacher, s_mask, t_mask, labels = make_inputs(scale=1.0)
    loss_fn = build_loss(name, **params)
    full = run(loss_fn, student, teacher, s_mask, t_mask, labels).loss
    half_student = student.detach().bfloat16().requires_grad_()
    half = run(loss_fn, half_student, teacher.detach().bfloat16(), s_mask, t_mask, labels).loss
    torch.testing.assert_close(half.float(), full, atol=0.05, rtol=0.05)
    half.backward()
    assert half_student.grad.dtype == torch.bfloat16 and torch.isfinite(half_student.grad.float()).all()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_bad_input_gets_a_clear_error(name):
    student, teacher, s_mask, t_mask, labels = make_inputs()
    loss_fn = build_loss(name, **CONFIGS[name][0])
    with pytest.raises(ValueError, match="student_mask"):
        run(loss_fn, student, teacher, s_mask[:, :-1], t_mask, labels)
    with pytest.raises(ValueError, match="student_logits"):
        run(loss_fn, student[0], teacher, s_mask, t_mask, labels)
    nan_student = student.detach().clone()
    nan_student[s_mask] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        run(loss_fn, nan_student, teacher, s_mask, t_mask, labels)
    if LOSSES[name].uses_teacher:
        with pytest.raises(ValueError, match="batch sizes differ"):
            run(loss_fn, student, teacher[:2], s_mask, t_mask[:2], labels)
        with pytest.raises(ValueError, match="teacher_mask"):
            run(loss_fn, student, teacher, s_mask, t_mask[:, :3], labels)
        nan_teacher = teacher.detach().clone()
        nan_teacher[t_mask] = float("inf")
        with pytest.raises(ValueError, match="non-finite"):
            run(loss_fn, student, nan_teacher, s_mask, t_mask, labels)


def test_unknown_loss_and_parameter_errors_list_the_valid_ones():
    with pytest.raises(ValueError, match="registered losses"):
        build_loss("kl_everything")
    with pytest.raises(ValueError, match="valid"):
        build_loss("multilevel_ot", topk=5)
    with pytest.raises(ValueError, match="valid"):
        build_loss("uld", temp=2.0)


@pytest.mark.parametrize("name", ["uld", "multilevel_ot"])
def test_span_pairing_with_identity_alignment_equals_positional(name):
    # same answer lengths on both sides, one token per group: span pairing must equal positional pairing
    student, teacher, s_mask, t_mask, labels = make_inputs(s_len=(5, 3, 6), t_len=(5, 3, 6))
    lengths = s_mask.sum(1)
    groups = torch.full((3, int(lengths.max())), -1)
    for b, n in enumerate(lengths.tolist()):
        groups[b, :n] = torch.arange(n)
    alignment = SpanAlignment(groups, groups.clone(), lengths.clone())
    extra = {"top_k": 10} if name == "multilevel_ot" else {}
    positional = build_loss(name, **extra)(student, teacher, s_mask, t_mask)
    span = build_loss(name, pairing="span", **extra)(student, teacher, s_mask, t_mask, alignment=alignment)
    torch.testing.assert_close(span.loss, positional.loss)
    with pytest.raises(ValueError, match="alignment"):
        build_loss(name, pairing="span", **extra)(student, teacher, s_mask, t_mask)
