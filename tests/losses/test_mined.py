"""MinED loss: a literal loop implementation (value and gradient), hand-computed cases, properties, bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ctkd.align.vocab_map import VocabMap
from ctkd.losses import build_loss

from .helpers import make_inputs


def literal_mined(student, teacher, s_mask, t_mask, alignment, mapping, *, k=10, tau=1.0, divergence="ce",
                  renormalize=True):
    """Per example, per aligned student answer token, in float64, with Python dicts for the merged target."""
    total, count = 0.0, 0
    for b in range(student.shape[0]):
        s_rows = student[b][s_mask[b]].double()
        t_rows = teacher[b][t_mask[b]].detach().double()
        for j in range(s_rows.shape[0]):
            a = int(alignment[b, j])
            if a < 0:
                continue
            t = F.softmax(t_rows[a] / tau, dim=-1)
            target: dict[int, torch.Tensor] = {}
            for i in torch.topk(t, k).indices.tolist():
                u = int(mapping[i])
                if u >= 0:
                    target[u] = target.get(u, 0.0) + t[i]
            mass = sum(target.values())
            if not target or float(mass) == 0.0:
                continue
            if renormalize:
                target = {u: v / mass for u, v in target.items()}
            log_s = F.log_softmax(s_rows[j] / tau, dim=-1)
            value = -sum(q * log_s[u] for u, q in target.items())
            if divergence == "kl":
                value = value + sum(q * torch.log(q) for q in target.values())
            total = total + value
            count += 1
    return total / count, count


def alignment_for(s_mask, t_mask, seed=0):
    """A random monotone alignment (about a third of the student tokens unaligned)."""
    gen = torch.Generator().manual_seed(seed)
    s_len, t_len = s_mask.sum(1).tolist(), t_mask.sum(1).tolist()
    out = torch.full((len(s_len), max(s_len)), -1)
    for b, (n, m) in enumerate(zip(s_len, t_len)):
        picks = sorted(torch.randperm(m, generator=gen)[: min(n, m)].tolist())
        rows = sorted(torch.randperm(n, generator=gen)[: len(picks)].tolist())
        for r, p in zip(rows, picks):
            if torch.rand((), generator=gen) < 0.7:
                out[b, r] = p
    return out


def random_map(vt, vs, seed=0, holes=3):
    gen = torch.Generator().manual_seed(seed)
    mapping = torch.randint(0, vs, (vt,), generator=gen)
    mapping[torch.randperm(vt, generator=gen)[:holes]] = -1
    return mapping


def value_and_grad(fn, student):
    student.grad = None
    value = fn()
    value.backward()
    return value.detach(), student.grad.clone()


# temperatures other than 1 and 2: ctkd.losses._vocab's fused backward (log_softmax_at) scales the softmax term by an
# extra exp(lse_1 / tau - lse_tau) there (its forward is right); reported to the lead, drop the mark once fixed.


@pytest.mark.parametrize("divergence", ["ce", "kl"])
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("k, tau", [(10, 1.0), (4, 2.0), (90, 0.7)])
def test_matches_the_literal_loop(divergence, renormalize, k, tau):
    student, teacher, s_mask, t_mask, _ = make_inputs(vs=30, vt=90)  # Vt > Vs: many teacher ids share a student id
    alignment = alignment_for(s_mask, t_mask)
    mapping = random_map(90, 30)
    loss_fn = build_loss("mined", vocab_map=mapping, top_k=k, temperature=tau, divergence=divergence,
                         renormalize=renormalize)
    out = loss_fn(student, teacher, s_mask, t_mask, mined_alignment=alignment)
    ours, g_ours = value_and_grad(lambda: loss_fn(student, teacher, s_mask, t_mask, mined_alignment=alignment).loss, student)
    assert teacher.grad is None
    frozen = teacher.detach()
    ref, count = literal_mined(student, frozen, s_mask, t_mask, alignment, mapping, k=k, tau=tau,
                               divergence=divergence, renormalize=renormalize)
    _, g_ref = value_and_grad(lambda: literal_mined(student, frozen, s_mask, t_mask, alignment, mapping, k=k, tau=tau,
                                                    divergence=divergence, renormalize=renormalize)[0], student)
    torch.testing.assert_close(ours, ref.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(g_ours, g_ref.float(), atol=1e-6, rtol=1e-4)
    assert out.num_tokens == count == int((alignment >= 0).sum())


def logits_of(*probs):
    """(1, T, V) logits whose softmax rows are exactly the given probability vectors."""
    return torch.log(torch.tensor([list(p) for p in probs], dtype=torch.float64)).float().unsqueeze(0)


def test_hand_computed_single_position():
    # teacher t = (.5, .3, .2) over 3 ids mapped to student ids (1, 1, 0); student s = (.25, .75)
    teacher, student = logits_of((0.5, 0.3, 0.2)), logits_of((0.25, 0.75)).requires_grad_()
    mask, align = torch.ones(1, 1, dtype=torch.bool), torch.zeros(1, 1, dtype=torch.long)
    mapping = torch.tensor([1, 1, 0])

    def run(**kw):
        return build_loss("mined", vocab_map=mapping, **kw)(student, teacher, mask, mask, mined_alignment=align)

    # top-2 = ids 0, 1, both onto student id 1: merged target q = (0, 0.8), renormalised (0, 1)
    assert run(top_k=2).loss.item() == pytest.approx(-math.log(0.75), rel=1e-5)
    assert run(top_k=2, divergence="kl").loss.item() == pytest.approx(-math.log(0.75), rel=1e-5)  # H(q) = 0
    assert run(top_k=2, renormalize=False).loss.item() == pytest.approx(-0.8 * math.log(0.75), rel=1e-5)
    assert run(top_k=2, renormalize=False, divergence="kl").loss.item() == pytest.approx(0.8 * math.log(0.8 / 0.75), rel=1e-5)
    # all three ids: q = (0.2, 0.8)
    ce = -(0.2 * math.log(0.25) + 0.8 * math.log(0.75))
    kl = 0.2 * math.log(0.2 / 0.25) + 0.8 * math.log(0.8 / 0.75)
    out = run(top_k=3)
    assert out.loss.item() == pytest.approx(ce, rel=1e-5)
    assert out.components["mapped_mass"].item() == pytest.approx(1.0, rel=1e-5) and out.num_tokens == 1
    assert run(top_k=3, divergence="kl").loss.item() == pytest.approx(kl, rel=1e-5)
    # gradient of the cross-entropy w.r.t. the student logits: s - q
    out.loss.backward()
    torch.testing.assert_close(student.grad[0, 0], torch.tensor([0.25 - 0.2, 0.75 - 0.8]), atol=1e-6, rtol=1e-5)


def test_kl_is_zero_when_the_student_is_the_mapped_teacher():
    student, teacher, s_mask, t_mask, _ = make_inputs(vs=50, vt=50)
    mask = s_mask
    identity = torch.arange(50)
    lengths, longest = mask.sum(1, keepdim=True), int(mask.sum(1).max())
    columns = torch.arange(longest).unsqueeze(0)
    alignment = torch.where(columns < lengths, columns, torch.tensor(-1))  # j-th with j-th, same tokenization
    loss_fn = build_loss("mined", vocab_map=identity, top_k=50, divergence="kl")
    out = loss_fn(student, student.detach(), mask, mask, mined_alignment=alignment)
    assert abs(out.loss.item()) < 1e-5
    ce = build_loss("mined", vocab_map=identity, top_k=50)(student, student.detach(), mask, mask, mined_alignment=alignment)
    assert ce.loss.item() > 0.1  # the cross-entropy keeps the teacher's entropy


def test_unaligned_positions_are_skipped_and_do_not_get_gradient():
    student, teacher, s_mask, t_mask, _ = make_inputs(vs=30, vt=90)
    alignment = alignment_for(s_mask, t_mask)
    loss_fn = build_loss("mined", vocab_map=random_map(90, 30))
    out = loss_fn(student, teacher, s_mask, t_mask, mined_alignment=alignment)
    out.loss.backward()
    for b in range(3):
        positions = s_mask[b].nonzero().flatten().tolist()
        for j, p in enumerate(positions):
            got = student.grad[b, p].abs().sum() > 0
            assert bool(got) == bool(alignment[b, j] >= 0)
    # no aligned position at all: zero with a valid graph
    none = loss_fn(student, teacher, s_mask, t_mask, mined_alignment=torch.full_like(alignment, -1))
    assert none.loss.item() == 0.0 and none.num_tokens == 0


def test_max_distance_drops_far_ids_and_skips_positions_left_empty():
    student, teacher, s_mask, t_mask, _ = make_inputs(vs=30, vt=90)
    alignment = alignment_for(s_mask, t_mask)
    mapping = random_map(90, 30, holes=0)
    distance = (torch.arange(90) % 4).int()
    vmap = VocabMap(mapping, distance == 0, distance)
    near = build_loss("mined", vocab_map=vmap, max_distance=1)(student, teacher, s_mask, t_mask, mined_alignment=alignment)
    dropped = torch.where(distance > 1, torch.full_like(mapping, -1), mapping)
    ref, count = literal_mined(student, teacher, s_mask, t_mask, alignment, dropped)
    torch.testing.assert_close(near.loss.detach(), ref.float(), atol=1e-5, rtol=1e-5)
    assert near.num_tokens == count
    assert near.components["mapped_mass"].item() < 1.0
    # top-1 only: positions whose most probable teacher id is too far have nothing left and are skipped
    top1 = build_loss("mined", vocab_map=vmap, max_distance=1, top_k=1)(student, teacher, s_mask, t_mask,
                                                                        mined_alignment=alignment)
    ref1, count1 = literal_mined(student, teacher, s_mask, t_mask, alignment, dropped, k=1)
    assert 0 < top1.num_tokens == count1 < int((alignment >= 0).sum())
    torch.testing.assert_close(top1.loss.detach(), ref1.float(), atol=1e-5, rtol=1e-5)
    # a threshold nothing passes: every position skipped
    nothing = VocabMap(mapping, torch.zeros(90, dtype=torch.bool), torch.full((90,), 5, dtype=torch.int32))
    with pytest.raises(ValueError, match="maps no teacher id"):
        build_loss("mined", vocab_map=nothing, max_distance=1)


def test_vocab_map_forms_are_equivalent(tmp_path):
    student, teacher, s_mask, t_mask, _ = make_inputs(vs=30, vt=90)
    alignment = alignment_for(s_mask, t_mask)
    mapping = random_map(90, 30)
    vmap = VocabMap(mapping, torch.zeros(90, dtype=torch.bool), torch.ones(90, dtype=torch.int32))
    path = vmap.save(tmp_path / "map.safetensors")
    values = [build_loss("mined", vocab_map=m)(student, teacher, s_mask, t_mask, mined_alignment=alignment).loss
              for m in (mapping, vmap, path, str(path))]
    for value in values[1:]:
        torch.testing.assert_close(value, values[0])


def test_alignment_may_carry_extra_padding_columns():
    student, teacher, s_mask, t_mask, _ = make_inputs(vs=30, vt=90)
    alignment = alignment_for(s_mask, t_mask)
    loss_fn = build_loss("mined", vocab_map=random_map(90, 30))
    base = loss_fn(student, teacher, s_mask, t_mask, mined_alignment=alignment).loss
    wider = torch.cat([alignment, torch.full((3, 4), -1)], dim=1)
    torch.testing.assert_close(loss_fn(student, teacher, s_mask, t_mask, mined_alignment=wider).loss, base)


def test_bad_inputs_get_clear_errors():
    student, teacher, s_mask, t_mask, _ = make_inputs(vs=30, vt=90)
    alignment = alignment_for(s_mask, t_mask)
    good = build_loss("mined", vocab_map=random_map(90, 30))
    # the vocabulary map must fit both vocabularies
    with pytest.raises(ValueError, match="vocab_map has 80 entries but teacher_logits have Vt=90"):
        build_loss("mined", vocab_map=random_map(80, 30))(student, teacher, s_mask, t_mask, mined_alignment=alignment)
    with pytest.raises(ValueError, match="student id 49 but student_logits have Vs=30"):
        bad = random_map(90, 30)
        bad[0] = 49
        build_loss("mined", vocab_map=bad)(student, teacher, s_mask, t_mask, mined_alignment=alignment)
    # top_k beyond the teacher vocabulary
    with pytest.raises(ValueError, match="top_k=91 exceeds the teacher vocabulary"):
        build_loss("mined", vocab_map=random_map(90, 30), top_k=91)(student, teacher, s_mask, t_mask,
                                                                    mined_alignment=alignment)
    # the alignment: missing, wrong shape, wrong values
    with pytest.raises(ValueError, match="mined_alignment"):
        good(student, teacher, s_mask, t_mask)
    with pytest.raises(ValueError, match=r"mined_alignment has shape \(2, 6\)"):
        good(student, teacher, s_mask, t_mask, mined_alignment=alignment[:2])
    with pytest.raises(ValueError, match=r"Ls >= 6"):
        good(student, teacher, s_mask, t_mask, mined_alignment=alignment[:, :3])
    with pytest.raises(ValueError, match="integer tensor"):
        good(student, teacher, s_mask, t_mask, mined_alignment=alignment.float())
    with pytest.raises(ValueError, match="integer tensor"):
        good(student, teacher, s_mask, t_mask, mined_alignment=alignment[0])
    too_far = alignment.clone()
    too_far[1, 0] = 2  # example 1 has 2 teacher answer tokens
    with pytest.raises(ValueError, match=r"mined_alignment\[1, 0\] = 2"):
        good(student, teacher, s_mask, t_mask, mined_alignment=too_far)
    past_end = alignment.clone()
    past_end[1, 4] = 0  # example 1 has 3 student answer tokens: column 4 is padding
    with pytest.raises(ValueError, match="padding"):
        good(student, teacher, s_mask, t_mask, mined_alignment=past_end)
    # constructor checks
    for kwargs, match in (({"top_k": 0}, "top_k"), ({"temperature": 0.0}, "temperature"),
                          ({"divergence": "js"}, "divergence"), ({"max_distance": 1}, "VocabMap"),
                          ({"max_distance": -1}, "max_distance")):
        with pytest.raises(ValueError, match=match):
            build_loss("mined", vocab_map=random_map(90, 30), **kwargs)
    for bad_map, match in ((torch.rand(90), "integer"), (torch.zeros(3, 3, dtype=torch.long), r"\(Vt,\)"),
                           ([1, 2, 3], "VocabMap"), (torch.full((90,), -1), "maps no teacher id"),
                           (torch.full((90,), -2), "maps no teacher id")):
        with pytest.raises(ValueError, match=match):
            build_loss("mined", vocab_map=bad_map)


def test_config_is_json_friendly():
    loss_fn = build_loss("mined", vocab_map=random_map(90, 30), top_k=5)
    assert loss_fn.config() == {"top_k": 5, "temperature": 1.0, "divergence": "ce", "renormalize": True,
                                "max_distance": None}


def test_from_tokenizers_and_a_ranked_teacher_signal_is_refused():
    from tiny import byte_level_tokenizer, metaspace_tokenizer

    from ctkd.types import RankedTopK

    teacher_tok, student_tok = metaspace_tokenizer(), byte_level_tokenizer()
    loss_fn = build_loss("mined", vocab_map=torch.zeros(len(teacher_tok), dtype=torch.long))
    built = type(loss_fn).from_tokenizers(teacher_tok, student_tok, top_k=5, divergence="kl")
    assert built.config()["top_k"] == 5 and built.config()["divergence"] == "kl"
    student, teacher, s_mask, t_mask, _ = make_inputs(vs=len(student_tok), vt=len(teacher_tok))
    out = built(student, teacher, s_mask, t_mask, mined_alignment=alignment_for(s_mask, t_mask))
    assert torch.isfinite(out.loss) and out.num_tokens > 0
    ranked = RankedTopK(torch.zeros(3, 7, 5, dtype=torch.long), torch.zeros(3, 7, 5), torch.zeros(3, 7, 5),
                        torch.ones(3, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="teacher's logits"):
        built(student, ranked, s_mask, t_mask, mined_alignment=alignment_for(s_mask, t_mask))
