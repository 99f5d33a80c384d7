"""Knowledge distillation from single-task teachers into a multi-task student."""

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def distillation_kl(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    temperature: float = 1.0,
) -> jax.Array:
  r"""Temperature-scaled KL divergence from a teacher to a student, per example.

  .. math::
    \ell = \tau^2 \, \mathrm{KL}\bigl(\mathrm{softmax}(z_t/\tau) \,\|\,
      \mathrm{softmax}(z_s/\tau)\bigr),

  the soft-target loss of Hinton et al. (2015). The :math:`\tau^2` factor keeps
  the gradient's scale independent of the temperature:
  :math:`\partial\ell/\partial z_s = \tau\,(\mathrm{softmax}(z_s/\tau) -
  \mathrm{softmax}(z_t/\tau))`. The teacher is a fixed target: its logits are
  wrapped in ``jax.lax.stop_gradient``. Classes the teacher gives zero
  probability (``-inf`` logits) contribute zero.

  Args:
    student_logits: ``[n, num_classes]``.
    teacher_logits: ``[n, num_classes]``.
    temperature: softmax temperature ``tau > 0`` (Hinton et al. use values
      from 1 to 20; 1 is the plain KL).

  Returns:
    Per-example losses ``[n]``.

  Raises:
    ValueError: if the shapes differ or are not ``[n, num_classes]``, or
      ``temperature <= 0``.

  References:
    Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network,
    NIPS Deep Learning Workshop 2015 (arXiv:1503.02531).
  """
  if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
    raise ValueError(
        "student_logits and teacher_logits must both have shape [n, num_classes], got "
        f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}.")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  student_log_probs = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  teacher_log_probs = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  teacher_probs = jnp.exp(teacher_log_probs)
  safe_teacher = jnp.where(teacher_probs > 0, teacher_log_probs, 0.0)
  terms = jnp.where(teacher_probs > 0, teacher_probs * (safe_teacher - student_log_probs), 0.0)
  return temperature**2 * jnp.sum(terms, axis=-1)


def multi_teacher_distillation(
    student_logits: Sequence[jax.Array],
    teacher_logits: Sequence[jax.Array],
    temperature: float | Sequence[float] = 1.0,
) -> jax.Array:
  """Distillation of ``T`` single-task teachers into a multi-task student.

  Task ``t``'s teacher is distilled into the student's head for task ``t`` with
  :func:`distillation_kl`. The result keeps the task axis, so that its mean over
  examples gives ``task_losses [T]`` for a loss weighting or a gradient
  aggregator (``metalax.mtl``); its sum over tasks is the plain total.

  Args:
    student_logits: ``T`` arrays, task ``t``'s ``[n, num_classes_t]`` (or one
      ``[T, n, num_classes]`` array when all tasks have the same classes).
    teacher_logits: the teachers' logits, shaped as ``student_logits``.
    temperature: one ``tau`` for all tasks, or ``T`` of them.

  Returns:
    Per-example, per-task losses ``[n, T]``.

  Raises:
    ValueError: if the numbers of tasks, examples or temperatures disagree.

  Example:
    >>> student = [jnp.zeros((4, 3)), jnp.zeros((4, 5))]
    >>> teachers = [jnp.ones((4, 3)), jnp.ones((4, 5))]
    >>> multi_teacher_distillation(student, teachers, temperature=2.0).shape
    (4, 2)

  References:
    Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, 2015.
    Clark et al., BAM! Born-Again Multi-Task Networks for Natural Language
    Understanding, ACL 2019 (multi-task distillation from single-task teachers).
  """
  students = list(student_logits)
  teachers = list(teacher_logits)
  if len(students) != len(teachers) or not students:
    raise ValueError(f"need one teacher per student head (T >= 1), got {len(students)} "
                     f"student heads and {len(teachers)} teachers.")
  temperatures = ([temperature] * len(students) if np.ndim(temperature) == 0
                  else list(temperature))
  if len(temperatures) != len(students):
    raise ValueError(f"temperature must be a scalar or have {len(students)} entries, got "
                     f"{len(temperatures)}.")
  num_examples = {s.shape[0] for s in students}
  if len(num_examples) != 1:
    raise ValueError("every student head must have the same number of examples n, got "
                     f"shapes {[tuple(s.shape) for s in students]}.")
  losses = [distillation_kl(s, t, tau)
            for s, t, tau in zip(students, teachers, temperatures, strict=True)]
  return jnp.stack(losses, axis=-1)
