"""DINO's cross-entropy by blocks of views, with its gradient written out.

lightly's ``DINOLoss`` stacks every student view, takes their log-softmax over the 65,536
prototypes and contracts it with the teacher's softmax over all (teacher, student) view pairs
but the matching ones; autograd then keeps the stacked copies and walks back through the
stack, the division by the temperature and the log-softmax. With ``P_t`` the teacher's
probabilities and ``W_s = sum_{t != s} P_t``, the same sum is one term per student view,

    sum_s sum_{t != s} -<P_t, log_softmax(z_s / T)> = sum_s -<W_s, log_softmax(z_s / T)>,

whose gradient is ``(|W_s| softmax(z_s / T) - W_s) / T`` per row (``|W_s|`` the row's mass,
the number of teacher views paired with ``s`` up to rounding). ``_PairedLogLikelihood``
computes ``<W_s, log_softmax(z_s / T)>`` for a block of views (a head's output over stacked
views) with the fused log-softmax kernel, and its gradient from the saved log-probabilities in
place (two passes: exp, then one multiply-add written in the input's dtype): no stacked or
split copies of the views and less than half the memory traffic of the original (the loss's
whole cost, at ``batch x 65,536`` per view). The blocks' sum takes its minus sign with the
mean's division, and the centre moves by one ``lerp_``: on a GPU every operation is a launch
that the host pays for. The sums run in float32 outside autocast (float64 stays float64); the
centre is lightly's (its mean, all-reduced across processes). ``FusedDINOLoss.compile()``
(``pretrain --compile``) compiles everything but the centre's update, whose passes then fuse.
Upstream change that would let this go: lightly's ``DINOLoss`` summing one weighted term per
student view (no stacked copies) with a fused backward.
"""

from __future__ import annotations

import torch
from lightly.loss import DINOLoss
from lightly.models.modules.center import center_momentum
from torch.autograd.function import once_differentiable
from torch.nn import functional as F


class _PairedLogLikelihood(torch.autograd.Function):
    """``sum_k <weights_k, log_softmax(logits_k / temperature)>`` over a block of ``K`` views
    ``(K, B, D)`` (minus their cross-entropy); ``weights`` is ``(K, B, D)`` or one ``(B, D)``
    for every view."""

    @staticmethod
    def forward(ctx, logits, weights, temperature: float, dtype: torch.dtype):
        # a copy in ``dtype`` scaled in place (``to`` returns the input itself when it is
        # already in ``dtype``; the division must not write into the caller's tensor)
        scaled = logits.to(dtype, copy=True).div_(temperature)
        log_p = F.log_softmax(scaled, dim=-1)
        del scaled
        ctx.save_for_backward(log_p, weights)
        ctx.temperature, ctx.input_dtype = temperature, logits.dtype
        if weights.dim() == log_p.dim():
            return weights.flatten().dot(log_p.flatten())
        return (log_p.view(log_p.shape[0], -1) @ weights.flatten()).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        log_p, weights = ctx.saved_tensors
        # (W - |W| p) g / T, from W g / T and its row sums |W| g / T. Two passes over the
        # logits: the probabilities in place of the saved log-probabilities (used once; a
        # second backward is refused by autograd's version check), then one multiply-add
        # written straight in the input's dtype, with no float32 gradient
        probabilities = log_p.exp_()
        grad = torch.empty_like(probabilities, dtype=ctx.input_dtype)
        scaled = weights * (grad_output / ctx.temperature)
        mass = scaled.sum(-1, keepdim=True)
        torch.addcmul(scaled, probabilities, mass, value=-1, out=grad)
        return grad, None, None, None


