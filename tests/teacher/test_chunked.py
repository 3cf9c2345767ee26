"""Chunked teacher logits (HeadLogits) against the unchunked path: statistics, losses, a whole step."""

from __future__ import annotations

import pytest
import torch
from tiny import tiny_gemma3, tiny_llama

from ctkd.forward import answer_forward, head_logits
from ctkd.losses import build_loss
from ctkd.losses._vocab import HeadLogits, head_chunk_rows, log_softmax_at, topk_log_probs, vocab_stats
from ctkd.teacher import LiveTeacher
from ctkd.teacher.chunked import teacher_head_logits
from ctkd.train.step import DistillStep

TOL = 1e-5


def answer_mask(lengths: list[int], starts: list[int], total: int) -> torch.Tensor:
    mask = torch.zeros(len(lengths), total, dtype=torch.bool)
    for b, (start, length) in enumerate(zip(starts, lengths)):
        mask[b, start:start + length] = True
    return mask


def lazy_and_dense(*, batch=3, length=7, hidden=16, vocab=200, chunk=3, softcap=None, bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, length, hidden, generator=gen)
    w = torch.randn(vocab, hidden, generator=gen)
    bvec = torch.randn(vocab, generator=gen) if bias else None
    lazy = HeadLogits(h, w, bvec, softcap, chunk_rows=chunk)
    dense = torch.nn.functional.linear(h, w, bvec)
    if softcap:
        dense = torch.tanh(dense / softcap) * softcap
    return lazy, dense


def test_head_logits_rows_equal_the_head_and_stay_within_a_chunk(monkeypatch):
    lazy, dense = lazy_and_dense(softcap=5.0)
    assert lazy.shape == dense.shape
    torch.testing.assert_close(lazy.dense(), dense, atol=TOL, rtol=0)
    b = torch.tensor([0, 2, 1, 1])
    p = torch.tensor([3, 0, 6, 2])
    ids = torch.tensor([[0, 5, 199], [7, 7, 1], [3, 2, 1], [100, 150, 4]])
    torch.testing.assert_close(lazy.at(b, p, ids), dense[b.unsqueeze(1), p.unsqueeze(1), ids], atol=TOL, rtol=0)
    # every statistic reads at most chunk_rows rows at a time: the (B, L, V) tensor is never built
    seen = []
    original = HeadLogits.rows
    monkeypatch.setattr(HeadLogits, "rows", lambda self, bb, pp: seen.append(len(bb)) or original(self, bb, pp))
    mask = torch.ones(3, 7, dtype=torch.bool)
    bb, pp = mask.nonzero(as_tuple=True)
    vocab_stats(lazy, bb, pp, temperatures=(1.0, 2.0), group=bb, num_groups=3)
    assert seen and max(seen) <= lazy.chunk_rows == 3
    seen.clear()
    student = torch.randn(3, 7, 50, requires_grad=True)
    build_loss("uld")(student, lazy, mask, mask).loss.backward()
    assert seen and max(seen) <= 3 and sum(seen) == int(mask.sum())  # each teacher row computed once


def test_automatic_chunk_rows():
    assert head_chunk_rows(262_144) == 256 and head_chunk_rows(49_152) == 1365
    assert head_chunk_rows(10 ** 9) >= 16
    lazy = HeadLogits(torch.zeros(1, 2, 4), torch.zeros(262_144, 4))
    assert lazy.chunk_rows == 256


@pytest.mark.parametrize("softcap", [None, 4.0])
def test_vocab_stats_and_log_softmax_at_match_dense(softcap):
    lazy, dense = lazy_and_dense(softcap=softcap)
    mask = answer_mask([5, 2, 7], [1, 4, 0], 7)
    b, p = mask.nonzero(as_tuple=True)
    for kwargs in ({"group": b, "num_groups": 3}, {"group": torch.zeros_like(b), "num_groups": 1}, {"row_topk": 6}):
        got = vocab_stats(lazy, b, p, temperatures=(1.0, 2.0, 0.7), **kwargs)
        ref = vocab_stats(dense, b, p, temperatures=(1.0, 2.0, 0.7), **kwargs)
        for tau in (1.0, 2.0, 0.7):
            torch.testing.assert_close(got.lse[tau], ref.lse[tau], atol=TOL, rtol=0)
            # and against an independent reference
            torch.testing.assert_close(got.lse[tau], torch.logsumexp(dense[b, p] / tau, -1), atol=TOL, rtol=0)
        if "group" in kwargs:
            torch.testing.assert_close(got.colsum, ref.colsum, atol=TOL, rtol=0)
        else:
            assert torch.equal(got.row_topk, ref.row_topk)
    ids = torch.randint(0, 200, (b.numel(), 5))
    stats = vocab_stats(dense, b, p, temperatures=(1.0, 2.0))
    for got, want in zip(log_softmax_at(lazy, b, p, ids, stats.lse, (1.0, 2.0)),
                         (torch.log_softmax(dense[b, p] / t, -1).gather(1, ids) for t in (1.0, 2.0))):
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)


