"""DINO's cross-entropy without the student's log-softmax tensors.

lightly's ``DINOLoss`` stacks every student view, takes their log-softmax over the 65,536
prototypes and contracts it with the teacher's softmax over all (teacher, student) view pairs
but the matching ones. With ``P_t`` the teacher's probabilities, ``z_s`` a student view's
logits over the temperature and ``W_s = sum_{t != s} P_t``, the same sum is

    sum_s sum_{t != s} -<P_t, log_softmax(z_s)> = sum_s sum_b ( |W_sb| lse(z_sb) - <W_sb, z_sb> ),

where ``|W_sb|`` is the row's mass (the number of teacher views paired with ``s``, up to
rounding) and ``lse`` the row's log-sum-exp. Forward this is a log-sum-exp and one dot
product per view, backward ``(|W| softmax(z) - W) / T``: no stacked copy of the student
views, no log-softmax tensor kept for backward, about half the memory traffic of the
original over views of ``batch x 65,536`` (the loss's whole cost). The sums run in float32
outside autocast (float64 stays float64); the centre and its update are lightly's.
"""

from __future__ import annotations

import torch
from lightly.loss import DINOLoss
from torch.nn import functional as F


class FusedDINOLoss(DINOLoss):
    """lightly's ``DINOLoss`` (same arguments, buffers and value) computed view by view as
    log-sum-exp minus a dot product."""

    def forward(
        self,
        teacher_out: list[torch.Tensor],
        student_out: list[torch.Tensor],
        teacher_temp: float | None = None,
        epoch: int | None = None,
    ) -> torch.Tensor:
        if teacher_temp is None and epoch is not None:  # lightly's per-epoch schedule
            return super().forward(teacher_out, student_out, epoch=epoch)
        temperature = self.teacher_temp if teacher_temp is None else float(teacher_temp)
        n_teacher, n_student = len(teacher_out), len(student_out)
        n_terms = n_teacher * n_student - min(n_teacher, n_student)
        if n_terms == 0:
            return super().forward(teacher_out, student_out, teacher_temp=teacher_temp)
        dtype = torch.promote_types(teacher_out[0].dtype, torch.float32)
        with torch.autocast(teacher_out[0].device.type, enabled=False):
            teacher = torch.stack(teacher_out).to(dtype)
            probabilities = F.softmax((teacher - self.center) / temperature, dim=-1)
            paired_with_all = probabilities.sum(0)
            loss = teacher.new_zeros(())
            for s, view in enumerate(student_out):
                weights = paired_with_all - probabilities[s] if s < n_teacher else paired_with_all
                logits = view.to(dtype) / self.student_temp
                mass = weights.sum(-1)
                loss = loss + mass.dot(torch.logsumexp(logits, dim=-1))
                loss = loss - weights.flatten().dot(logits.flatten())
            loss = loss / (n_terms * teacher.shape[1])
        self.update_center(teacher)
        return loss
