"""DSKD: dual-space knowledge distillation with cross-model attention (Zhang et al., EMNLP 2024).

Source: Songming Zhang, Xue Zhang, Zengkui Sun, Yufeng Chen, Jinan Xu, "Dual-Space Knowledge Distillation
for Large Language Models", arXiv 2406.17328, sections 3.2 (the dual-space framework) and 3.3 (cross-model
attention, CMA, for models with different vocabularies). Re-implemented from the paper as summarised in
``docs/method.md`` and from our reading of it; no code is taken from the authors' repository (it has no
licence). Every place where we had to decide something is listed under *Choices* below.

**The idea.** Each model's output head only reads hidden states of its own space, so distillation between
two spaces needs projectors. Teacher hidden states are projected into the student's space and read by the
student's head; student hidden states are projected into the teacher's space and read by the teacher's head;
the two models' distributions are then compared in *both* output spaces. With different tokenizers the two
answers have different lengths, so CMA aligns them: every student answer token attends over the teacher's
answer tokens (and the transposed scores give the reverse direction).

**Math** (one example; ``h_s`` (Ls, Hs) student and ``h_t`` (Lt, Ht) teacher final hidden states at answer
positions, ``W_s`` (Vs, Hs) and ``W_t`` (Vt, Ht) the output heads, ``z_s`` and ``z_t`` the two models' logits,
``y`` (Ls,) the student's answer labels, ``tau`` the temperature, ``D`` the divergence)::

    n_t     = h_t / std(h_t)                                    teacher keys, scale-normalised  (Lt, Ht)
    Q       = P_q(sg[h_s])                                      student queries                 (Ls, Ht)
    S       = Q n_t^T / sqrt(Ht)                                alignment scores                (Ls, Lt)
    A_t2s   = softmax_rows(S)        A_s2t = softmax_rows(S^T)                  (Ls, Lt), (Lt, Ls)

    h_t2s   = A_t2s P_t2s(n_t)                                  teacher, aligned to student tokens (Ls, Hs)
    h_s2t   = A_s2t P_s2t(h_s)                                  student, aligned to teacher tokens (Lt, Ht)
    z_t2s   = h_t2s W_s^T     (student head, no gradient)       (Ls, Vs)
    z_s2t   = h_s2t W_t^T     (teacher head, frozen)            (Lt, Vt)

    ce_t2s     = mean_i  -log softmax(z_t2s[i])[y_i]                   trains P_q and P_t2s
    kd_student = mean_i  D( softmax(sg[z_t2s[i]] / tau) || softmax(z_s[i] / tau) )      student space
    kd_teacher = mean_j  D( softmax(z_t[j] / tau)        || softmax(z_s2t[j] / tau) )   teacher space

    loss = projector_ce_weight * ce_t2s + student_space_weight * kd_student + teacher_space_weight * kd_teacher

``sg`` is stop-gradient; ``P_q`` (Hs -> Ht), ``P_t2s`` (Ht -> Hs) and ``P_s2t`` (Hs -> Ht) are linear
projectors owned by this loss (a ``torch.nn.Module``): the trainer optimises them with the student, saves them
in every checkpoint and never exports them (:meth:`DistillationLoss.trainable_module`). Means are over the
answer positions of the batch (student positions for the first two terms, teacher positions for the third).

Gradient paths: the student's logits get ``kd_student``; the student's hidden states get ``kd_teacher`` (through
``P_s2t`` and the frozen teacher head), and hence its body and head through the logits/hidden computed in
the step; ``P_q`` gets ``ce_t2s`` and ``kd_teacher`` (through the attention weights); ``P_t2s`` gets ``ce_t2s``;
``P_s2t`` gets ``kd_teacher``. Nothing reaches the teacher.

Divergences ``D(p || q)`` (``divergence``; ``p`` the target, ``q`` the distribution being trained), the family
the paper compares: ``"kl"`` (default) ``sum p log(p / q)``; ``"rkl"`` ``KL(q || p)``; ``"js"``
``(KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2``; ``"skl"`` ``KL(p || skew p + (1 - skew) q)``;
``"srkl"`` ``KL(q || (1 - skew) p + skew q)`` (DistiLLM's skewed forms, ``skew`` = 0.1).

Defaults: ``temperature=2.0``, ``divergence="kl"``, all three weights 1. The paper reports DSKD with several
divergences (its best cross-tokenizer numbers are not all with KL); forward KL is the authors' default objective
(maintainer's answer in songmzhang/DSKD issue #24). The paper's AKL (adaptive KL) is not implemented. The paper mixes
``(1 - a) * CE + a * (ce_t2s + kd_student + kd_teacher)`` with ``a = 0.5``; in ctkd the student's CE lives in
the training step, so the paper's mix is ``loss.ce_weight = loss.kd_weight`` (both 1 by default: the factor 2
against the paper's 0.5 / 0.5 only rescales the loss, which AdamW's update ignores up to its epsilon).
The temperature 2.0 and ``a`` = 0.5 are the settings we recall from the paper's experiments; check them
against the paper when reproducing its numbers. No ``tau**2`` factor (the paper has none).

**Choices** (where ctkd's interface or the paper left something open):

- *Queries and keys from final hidden states, not embeddings.* The paper builds the query from the student's
  input-token and target-token embeddings concatenated, ``P_q([e_s(x); e_s(y)])`` (2 Hs -> 2 Ht), the key from
  the teacher's, ``N([e_t(x); e_t(y)])``, and the value from ``P_t2s(N(h_t) + N(e_t(y)))``. ctkd's losses receive
  the packed final hidden states, the output heads and the *student's* labels only (the teacher's answer ids
  and either input-embedding table are not passed), so the query is ``P_q(h_s)`` and the key ``N(h_t)``: the final
  hidden state at position p is the model's summary of the prefix and its prediction of token p + 1, the
  information the paper's ``[e(x_p); e(y_p)]`` pair carries. Scale ``1 / sqrt(Ht)`` (the paper's
  ``1 / sqrt(2 D)`` for its 2D-wide keys). The embedding form would need the step to pass the teacher's packed
  answer labels and both embedding tables; it is not implemented.
- *Queries do not train the student.* ``P_q`` reads ``sg[h_s]``, as the paper's queries read (frozen) embeddings:
  the alignment is a tool, and ``ce_t2s`` should not bend the student's states to make the teacher's job
  easy. The student's hidden states are trained through ``P_s2t`` (the teacher-space KL) only.
- *Normalisation* ``N(x) = x / std(x)``: the standard deviation (population, ``correction=0``) over all entries
  of the example's real teacher answer states, one scalar per example (floored at :data:`STD_FLOOR`). The paper
  divides by the std of the whole padded batch tensor; one per example keeps an example's loss independent of
  its batch-mates and of padding.
- *Student head frozen in the student-space projection* (``t2s_head_grad=False``): ``ce_t2s`` trains the
  projectors, not the student's head (the paper trains "the projector" with this CE). ``True`` lets it reach
  the head too.
- ``t2s_correct_only=False``: ``kd_student`` over every student answer position. ``True`` keeps only positions
  where ``argmax z_t2s`` is the label (the others count as 0 in the mean): a filter we recall from the
  authors' CMA variant, not from the paper's equations, so it is off by default.
- *Examples with an empty answer on either side* take no part (no tokens to attend to); ``num_tokens`` counts
  the student answer positions that did.
- *Teacher-side logits:* the projected ``z_s2t`` is the bare head product: a teacher whose config soft-caps its
  final logits (Gemma 2) is compared uncapped on this side.

**Cost.** Per student answer row one (Vs)-wide head product and softmax (``z_t2s``) plus the student's own
row; per teacher answer row one (Vt)-wide head product and softmax (``z_s2t``) plus the teacher's row: the two
full-vocabulary softmaxes are inherent to the method (``2 (Ns Hs Vs + Nt Ht Vt)`` multiply-adds forward, about
three times that with the backward and its recomputation). Memory: the rows are processed in chunks of about
``chunk_elements`` logits by :class:`_ProjectedRows`, which keeps nothing of size (N, V) between forward and
backward and recomputes each chunk in the backward, writing the logits' gradient rows in place; the attention
is (B, Ls, Lt). The working set is a few (chunk, V) float32 tensors. Measured on the CPU (2 cores, float32,
SmolLM2-135M / Gemma-3-270M sizes: Hs 576, Vs 49152, Ht 640, Vt 262144, B = 2, 256 answer tokens a side):
forward 20 s, backward 33 s, peak memory growth 0.67 GB with the default chunks against 3.1 GB with every row
in one chunk (one (N, Vt) float32 tensor is 0.5 GB).

Components: ``"ce_t2s"``, ``"kd_student"``, ``"kd_teacher"`` (the three terms, unweighted) and ``"acc_t2s"``, the
share of student answer positions where the projected teacher's argmax is the label (how well the alignment
and projectors have been learnt).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ctkd.align import answer_index
from ctkd.align.positional import AnswerIndex
from ctkd.losses.base import DistillationLoss, check_choice, check_finite, check_positive, zero_loss
from ctkd.types import IGNORE_INDEX, LossOutput

DIVERGENCES: tuple[str, ...] = ("kl", "rkl", "js", "skl", "srkl")

PAPER_TEMPERATURE = 2.0
"""KD temperature of the paper's experiments (as we recall them; see the module docstring)."""