def test_topk_log_probs_against_a_literal_topk():
    lazy, dense = lazy_and_dense()
    mask = answer_mask([5, 2, 7], [1, 4, 0], 7)
    for source in (lazy, dense):
        got = topk_log_probs(source, mask, 9, temperature=1.5)
        ref = torch.log_softmax(dense / 1.5, -1).topk(9, dim=-1)
        valid = got.valid
        assert valid.sum() == mask.sum()
        torch.testing.assert_close(got.logp[valid], ref.values[mask], atol=TOL, rtol=0)
        assert torch.equal(got.ids[valid], ref.indices[mask])
        torch.testing.assert_close(got.tail[valid], 1 - ref.values[mask].exp().sum(-1), atol=TOL, rtol=0)


LOSS_CASES = [
    ("multilevel_ot", {}),
    ("multilevel_ot", {"ranking": "token", "top_k": 12}),
    ("multilevel_ot", {"preset": "reference"}),
    ("multilevel_ot", {"student_columns": "greedy", "greedy_candidates": 60, "top_k": 10}),
    ("uld", {}),
    ("uld", {"temperature": 2.0}),
]


@pytest.mark.parametrize("name, params", LOSS_CASES, ids=[f"{n}-{p}" for n, p in LOSS_CASES])
def test_losses_from_head_logits_equal_the_dense_path(name, params):
    lazy, dense = lazy_and_dense(vocab=90, length=7, softcap=6.0)
    gen = torch.Generator().manual_seed(3)
    student = (torch.randn(3, 9, 70, generator=gen) * 3).requires_grad_()
    s_mask = answer_mask([5, 3, 6], [2, 5, 1], 9)
    t_mask = answer_mask([7, 2, 6], [0, 0, 0], 7)  # the packed layout a teacher signal uses
    loss = build_loss(name, **params)
    ref = loss(student, dense, s_mask, t_mask)
    (g_ref,) = torch.autograd.grad(ref.loss, student)
    got = loss(student, lazy, s_mask, t_mask)
    (g_got,) = torch.autograd.grad(got.loss, student)
    torch.testing.assert_close(got.loss, ref.loss, atol=TOL, rtol=0)
    torch.testing.assert_close(g_got, g_ref, atol=TOL, rtol=0)
    assert got.num_tokens == ref.num_tokens > 0


@pytest.mark.parametrize("method, params", [("multilevel_ot", {"top_k": 20}), ("uld", {}),
                                            ("multilevel_ot", {"preset": "reference", "top_k": 20})])
def test_a_step_with_a_chunked_live_teacher_equals_the_unchunked_step(method, params, pair_tokenizers, features,
                                                                      collator):
    s_tok, t_tok = pair_tokenizers
    student, teacher = tiny_llama(len(s_tok)), tiny_gemma3(len(t_tok))
    teacher.config.final_logit_softcapping = 5.0  # exercised on the chunked side too
    batch = collator.collate(features[:4])
    step = DistillStep(build_loss(method, **params), ce_weight=1.0, kd_weight=0.5, student_vocab_size=len(s_tok))
    outs = {}
    for chunked in (False, True):
        live = LiveTeacher(teacher, len(t_tok), chunk_size=5, chunked=chunked)
        out = step(student, live, batch)
        (grad,) = torch.autograd.grad(out.loss, student.lm_head.weight)
        outs[chunked] = (out, grad)
    torch.testing.assert_close(outs[True][0].loss, outs[False][0].loss, atol=TOL, rtol=0)
    torch.testing.assert_close(outs[True][1], outs[False][1], atol=TOL, rtol=0)
    assert outs[True][0].components.keys() == outs[False][0].components.keys()


def test_live_teacher_gives_head_logits_only_to_losses_that_accept_them(pair_tokenizers, features, collator):
    _, t_tok = pair_tokenizers
    teacher = tiny_gemma3(len(t_tok))
    live = LiveTeacher(teacher, len(t_tok), chunk_size=4)
    batch = collator.collate(features[:2])
    lazy_out = live.outputs_for(build_loss("multilevel_ot"), batch)
    assert isinstance(lazy_out.for_loss, HeadLogits) and lazy_out.logits is None
    dense_out = live.outputs_for(build_loss("ce"), batch, hidden=True)
    assert isinstance(dense_out.for_loss, torch.Tensor) and dense_out.hidden is not None
    torch.testing.assert_close(lazy_out.for_loss.dense(), dense_out.logits, atol=TOL, rtol=0)
    assert torch.equal(lazy_out.mask, dense_out.mask)
    # the head as data reproduces forward.head_logits, soft-capping included
    teacher.config.final_logit_softcapping = 3.0
    out = answer_forward(teacher, batch.teacher, len(t_tok), logits=False, hidden=True)
    torch.testing.assert_close(teacher_head_logits(teacher, out.hidden, len(t_tok), 2).dense(),
                               head_logits(teacher, out.hidden, len(t_tok)), atol=TOL, rtol=0)