def _blocks(views: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    """Views as ``(K, B, D)`` blocks: a ``(B, D)`` tensor is one view, ``(K, B, D)`` is K."""
    if isinstance(views, torch.Tensor):
        views = [views]
    return [view.unsqueeze(0) if view.dim() == 2 else view for view in views]


def _mean_cross_entropy(
    teachers: list[torch.Tensor],
    students: list[torch.Tensor],
    center: torch.Tensor,
    temperature: float,
    student_temp: float,
    n_terms: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DINO's mean cross-entropy over ``(K, B, D)`` blocks of teacher and student views
    (numbered in order, view ``i`` of each side matching; ``n_terms`` pairs of views), and
    the teacher's output in the sums' dtype, for the centre's update."""
    n_teacher = sum(block.shape[0] for block in teachers)
    dtype = torch.promote_types(teachers[0].dtype, torch.float32)
    teacher = torch.cat(teachers).to(dtype) if len(teachers) > 1 else teachers[0].to(dtype)
    probabilities = F.softmax((teacher - center) / temperature, dim=-1)
    paired_with_all = probabilities.sum(0)
    terms, first = [], 0
    for block in students:
        last = first + block.shape[0]
        weights = paired_with_all  # a view without a matching teacher view
        if first < n_teacher:
            weights = paired_with_all - probabilities[first:last]
            if last > n_teacher:
                rest = paired_with_all.expand(last - n_teacher, *paired_with_all.shape)
                weights = torch.cat([weights, rest])
        terms.append(_PairedLogLikelihood.apply(block, weights, student_temp, dtype))
        first = last
    # the mean cross-entropy: minus the blocks' sum, over the terms and rows
    return sum(terms[1:], terms[0]) / -(n_terms * teacher.shape[1]), teacher


class FusedDINOLoss(DINOLoss):
    """lightly's ``DINOLoss`` (same arguments, buffers and value) computed by blocks of views
    with a hand-written gradient.

    Besides lightly's lists of ``(B, D)`` views, teacher and student outputs may be given as
    ``(K, B, D)`` blocks of ``K`` views (a head's output over stacked views, viewed as
    ``(K, B, D)``), numbered in order: the whole block's gradient is then one tensor, with no
    copy to split or stack.
    """

    _compiled = None  # ``_mean_cross_entropy`` compiled, once ``compile`` is called

    # torch.compile (seen with 2.14) gets this loss's gradients wrong when it traces it whole:
    # the backward reads the centre that the same graph moves in place. So a compiled caller
    # runs it as written, and ``compile`` compiles the part that leaves the centre alone
    @torch.compiler.disable
    def forward(
        self,
        teacher_out: torch.Tensor | list[torch.Tensor],
        student_out: torch.Tensor | list[torch.Tensor],
        teacher_temp: float | None = None,
        epoch: int | None = None,
    ) -> torch.Tensor:
        teachers, students = _blocks(teacher_out), _blocks(student_out)
        n_teacher = sum(block.shape[0] for block in teachers)
        n_student = sum(block.shape[0] for block in students)
        n_terms = n_teacher * n_student - min(n_teacher, n_student)
        if n_terms == 0 or (teacher_temp is None and epoch is not None):
            # lightly's error for too few views, or its per-epoch temperature schedule
            teacher_list = [view for block in teachers for view in block]
            student_list = [view for block in students for view in block]
            return super().forward(teacher_list, student_list, teacher_temp, epoch)
        temperature = self.teacher_temp if teacher_temp is None else float(teacher_temp)
        # a compiled graph may keep its inputs for the backward: not the centre moved below
        center = self.center if self._compiled is None else self.center.clone()
        with torch.autocast(teachers[0].device.type, enabled=False):
            loss, teacher = (self._compiled or _mean_cross_entropy)(
                teachers, students, center, temperature, self.student_temp, n_terms
            )
        self.update_center(teacher)
        return loss

    def compile(self, *args, **kwargs) -> None:
        """``torch.compile`` the loss but the centre's update (the arguments are
        ``torch.compile``'s): its passes over the logits fuse, and the values and gradients
        stay the written-out ones up to float rounding. The teacher temperature may change
        every step: the second value compiles once more, for any temperature."""
        self._compiled = torch.compile(_mean_cross_entropy, *args, **kwargs)

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """lightly's moving average of the teacher's output, ``center * m + batch * (1 - m)``,
        as one ``lerp_`` in place (lightly's batch centre: the mean, averaged over
        processes). A bfloat16 centre (``bf16-true`` weights) meets a float32 batch centre
        once: lightly's update then makes it float32, as it did before."""
        batch_center = self._center_fn(x=teacher_out, dim=(0, 1))
        if batch_center.dtype == self.center.dtype:
            self.center.lerp_(batch_center, 1 - self.center_momentum)
        else:
            self.center.data = center_momentum(self.center, batch_center, self.center_momentum)
