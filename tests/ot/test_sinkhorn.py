"""ctkd.ot.sinkhorn against POT, a literal loop, exact assignment, and its own invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from ctkd.ot import l1_cost, sinkhorn, sinkhorn_plain

ot = pytest.importorskip("ot")


def literal_sinkhorn(cost: np.ndarray, epsilon: float, n_iters: int) -> np.ndarray:
    """The paper's order in plain float64 space with uniform marginals: rows, then columns."""
    n, m = cost.shape
    plan = np.exp(-cost / epsilon)
    for _ in range(n_iters):
        plan = plan * (1.0 / n / plan.sum(axis=1, keepdims=True))
        plan = plan * (1.0 / m / plan.sum(axis=0, keepdims=True))
    return plan


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 6, 4), (1, 9, 9)])
def test_matches_pot_at_convergence(shape):
    cost = torch.rand(*shape, dtype=torch.float64)
    out = sinkhorn(cost, epsilon=0.1, n_iters=3000)
    for b in range(shape[0]):
        a = np.full(shape[1], 1 / shape[1])
        c = np.full(shape[2], 1 / shape[2])
        ref = ot.sinkhorn(a, c, cost[b].numpy(), 0.1, method="sinkhorn_log", numItermax=3000, stopThr=1e-14)
        np.testing.assert_allclose(out.plan[b].numpy(), ref, atol=1e-10)
        np.testing.assert_allclose(out.value[b].item(), (ref * cost[b].numpy()).sum(), atol=1e-10)


def test_masked_problems_match_pot_on_their_valid_block():
    torch.manual_seed(1)
    cost = torch.rand(3, 6, 8, dtype=torch.float64)
    rows = torch.tensor([6, 3, 1])
    cols = torch.tensor([2, 8, 5])
    row_mask = torch.arange(6)[None] < rows[:, None]
    col_mask = torch.arange(8)[None] < cols[:, None]
    out = sinkhorn(cost, epsilon=0.05, n_iters=4000, row_mask=row_mask, col_mask=col_mask)
    for b in range(3):
        n, m = int(rows[b]), int(cols[b])
        ref = ot.sinkhorn(np.full(n, 1 / n), np.full(m, 1 / m), cost[b, :n, :m].numpy(), 0.05,
                          method="sinkhorn_log", numItermax=4000, stopThr=1e-14)
        np.testing.assert_allclose(out.plan[b, :n, :m].numpy(), ref, atol=1e-9)
        assert out.plan[b, n:].abs().sum() == 0 and out.plan[b, :, m:].abs().sum() == 0


def test_follows_the_papers_iteration_order_exactly():
    cost = torch.rand(2, 5, 3, dtype=torch.float64)
    for n_iters in (1, 2, 20):
        out = sinkhorn(cost, epsilon=0.2, n_iters=n_iters)
        for b in range(2):
            np.testing.assert_allclose(out.plan[b].numpy(), literal_sinkhorn(cost[b].numpy(), 0.2, n_iters), rtol=1e-10)


def test_marginals_columns_exact_rows_converge():
    cost = torch.rand(4, 7, 5)
    out = sinkhorn(cost, epsilon=0.1, n_iters=20)
    torch.testing.assert_close(out.plan.sum(1), torch.full((4, 5), 1 / 5), atol=1e-6, rtol=0)
    assert float(out.plan.sum(dim=(1, 2)).sub(1).abs().max()) < 1e-5
    assert float(sinkhorn(cost, epsilon=0.1, n_iters=500).row_error.max()) < 1e-5


def test_padding_does_not_change_the_solution():
    cost = torch.rand(1, 4, 6, dtype=torch.float64)
    padded = torch.nn.functional.pad(cost, (0, 3, 0, 2), value=123.0)
    row_mask = torch.arange(6)[None] < 4
    col_mask = torch.arange(9)[None] < 6
    plain = sinkhorn(cost, n_iters=20)
    masked = sinkhorn(padded, n_iters=20, row_mask=row_mask, col_mask=col_mask)
    torch.testing.assert_close(masked.plan[:, :4, :6], plain.plan)
    torch.testing.assert_close(masked.value, plain.value)


def test_gradcheck_autodiff_float64():
    cost = torch.rand(2, 3, 4, dtype=torch.float64, requires_grad=True)
    row_mask = torch.tensor([[True, True, True], [True, True, False]])
    col_mask = torch.tensor([[True, True, True, True], [True, False, True, True]])
    assert torch.autograd.gradcheck(
        lambda c: sinkhorn(c, epsilon=0.3, n_iters=5, row_mask=row_mask, col_mask=col_mask).value, (cost,))