PAPER_SKEW = 0.1
"""Mixing coefficient of the skewed divergences (DistiLLM's default, used by the paper's SKL / SRKL)."""

STD_FLOOR = 1e-6
"""Lower bound of the teacher states' standard deviation, so that constant states do not divide by zero."""

CHUNK_ELEMENTS = 1 << 24
"""Logits computed at once by the projected-row passes (16M floats = 64 MB in float32): with a 262k vocabulary
that is 64 rows, enough for a head product that runs at matrix speed, small against the model's activations."""

HIDDEN_SIZE_PARAMS: dict[str, str] = {"student_hidden_size": "student", "teacher_hidden_size": "teacher"}
"""Constructor arguments that come from the loaded models (``ctkd distill`` fills them from their configs)."""


@dataclass
class CrossModelAttention:
    """The soft token alignment between the student and teacher answers of a batch (packed layout).

    Attributes:
        t2s: (B, Ls, Lt) for each student answer token, weights over the teacher's answer tokens (each real
            row sums to 1 over the real teacher tokens; used to align teacher states to student tokens).
        s2t: (B, Lt, Ls) for each teacher answer token, weights over the student's answer tokens.
        student_valid: (B, Ls) bool, real student answer tokens.
        teacher_valid: (B, Lt) bool, real teacher answer tokens.
    """

    t2s: Tensor
    s2t: Tensor
    student_valid: Tensor
    teacher_valid: Tensor


