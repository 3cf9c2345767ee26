"""Literal, loop-based implementations of the methods, written from docs/method.md for comparison.

Slow and memory-hungry on purpose: full softmax, full sorts, per-example Python loops, plain-space Sinkhorn
in float64. They share no code with ctkd.losses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def literal_sinkhorn_value(cost: torch.Tensor, epsilon: float, n_iters: int) -> torch.Tensor:
    n, m = cost.shape
    plan = torch.exp(-cost.double() / epsilon)
    for _ in range(n_iters):
        plan = plan / plan.sum(1, keepdim=True) / n
        plan = plan / plan.sum(0, keepdim=True) / m
    return (plan * cost.double()).sum()


def literal_mlot_paper(student, teacher, s_mask, t_mask, k=50, tau_sd=2.0, epsilon=0.1, n_iters=20):
    had = sl = 0.0
    pairs = 0
    sds = []
    for b in range(student.shape[0]):
        zs, zt = student[b][s_mask[b]].float(), teacher[b][t_mask[b]].float()
        if len(zs) == 0 or len(zt) == 0:
            continue
        ps, pt = F.softmax(zs, -1), F.softmax(zt, -1)
        order_t = torch.argsort(pt.detach().sum(0), descending=True)[:k]
        order_s = torch.argsort(ps.detach().sum(0), descending=True)[:k]
        tk, sk = pt[:, order_t], ps[:, order_s]
        n = min(len(zs), len(zt))
        had = had + (tk[:n] - sk[:n]).abs().sum()
        sl = sl - (tk[:n] * torch.log(sk[:n])).sum()
        pairs += n
        t2 = F.softmax(zt / tau_sd, -1)[:, order_t]
        s2 = F.softmax(zs / tau_sd, -1)[:, order_s]
        cost = (t2[:, None, :] - s2[None, :, :]).abs().sum(-1)
        sds.append(literal_sinkhorn_value(cost, epsilon, n_iters))
    had, sl = had / pairs, sl / pairs
    sd = torch.stack(sds).mean()
    return had + 0.1 * sl + 0.1 * sd, (had, sl, sd)


def literal_mlot_reference(student, teacher, s_mask, t_mask, k=50):
    """The authors' code as docs/method.md describes it (and ctkd documents its reading of it)."""
    def answers(logits, mask):
        rows = [logits[b][mask[b]].float() for b in range(logits.shape[0])]
        rows = [r / (r.std(-1, keepdim=True) + 1e-4) for r in rows]
        probs = [F.softmax(r, -1) for r in rows]
        longest = max(len(p) for p in probs)
        return torch.stack([F.pad(p, (0, 0, 0, longest - len(p))) for p in probs])  # zero-padded rows

    pt, ps = answers(teacher, t_mask), answers(student, s_mask)
    order_t = torch.argsort(pt.detach().sum((0, 1)), descending=True)[:k]  # batch-level ranking
    order_s = torch.argsort(ps.detach().sum((0, 1)), descending=True)[:k]
    tk, sk = pt[:, :, order_t], ps[:, :, order_s]
    n = min(tk.shape[1], sk.shape[1])
    had = (tk[:, :n] - sk[:, :n]).abs().sum(-1).mean()
    sl = -(F.softmax(sk[:, :n], -1) * F.log_softmax(tk[:, :n], -1)).sum(-1).mean()
    t2, s2 = F.softmax(tk / 2.0, -1), F.softmax(sk / 2.0, -1)
    sd = 0.0
    for b in range(tk.shape[0]):
        cost = (t2[b][:, None, :] - s2[b][None, :, :]).abs().sum(-1)
        plan = torch.exp(-cost / 0.1)
        for _ in range(10):
            plan = plan / plan.sum(1, keepdim=True)
            plan = plan / plan.sum(0, keepdim=True)
        sd = sd + 0.001 * (plan * cost).sum()
    return had + 0.1 * sl + 0.1 * sd, (had, sl, sd)


def literal_uld(student, teacher, s_mask, t_mask):
    total, pairs = 0.0, 0
    for b in range(student.shape[0]):
        ps = F.softmax(student[b][s_mask[b]].float(), -1)
        pt = F.softmax(teacher[b][t_mask[b]].float(), -1)
        n = min(len(ps), len(pt))
        ps, pt = ps[:n].sort(-1, descending=True).values, pt[:n].sort(-1, descending=True).values
        width = max(ps.shape[-1], pt.shape[-1])
        ps, pt = F.pad(ps, (0, width - ps.shape[-1])), F.pad(pt, (0, width - pt.shape[-1]))
        total = total + (ps - pt).abs().sum()
        pairs += n
    return total / pairs