def test_gradient_modes_share_the_forward_and_envelope_gradient_is_the_plan():
    cost = torch.rand(2, 5, 4, requires_grad=True)
    outs = {mode: sinkhorn(cost, n_iters=30, grad=mode) for mode in ("autodiff", "last_step", "envelope")}
    for mode in ("last_step", "envelope"):
        torch.testing.assert_close(outs[mode].value, outs["autodiff"].value)
    (grad,) = torch.autograd.grad(outs["envelope"].value.sum(), cost)
    torch.testing.assert_close(grad, outs["envelope"].plan.detach())
    for mode in ("autodiff", "last_step"):
        (g,) = torch.autograd.grad(outs[mode].value.sum(), cost)
        assert torch.isfinite(g).all()
    # near convergence the cheap gradients point where the full one does (cosine measured: last_step
    # 0.999+, envelope 0.95-0.98 on random 5x5 problems at epsilon 0.5)
    c2 = torch.rand(1, 5, 5, dtype=torch.float64, requires_grad=True)
    grads = {m: torch.autograd.grad(sinkhorn(c2, epsilon=0.5, n_iters=200, grad=m).value.sum(), c2)[0].flatten()
             for m in ("autodiff", "last_step", "envelope")}
    cos = torch.nn.functional.cosine_similarity
    assert cos(grads["autodiff"], grads["last_step"], dim=0) > 0.99
    assert cos(grads["autodiff"], grads["envelope"], dim=0) > 0.9


def test_small_epsilon_recovers_the_exact_assignment():
    torch.manual_seed(3)
    n = 6
    cost = torch.rand(1, n, n, dtype=torch.float64)
    rows, cols = linear_sum_assignment(cost[0].numpy())
    exact = cost[0].numpy()[rows, cols].sum() / n  # uniform marginals 1/n: a permutation scaled by 1/n
    out = sinkhorn(cost, epsilon=1e-3, n_iters=5000)
    assert abs(out.value.item() - exact) < 1e-3
    perm = np.zeros((n, n))
    perm[rows, cols] = 1 / n
    np.testing.assert_allclose(out.plan[0].numpy(), perm, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_nan_for_tiny_epsilon_and_large_costs(dtype):
    cost = (torch.rand(3, 8, 5) * 50).to(dtype).requires_grad_()
    out = sinkhorn(cost, epsilon=1e-6, n_iters=20)
    assert out.plan.dtype == torch.float32
    assert torch.isfinite(out.plan).all() and torch.isfinite(out.value).all()
    out.value.sum().backward()
    assert torch.isfinite(cost.grad.float()).all()


def test_fully_masked_problem_is_zero_with_finite_gradient():
    cost = torch.rand(2, 3, 3, requires_grad=True)
    row_mask = torch.tensor([[True, True, False], [False, False, False]])
    out = sinkhorn(cost, row_mask=row_mask)
    assert out.value[1].item() == 0 and out.plan[1].abs().sum().item() == 0
    out.value.sum().backward()
    assert torch.isfinite(cost.grad).all()


def test_bf16_close_to_fp32():
    cost = torch.rand(2, 6, 7)
    a = sinkhorn(cost).value
    b = sinkhorn(cost.bfloat16()).value
    torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(epsilon=0.0), "epsilon"),
        (dict(epsilon=-1.0), "epsilon"),
        (dict(n_iters=0), "n_iters"),
        (dict(grad="implicit"), "grad"),
        (dict(row_mask=torch.ones(2, 4, dtype=torch.bool)), "row_mask"),
        (dict(col_mask=torch.ones(3, 5, dtype=torch.bool)), "col_mask"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sinkhorn(torch.rand(2, 3, 5), **kwargs)


def test_two_dimensional_cost_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="batch dimension"):
        sinkhorn(torch.rand(3, 5))


def test_plain_reference_variant_is_doubly_normalised():
    cost = torch.rand(2, 4, 4)
    plan = sinkhorn_plain(cost, epsilon=0.1, n_iters=10)
    torch.testing.assert_close(plan.sum(1), torch.ones(2, 4))
    # on a square problem the paper's plan is n times the uniform-marginal plan (after enough iterations)
    torch.testing.assert_close(sinkhorn_plain(cost, n_iters=200), 4 * sinkhorn(cost, n_iters=200).plan, atol=1e-5, rtol=1e-4)


def test_l1_cost_matches_a_literal_sum():
    x, y = torch.rand(2, 3, 5), torch.rand(2, 4, 5)
    literal = (x[:, :, None, :] - y[:, None, :, :]).abs().sum(-1)
    torch.testing.assert_close(l1_cost(x, y), literal)
    with pytest.raises(ValueError, match="l1_cost"):
        l1_cost(torch.rand(2, 3, 5), torch.rand(2, 3, 4))