# ------------------------------------------------------------------------------------------------------------
# Divergences between two (n, V) log-distributions, one value per row
# ------------------------------------------------------------------------------------------------------------
def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """``sum_v p_v (log p_v - log q_v)`` per row."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def _log_mix(log_p: Tensor, log_q: Tensor, weight_p: float) -> Tensor:
    """``log(weight_p p + (1 - weight_p) q)`` in log space."""
    return torch.logaddexp(log_p + math.log(weight_p), log_q + math.log1p(-weight_p))


def divergence_rows(name: str, log_target: Tensor, log_model: Tensor, skew: float = PAPER_SKEW) -> Tensor:
    """``D(target || model)`` per row for the divergences of :data:`DIVERGENCES` (module docstring).

    Args:
        name: one of :data:`DIVERGENCES`.
        log_target, log_model: (n, V) log-probabilities.
        skew: mixing coefficient of ``"skl"`` and ``"srkl"``.

    Returns:
        (n,) float values, >= 0 (up to rounding).
    """
    if name == "kl":
        return _kl(log_target, log_model)
    if name == "rkl":
        return _kl(log_model, log_target)
    if name == "js":
        mix = _log_mix(log_target, log_model, 0.5)
        return 0.5 * (_kl(log_target, mix) + _kl(log_model, mix))
    if name == "skl":
        return _kl(log_target, _log_mix(log_target, log_model, skew))
    if name == "srkl":
        return _kl(log_model, _log_mix(log_target, log_model, 1.0 - skew))
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {name!r}")


def project_logits(hidden: Tensor, head: Tensor) -> Tensor:
    """(n, V) float32 logits of hidden rows (n, H) read by an output head (V, H); the product runs in the head's
    dtype (bf16 heads stay bf16 in memory)."""
    return (hidden.to(head.dtype) @ head.t()).float()


# ------------------------------------------------------------------------------------------------------------
# Chunked per-row computation with recomputation in the backward
# ------------------------------------------------------------------------------------------------------------
RowFn = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, ...]]


@dataclass(frozen=True)
class _RowSpec:
    """What :class:`_ProjectedRows` computes: ``fn(logit_rows, hidden_rows, head, label_rows)`` -> per-row
    outputs, of which the indices in ``constant`` carry no gradient; ``chunk`` rows at a time."""

    fn: RowFn
    num_outputs: int
    constant: tuple[int, ...]
    chunk: int


class _ProjectedRows(torch.autograd.Function):
    """Per-row values of ``fn`` over answer rows ``(b, p)`` of a (B, T, V) logits tensor, chunk by chunk.

    Forward runs ``fn`` on ``chunk`` rows at a time without building a graph, so nothing of size (N, V) is kept.
    Backward recomputes each chunk with autograd enabled and asks for the gradients of that chunk's inputs only:
    the logits' rows are written in place into one (B, T, V) gradient (not one full-size tensor per chunk, as
    indexing under plain checkpointing would give), the hidden rows into one (N, H) gradient, and the head's
    gradient is summed over chunks in float32. Autocast is off inside: the forward and its recomputation
    run the same explicit dtypes (:func:`project_logits`).
    """

    @staticmethod
    def forward(ctx, spec: _RowSpec, logits: Tensor, b: Tensor, p: Tensor, hidden: Tensor, head: Tensor,
                labels: Tensor):  # noqa: D401
        n = int(b.numel())
        outs = [torch.empty(n, dtype=torch.float32, device=hidden.device) for _ in range(spec.num_outputs)]
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, n, spec.chunk):
                stop = min(n, start + spec.chunk)
                rows = logits[b[start:stop], p[start:stop]].float()
                values = spec.fn(rows, hidden[start:stop], head, labels[start:stop])
                for out, value in zip(outs, values):
                    out[start:stop] = value
        ctx.save_for_backward(logits, b, p, hidden, head, labels)
        ctx.spec = spec
        ctx.mark_non_differentiable(*(outs[i] for i in spec.constant))
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        logits, b, p, hidden, head, labels = ctx.saved_tensors
        spec: _RowSpec = ctx.spec
        need_logits, need_hidden, need_head = ctx.needs_input_grad[1], ctx.needs_input_grad[4], ctx.needs_input_grad[5]
        grad_logits = torch.zeros_like(logits) if need_logits else None
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_head = torch.zeros(head.shape, dtype=torch.float32, device=head.device) if need_head else None
        used = [i for i, g in enumerate(grads) if g is not None and i not in spec.constant]
        n = int(b.numel())
        for start in range(0, n if used else 0, spec.chunk):
            stop = min(n, start + spec.chunk)
            bc, pc = b[start:stop], p[start:stop]
            with torch.enable_grad(), torch.autocast(hidden.device.type, enabled=False):
                rows = logits[bc, pc].detach().float().requires_grad_(need_logits)
                h = hidden[start:stop].detach().requires_grad_(need_hidden)
                w = head.detach().requires_grad_(need_head)
                values = spec.fn(rows, h, w, labels[start:stop])
                outs = [values[i] for i in used if values[i].requires_grad]
                if not outs:
                    continue
                upstream = [grads[i][start:stop].to(values[i].dtype) for i in used if values[i].requires_grad]
                wanted = [x for x, need in ((rows, need_logits), (h, need_hidden), (w, need_head)) if need]
                got = list(torch.autograd.grad(outs, wanted, upstream, allow_unused=True))
            if need_logits:
                g = got.pop(0)
                if g is not None:
                    grad_logits[bc, pc] = g.to(grad_logits.dtype)
            if need_hidden:
                g = got.pop(0)
                if g is not None:
                    grad_hidden[start:stop] = g.to(grad_hidden.dtype)
            if need_head:
                g = got.pop(0)
                if g is not None:
                    grad_head += g.float()
        if grad_head is not None:
            grad_head = grad_head.to(head.dtype)
        return None, grad_logits, None, None, grad_hidden, grad_head, None


# ------------------------------------------------------------------------------------------------------------
# The loss
# ------------------------------------------------------------------------------------------------------------
def _check_size(name: str, value: Any) -> int:
    if value is None:
        raise ValueError(
            f"{name} is None: DSKD builds its projectors at construction and needs the {name.split('_')[0]} model's "
            f"hidden size (its config.hidden_size); `ctkd distill` fills it from the loaded model, otherwise pass "
            f"{name}=..."
        )
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{name} must be an int >= 1 (the model's hidden size), got {value!r}")
    return value


def _check_rows_finite(name: str, tensor: Tensor, b: Tensor, p: Tensor, chunk: int) -> None:
    """ValueError naming ``name`` if any entry of the rows ``tensor[b, p]`` is NaN or infinite (chunked, no grad)."""
    flags = []
    with torch.no_grad():
        for start in range(0, int(b.numel()), chunk):
            rows = tensor[b[start:start + chunk], p[start:start + chunk]].float()
            ok = torch.isfinite(rows.amax(dim=-1)) & torch.isfinite(rows.amin(dim=-1))
            flags.append(torch.where(ok, 0.0, float("nan")))
    if flags:
        check_finite(name, torch.cat(flags))


class DSKD(DistillationLoss, torch.nn.Module):
    """Dual-space KD with cross-model attention (module docstring: math, choices, cost).

    Args:
        student_hidden_size: the student's hidden size Hs (its ``config.hidden_size``).
        teacher_hidden_size: the teacher's hidden size Ht.
        temperature: temperature of both distributions in both KD terms (not of ``ce_t2s``).
        divergence: ``"kl"``, ``"rkl"``, ``"js"``, ``"skl"`` or ``"srkl"``, ``D(target || trained)`` in both spaces.
        skew: mixing coefficient of ``"skl"`` / ``"srkl"``.
        projector_ce_weight: weight of ``ce_t2s``, the projected teacher's cross-entropy on the labels.
        student_space_weight: weight of ``kd_student``, the KD in the student's output space.
        teacher_space_weight: weight of ``kd_teacher``, the KD in the teacher's output space.
        t2s_correct_only: restrict ``kd_student`` to positions where the projected teacher predicts the label.
        t2s_head_grad: let ``ce_t2s`` train the student's head too (default: the projectors only).
        projector_bias: give the three linear projectors a bias.
        init_seed: seed of the projectors' initialisation (``torch.nn.Linear``'s uniform bounds), so that a run
            does not depend on the global random state when the loss is built.
        chunk_elements: logits computed at once by the projected-row passes (memory / speed trade-off).

    Call inputs (``needs``): ``student_hidden`` (B, Ts, Hs) and ``teacher_hidden`` (B, Tt, Ht), final hidden states
    laid out like the logits; ``student_head`` (Vs, Hs) and ``teacher_head`` (Vt, Ht), the output-head rows of each
    real vocabulary; ``labels`` (B, Ts), the student's answer ids (the paper trains the projectors on them).
    """

    name = "dskd"
    needs: ClassVar[frozenset[str]] = frozenset(
        {"student_hidden", "teacher_hidden", "student_head", "teacher_head", "labels"})
    model_sized: ClassVar[dict[str, str]] = HIDDEN_SIZE_PARAMS

    def __init__(self, student_hidden_size: int | None = None, teacher_hidden_size: int | None = None, *,
                 temperature: float = PAPER_TEMPERATURE, divergence: str = "kl", skew: float = PAPER_SKEW,
                 projector_ce_weight: float = 1.0, student_space_weight: float = 1.0,
                 teacher_space_weight: float = 1.0, t2s_correct_only: bool = False, t2s_head_grad: bool = False,
                 projector_bias: bool = True, init_seed: int = 0, chunk_elements: int = CHUNK_ELEMENTS) -> None:
        torch.nn.Module.__init__(self)
        hs = _check_size("student_hidden_size", student_hidden_size)
        ht = _check_size("teacher_hidden_size", teacher_hidden_size)
        check_positive("temperature", temperature)
        check_choice("divergence", divergence, DIVERGENCES)
        if not (isinstance(skew, (int, float)) and 0 < skew < 1):
            raise ValueError(f"skew must be a number in (0, 1), got {skew!r}")
        for key, value in (("projector_ce_weight", projector_ce_weight),
                           ("student_space_weight", student_space_weight),
                           ("teacher_space_weight", teacher_space_weight)):
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
                    and math.isfinite(value)):
                raise ValueError(f"{key} must be a finite number >= 0, got {value!r}")
        if projector_ce_weight == student_space_weight == teacher_space_weight == 0:
            raise ValueError("projector_ce_weight, student_space_weight and teacher_space_weight are all 0: "
                             "the loss would train nothing")
        for key, value in (("t2s_correct_only", t2s_correct_only), ("t2s_head_grad", t2s_head_grad),
                           ("projector_bias", projector_bias)):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false, got {value!r}")
        if not (isinstance(chunk_elements, int) and chunk_elements >= 1):
            raise ValueError(f"chunk_elements must be an int >= 1, got {chunk_elements!r}")
        self.student_hidden_size = hs
        self.teacher_hidden_size = ht
        self.temperature = float(temperature)
        self.divergence = divergence
        self.skew = float(skew)
        self.projector_ce_weight = float(projector_ce_weight)
        self.student_space_weight = float(student_space_weight)
        self.teacher_space_weight = float(teacher_space_weight)
        self.t2s_correct_only = t2s_correct_only
        self.t2s_head_grad = t2s_head_grad
        self.projector_bias = projector_bias
        self.init_seed = int(init_seed)
        self.chunk_elements = chunk_elements
        # query: student -> teacher width (keys are teacher states); t2s: teacher -> student; s2t: student -> teacher
        self.projectors = torch.nn.ModuleDict({
            "query": torch.nn.Linear(hs, ht, bias=projector_bias),
            "t2s": torch.nn.Linear(ht, hs, bias=projector_bias),
            "s2t": torch.nn.Linear(hs, ht, bias=projector_bias),
        })
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``torch.nn.Linear``'s initialisation (uniform in ``+-1/sqrt(fan_in)``), drawn from ``init_seed``."""
        gen = torch.Generator().manual_seed(self.init_seed)
        with torch.no_grad():
            for name in ("query", "t2s", "s2t"):
                layer = self.projectors[name]
                bound = 1.0 / math.sqrt(layer.in_features)
                for param in layer.parameters():
                    param.copy_(torch.empty(param.shape).uniform_(-bound, bound, generator=gen))

    def config(self) -> dict[str, Any]:
        out = super().config()
        out.pop("training", None)  # torch.nn.Module state, not a hyperparameter
        return out

    # --------------------------------------------------------------------------------------------------------
    # Inputs
    # --------------------------------------------------------------------------------------------------------
    def _check_side(self, side: str, hidden: Any, head: Any, logits: Tensor, size: int) -> None:
        hname, wname = f"{side}_hidden", f"{side}_head"
        if not isinstance(hidden, Tensor) or hidden.dim() != 3 or not hidden.is_floating_point():
            got = tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
            raise ValueError(f"{hname} must be a float tensor (B, T, H) laid out like {side}_logits, got {got}")
        if tuple(hidden.shape[:2]) != tuple(logits.shape[:2]):
            raise ValueError(
                f"{hname} has shape {tuple(hidden.shape)} but {side}_logits is {tuple(logits.shape)}: the hidden states "
                f"must be (B, T, H) with (B, T) = {tuple(logits.shape[:2])}, one per logits row"
            )
        if hidden.shape[2] != size:
            raise ValueError(
                f"{hname} has hidden size {hidden.shape[2]} but the DSKD projectors were built for "
                f"{side}_hidden_size={size}; build the loss with the {side} model's config.hidden_size"
            )
        if not isinstance(head, Tensor) or head.dim() != 2 or not head.is_floating_point():
            got = tuple(head.shape) if isinstance(head, Tensor) else type(head).__name__
            raise ValueError(f"{wname} must be a float tensor (V, H), the {side}'s output-head rows, got {got}")
        if tuple(head.shape) != (logits.shape[2], size):
            raise ValueError(
                f"{wname} has shape {tuple(head.shape)} but must be (V, H) = ({logits.shape[2]}, {size}): one row per "
                f"{side}_logits column ({side} vocabulary) of the {side} model's hidden size"
            )

    def _labels(self, labels: Any, mask: Tensor, b: Tensor, p: Tensor, vocab: int) -> Tensor:
        if not isinstance(labels, Tensor) or tuple(labels.shape) != tuple(mask.shape) or labels.is_floating_point():
            got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"labels must be a (B, Ts) = {tuple(mask.shape)} integer tensor like student_mask, "
                             f"got {got}")
        target = labels.to(device=b.device, dtype=torch.long)[b, p]
        bad = (target < 0) | (target >= vocab)
        if bool(bad.any()):
            first = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"labels hold {int(target[first])} at answer position ({int(b[first])}, {int(p[first])}) but must be a "
                f"token id in [0, {vocab}) wherever student_mask is True (IGNORE_INDEX={IGNORE_INDEX} only elsewhere)"
            )
        return target

    def _chunk(self, vocab: int) -> int:
        return max(1, self.chunk_elements // max(1, vocab))

    # --------------------------------------------------------------------------------------------------------
    # Cross-model attention
    # --------------------------------------------------------------------------------------------------------
    @staticmethod
    def _rows(index: AnswerIndex, seq_len: int) -> tuple[Tensor, Tensor]:
        return index.seq, index.flat - index.seq * seq_len

    def _pack_states(self, student_hidden: Tensor, teacher_hidden: Tensor, s_idx: AnswerIndex, t_idx: AnswerIndex
                     ) -> tuple[Tensor, Tensor]:
        """(B, Ls, Hs) student states and (B, Lt, Ht) normalised teacher states at the answer tokens (zeros on
        padding)."""
        sb, sp = self._rows(s_idx, student_hidden.shape[1])
        tb, tp = self._rows(t_idx, teacher_hidden.shape[1])
        hs = s_idx.pack(student_hidden[sb, sp].float())
        ht = t_idx.pack(teacher_hidden.detach()[tb, tp].float())
        valid = t_idx.valid.unsqueeze(-1).to(ht.dtype)
        count = (t_idx.lengths.to(ht.dtype) * ht.shape[-1]).clamp_min(1)
        mean = ht.sum(dim=(1, 2)) / count
        var = (((ht - mean.view(-1, 1, 1)) ** 2) * valid).sum(dim=(1, 2)) / count
        std = var.sqrt().clamp_min(STD_FLOOR)
        return hs, ht / std.view(-1, 1, 1)

    def _attention(self, hs: Tensor, ht_norm: Tensor, s_valid: Tensor, t_valid: Tensor) -> tuple[Tensor, Tensor]:
        query = self.projectors["query"](hs.detach())
        scores = query @ ht_norm.transpose(1, 2) / math.sqrt(ht_norm.shape[-1])  # (B, Ls, Lt)
        # a finite floor, not -inf: rows with no real key stay finite (and are dropped later) instead of NaN
        floor = torch.finfo(scores.dtype).min
        t2s = torch.softmax(scores.masked_fill(~t_valid.unsqueeze(1), floor), dim=-1)
        s2t = torch.softmax(scores.transpose(1, 2).masked_fill(~s_valid.unsqueeze(1), floor), dim=-1)
        return t2s, s2t

    def attention(self, student_hidden: Tensor, teacher_hidden: Tensor, student_mask: Tensor, teacher_mask: Tensor
                  ) -> CrossModelAttention:
        """The cross-model attention of a batch (for inspection and tests; differentiable w.r.t. ``P_q``).

        Args:
            student_hidden: (B, Ts, Hs); teacher_hidden: (B, Tt, Ht); student_mask: (B, Ts) and teacher_mask:
                (B, Tt) answer masks.
        """
        s_idx, t_idx = answer_index(student_mask), answer_index(teacher_mask)
        hs, ht_norm = self._pack_states(student_hidden, teacher_hidden, s_idx, t_idx)
        t2s, s2t = self._attention(hs, ht_norm, s_idx.valid, t_idx.valid)
        return CrossModelAttention(t2s=t2s, s2t=s2t, student_valid=s_idx.valid, teacher_valid=t_idx.valid)

    # --------------------------------------------------------------------------------------------------------
    # Per-row terms in each space
    # --------------------------------------------------------------------------------------------------------
    def _student_space(self, student_rows: Tensor, h_t2s: Tensor, head: Tensor, labels: Tensor
                       ) -> tuple[Tensor, Tensor, Tensor]:
        """(ce_t2s, kd_student, correct) per student row."""
        z = project_logits(h_t2s, head)
        ce = -torch.log_softmax(z, dim=-1).gather(1, labels.unsqueeze(1)).squeeze(1)
        correct = (z.detach().argmax(dim=-1) == labels).float()
        log_target = torch.log_softmax(z.detach() / self.temperature, dim=-1)
        log_model = torch.log_softmax(student_rows / self.temperature, dim=-1)
        return ce, divergence_rows(self.divergence, log_target, log_model, self.skew), correct

    def _teacher_space(self, teacher_rows: Tensor, h_s2t: Tensor, head: Tensor, _labels: Tensor) -> tuple[Tensor]:
        """(kd_teacher,) per teacher row."""
        log_target = torch.log_softmax(teacher_rows / self.temperature, dim=-1)
        log_model = torch.log_softmax(project_logits(h_s2t, head) / self.temperature, dim=-1)
        return (divergence_rows(self.divergence, log_target, log_model, self.skew),)

    def _touch(self, loss: Tensor) -> Tensor:
        """``loss`` plus 0 times every projector parameter: each one then has a gradient (zero where unused), so
        the trainer's cross-process gradient averaging sees the same tensors on every process."""
        return loss + sum(param.view(-1)[0] for param in self.parameters()) * 0.0

    def _empty(self, student_logits: Tensor) -> LossOutput:
        zero = zero_loss(student_logits)
        loss = self._touch(zero)
        return LossOutput(loss=loss, components={c: zero.detach() for c in ("ce_t2s", "kd_student", "kd_teacher",
                                                                           "acc_t2s")}, num_tokens=0)

    # --------------------------------------------------------------------------------------------------------
    def compute(self, student_logits: Tensor, teacher_logits: Any, student_mask: Tensor, teacher_mask: Tensor, *,
                student_hidden: Tensor, teacher_hidden: Tensor, student_head: Tensor, teacher_head: Tensor,
                labels: Tensor, **_: Any) -> LossOutput:
        if not isinstance(teacher_logits, Tensor):
            raise ValueError(
                f"loss 'dskd' needs the teacher's logits (B, Tt, Vt), got {type(teacher_logits).__name__}: a teacher "
                "cache holds no full distributions, hidden states or head; use a live teacher"
            )
        self._check_side("student", student_hidden, student_head, student_logits, self.student_hidden_size)
        self._check_side("teacher", teacher_hidden, teacher_head, teacher_logits, self.teacher_hidden_size)
        device = student_logits.device
        s_idx, t_idx = answer_index(student_mask), answer_index(teacher_mask)
        vs, vt = student_logits.shape[-1], teacher_logits.shape[-1]
        sb, sp = self._rows(s_idx, student_logits.shape[1])
        tb, tp = self._rows(t_idx, teacher_logits.shape[1])
        target = self._labels(labels, student_mask, sb, sp, vs)
        _check_rows_finite("student_logits", student_logits, sb, sp, self._chunk(vs))
        _check_rows_finite("teacher_logits", teacher_logits, tb, tp, self._chunk(vt))
        _check_rows_finite("student_hidden", student_hidden, sb, sp, self._chunk(self.student_hidden_size))
        _check_rows_finite("teacher_hidden", teacher_hidden, tb, tp, self._chunk(self.teacher_hidden_size))

        present = (s_idx.lengths > 0) & (t_idx.lengths > 0)  # examples with answer tokens on both sides
        s_keep, t_keep = present[s_idx.seq], present[t_idx.seq]
        num_s, num_t = int(s_keep.sum()), int(t_keep.sum())
        if num_s == 0:
            return self._empty(student_logits)

        hs, ht_norm = self._pack_states(student_hidden, teacher_hidden, s_idx, t_idx)
        t2s_weights, s2t_weights = self._attention(hs, ht_norm, s_idx.valid, t_idx.valid)
        zero = zero_loss(student_logits)
        components: dict[str, Tensor] = {}

        ce_t2s = kd_student = acc = zero
        if self.projector_ce_weight > 0 or self.student_space_weight > 0:
            values = t2s_weights @ self.projectors["t2s"](ht_norm)  # (B, Ls, Hs) teacher aligned to student tokens
            h_t2s = s_idx.unpack(values)[s_keep]
            head = student_head if self.t2s_head_grad else student_head.detach()
            spec = _RowSpec(self._student_space, 3, (2,), self._chunk(vs))
            ce_rows, kd_rows, correct = _ProjectedRows.apply(spec, student_logits, sb[s_keep], sp[s_keep], h_t2s,
                                                             head, target[s_keep])
            ce_t2s = ce_rows.sum() / num_s
            kd_student = ((kd_rows * correct) if self.t2s_correct_only else kd_rows).sum() / num_s
            acc = correct.sum() / num_s
        kd_teacher = zero
        if self.teacher_space_weight > 0:
            values = s2t_weights @ self.projectors["s2t"](hs)  # (B, Lt, Ht) student aligned to teacher tokens
            h_s2t = t_idx.unpack(values)[t_keep]
            spec = _RowSpec(self._teacher_space, 1, (), self._chunk(vt))
            (kd_rows,) = _ProjectedRows.apply(spec, teacher_logits.detach(), tb[t_keep], tp[t_keep], h_s2t,
                                              teacher_head.detach(), torch.empty(num_t, dtype=torch.long,
                                                                                 device=device))
            kd_teacher = kd_rows.sum() / max(1, num_t)
        loss = (self.projector_ce_weight * ce_t2s + self.student_space_weight * kd_student
                + self.teacher_space_weight * kd_teacher)
        components = {"ce_t2s": ce_t2s.detach(), "kd_student": kd_student.detach(),
                      "kd_teacher": kd_teacher.detach(), "acc_t2s": acc.detach()}
        return LossOutput(loss=self._touch(loss), components=components, num_tokens=num_s)
