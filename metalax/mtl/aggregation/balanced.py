"""Aggregators that balance the tasks through the Gram matrix: IMTL-G, Nash-MTL, Aligned-MTL, UPGrad.

References:
  Liu et al., Towards Impartial Multi-task Learning (IMTL), ICLR 2021.
  Navon et al., Multi-Task Learning as a Bargaining Game (Nash-MTL), ICML 2022.
  Senushkin et al., Independent Component Alignment for Multi-Task Learning
  (Aligned-MTL), CVPR 2023.
  Quinton & Rey, Jacobian Descent for Multi-Objective Optimization (UPGrad),
  arXiv:2406.16232, 2024.
"""

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp

from metalax.mtl.aggregation.base import Aggregator
from metalax.mtl.aggregation.base import as_constant
from metalax.mtl.aggregation.base import combine
from metalax.mtl.aggregation.base import count_tasks
from metalax.mtl.aggregation.base import gramian
from metalax.mtl.aggregation.base import weights_aggregator


# ---------------------------------------------------------------------------
# IMTL-G.


def _imtl_g_weights(gram):
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  v = jnp.linalg.pinv(gram, hermitian=True) @ norms
  total = jnp.sum(v)
  return jnp.where(jnp.abs(total) < 1e-12, 0.0, v / jnp.where(total == 0, 1.0, total))


def imtl_g() -> Aggregator:
  r"""Impartial MTL, gradient part, IMTL-G (Liu et al., 2021).

  Finds ``w`` with :math:`\sum_i w_i = 1` such that the update
  :math:`d = \sum_i w_i g_i` has the same projection on every unit task
  gradient, :math:`d \cdot u_i = d \cdot u_j`, :math:`u_i = g_i/\|g_i\|`. The
  paper's closed form (LibMTL's ``IMTL``, with ``D = g_1 - g_{2:T}``,
  ``U = u_1 - u_{2:T}``) is :math:`w_{2:T} = g_1 U^\top (D U^\top)^{-1}`,
  :math:`w_1 = 1 - \sum_{i \ge 2} w_i`. We use the equivalent Gram-matrix form
  of TorchJD's ``IMTLG``, :math:`w \propto G^{+} (\|g_1\|, \dots, \|g_T\|)`
  normalised to sum to 1, which also handles linearly dependent gradients
  (``G^+`` the pseudo-inverse); ``w = 0`` when the sum vanishes.

  Returns:
    A stateless aggregator.

  References:
    Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, Towards Impartial Multi-task
    Learning, ICLR 2021. Quinton & Rey, Jacobian Descent for Multi-Objective
    Optimization, 2024 (the generalisation).
  """
  return weights_aggregator(_imtl_g_weights)


# ---------------------------------------------------------------------------
# Nash-MTL.


class NashMTLState(NamedTuple):
  """State of :func:`nash_mtl`.

  Attributes:
    step: int32 number of ``update`` calls so far.
    weights: ``[T]`` the last solved weights ``alpha`` (before norm clipping).
  """

  step: jax.Array
  weights: jax.Array


def _nash_weights(gram, max_steps=100, tolerance=1e-10):
  """Solves ``alpha_i (G alpha)_i = 1``, ``alpha > 0``, by damped Newton.

  The fixed point is the minimiser of the strictly convex, self-concordant
  ``f(a) = a^T G a / 2 - sum_i log a_i`` (gradient ``G a - 1/a``); damped Newton
  steps ``1 / (1 + lambda)`` (``lambda`` the Newton decrement) stay in
  ``a > 0`` and converge quadratically. Solved on ``G / |G|_F`` (as the
  reference normalises), then rescaled: ``alpha = a / sqrt(|G|_F)``.
  """
  num_tasks = gram.shape[0]
  frobenius = jnp.sqrt(jnp.sum(gram**2))
  frobenius = jnp.where(frobenius > 0, frobenius, 1.0)
  g = gram / frobenius

  def newton(carry):
    i, a, _ = carry
    grad = g @ a - 1.0 / a
    hessian = g + jnp.diag(1.0 / a**2)
    direction = -jnp.linalg.solve(hessian, grad)
    decrement_sq = jnp.maximum(-grad @ direction, 0.0)
    a = a + direction / (1.0 + jnp.sqrt(decrement_sq))
    return i + 1, jnp.maximum(a, 1e-30), decrement_sq

  def cond(carry):
    i, _, decrement_sq = carry
    return (i < max_steps) & (decrement_sq > tolerance)

  _, a, _ = jax.lax.while_loop(
      cond, newton,
      (jnp.zeros((), jnp.int32), jnp.ones((num_tasks,), g.dtype), jnp.array(jnp.inf, g.dtype)))
  return a / jnp.sqrt(frobenius)


def nash_mtl(
    num_tasks: int,
    *,
    max_norm: float = 1.0,
    update_weights_every: int = 1,
    max_steps: int = 100,
) -> Aggregator:
  r"""Nash-MTL: the Nash bargaining solution (Navon et al., 2022).

  The update :math:`d = \sum_i \alpha_i g_i` with :math:`\alpha > 0` solving
  :math:`G\alpha = 1/\alpha` elementwise (``G`` the Gram matrix of the task
  gradients), i.e. :math:`g_i \cdot d = 1/\alpha_i` for every task; then
  :math:`\|d\|^2 = T`. If ``max_norm > 0`` the update is rescaled to norm at most
  ``max_norm`` (the reference clips the shared-parameter gradient norm to 1.0;
  TorchJD rescales ``alpha`` the same way). The weights are recomputed every
  ``update_weights_every`` calls and reused in between, as the reference.

  Solver: the reference approaches the fixed point with up to 20 rounds of a
  sequential convex approximation solved by cvxpy/ECOS. The fixed point is
  exactly the minimiser of the strictly convex function
  :math:`\tfrac12\alpha^\top G\alpha - \sum_i\log\alpha_i` (its gradient is
  :math:`G\alpha - 1/\alpha`), so here it is solved to machine precision by
  damped Newton (self-concordant, at most ``max_steps`` steps, on the ``[T, T]``
  Gram matrix normalised by its Frobenius norm as the reference). The tests
  check ``alpha_i (G alpha)_i = 1``, the closed form ``alpha_i = 1/|g_i|`` for
  orthogonal gradients, and agreement with SciPy's solution of the same
  problem. When zero is a convex combination of the gradients (a Pareto
  stationary point) the fixed point does not exist and the weights grow; the
  norm clipping then bounds the update.

  Args:
    num_tasks: ``T`` (the state stores the last weights).
    max_norm: the update's maximal norm (1.0 as the reference); 0 disables it.
    update_weights_every: recompute the weights every this many calls (1).
    max_steps: Newton step cap.

  Returns:
    An aggregator with a :class:`NashMTLState`.

  References:
    Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, Multi-Task
    Learning as a Bargaining Game, ICML 2022 (code: github.com/AvivNavon/nash-mtl).
  """
  if not isinstance(num_tasks, int) or num_tasks < 1:
    raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}.")
  if max_norm < 0:
    raise ValueError(f"max_norm must be >= 0, got {max_norm}.")
  if not isinstance(update_weights_every, int) or update_weights_every < 1:
    raise ValueError(
        f"update_weights_every must be a positive int, got {update_weights_every!r}.")

  def init_fn(params):
    # The weights are kept in the parameters' float dtype (the default float
    # dtype without parameters: float64 when x64 is enabled).
    return NashMTLState(jnp.zeros((), jnp.int32), jnp.ones((num_tasks,), _float_dtype(params)))

  def update_fn(task_grads, state, params=None, **extra_args):
    del params, extra_args
    if count_tasks(task_grads) != num_tasks:
      raise ValueError(f"nash_mtl was built for {num_tasks} tasks but task_grads have "
                       f"{count_tasks(task_grads)}.")
    gram = gramian(task_grads)
    weights = jax.lax.cond(state.step % update_weights_every == 0,
                           lambda: _nash_weights(gram, max_steps),
                           lambda: state.weights.astype(gram.dtype))
    # The state keeps the unclipped weights, as the reference.
    new_state = NashMTLState(state.step + 1, weights.astype(state.weights.dtype))
    if max_norm > 0:
      norm = jnp.sqrt(jnp.maximum(weights @ gram @ weights, 0.0))
      weights = weights * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    return combine(weights, task_grads), new_state

  return Aggregator(init_fn, update_fn)


# ---------------------------------------------------------------------------
# Aligned-MTL.


def _aligned_mtl_weights(gram, scale_mode):
  num_tasks = gram.shape[0]
  eigenvalues, eigenvectors = jnp.linalg.eigh(gram)
  tolerance = jnp.max(eigenvalues) * num_tasks * jnp.finfo(gram.dtype).eps
  kept = eigenvalues > tolerance
  rank = jnp.sum(kept)
  safe = jnp.where(kept, eigenvalues, 1.0)
  if scale_mode == "min":
    scale = jnp.min(jnp.where(kept, eigenvalues, jnp.inf))
  elif scale_mode == "median":  # torch.median: the lower median of the kept ones.
    ascending = jnp.sort(jnp.where(kept, eigenvalues, jnp.inf))
    scale = ascending[jnp.maximum(rank - 1, 0) // 2]
  else:  # "rmse"
    scale = jnp.sum(jnp.where(kept, eigenvalues, 0.0)) / jnp.maximum(rank, 1)
  scale = jnp.where(rank > 0, scale, 0.0)
  inverse_sqrt = jnp.where(kept, 1.0 / jnp.sqrt(safe), 0.0)
  balance = jnp.sqrt(scale) * (eigenvectors * inverse_sqrt) @ eigenvectors.T
  return balance @ jnp.ones((num_tasks,), gram.dtype)


def aligned_mtl(*, scale_mode: str = "min") -> Aggregator:
  r"""Aligned-MTL (Senushkin et al., 2023): align the gradient system's components.

  With the Gram matrix :math:`G = V\Lambda V^\top` of the task gradients
  (eigenvalues below ``max(Lambda) * T * eps`` dropped, as the reference), the
  balance matrix :math:`B = \sqrt{\lambda_R}\, V\Lambda^{-1/2}V^\top` makes the
  aligned task gradients :math:`\hat g_i = \sum_j B_{ij} g_j` orthogonal with
  equal norms :math:`\sqrt{\lambda_R}` (condition number 1), and the update is
  their sum :math:`\sum_i \hat g_i = \sum_j (B\mathbf 1)_j g_j`, as the official
  code (``grads.sum(-1)``) and LibMTL (``B.sum(0)``). TorchJD's ``AlignedMTL``
  uses the mean instead (this divided by ``T``). ``lambda_R`` is the smallest
  kept eigenvalue (``scale_mode="min"``, the paper's Algorithm 1), their lower
  median (``"median"``) or their mean (``"rmse"``), the official code's options.

  Args:
    scale_mode: ``"min"``, ``"median"`` or ``"rmse"``.

  Returns:
    A stateless aggregator.

  References:
    Senushkin, Patakin, Kuznetsov & Konushin, Independent Component Alignment
    for Multi-Task Learning, CVPR 2023 (code: github.com/SamsungLabs/MTL).
  """
  if scale_mode not in ("min", "median", "rmse"):
    raise ValueError(f"scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}.")
  return weights_aggregator(lambda gram: _aligned_mtl_weights(gram, scale_mode))


# ---------------------------------------------------------------------------
# UPGrad.


def _box_qp(gram, lower, max_steps=50):
  """``argmin_v v^T G v / 2`` subject to ``v >= lower``, ``G`` positive definite.

  Projected Newton (Bertsekas, 1982): Newton steps on the variables off their
  bounds, with the step length, and a projected-gradient alternative, chosen
  by the lowest objective over a grid of halvings. Exact once the active set
  is found, which for small ``T`` takes a few steps.
  """
  objective = lambda v: 0.5 * v @ gram @ v
  lengths = 0.5 ** jnp.arange(20, dtype=gram.dtype)
  gradient_step = 1.0 / jnp.maximum(jnp.trace(gram), 1e-30)

  def body(carry):
    i, v, _ = carry
    grad = gram @ v
    residual = jnp.sum(jnp.abs(v - jnp.maximum(lower, v - grad)))
    epsilon = jnp.minimum(1e-6, residual)
    active = (v <= lower + epsilon) & (grad > 0)
    free = ~active
    reduced = jnp.where(jnp.outer(free, free), gram, 0.0) + jnp.diag(active.astype(gram.dtype))
    direction = -jnp.linalg.solve(reduced, jnp.where(free, grad, 0.0))
    newton = jax.vmap(lambda t: jnp.maximum(lower, v + t * direction))(lengths)
    descent = jax.vmap(lambda t: jnp.maximum(lower, v - 4 * t * gradient_step * grad))(lengths)
    candidates = jnp.concatenate([newton, descent, v[None]], axis=0)
    values = jax.vmap(objective)(candidates)
    best = jnp.argmin(values)
    new_v = jnp.where(values[best] < values[-1], candidates[best], v)
    return i + 1, new_v, jnp.sum(jnp.abs(new_v - v))

  def cond(carry):
    i, _, change = carry
    return (i < max_steps) & (change > 0)

  _, v, _ = jax.lax.while_loop(
      cond, body, (jnp.zeros((), jnp.int32), lower, jnp.array(jnp.inf, gram.dtype)))
  return v


def _upgrad_weights(gram, preference, norm_eps, reg_eps):
  num_tasks = gram.shape[0]
  trace = jnp.trace(gram)
  normalized = jnp.where(trace < norm_eps, 0.0, gram / jnp.where(trace > 0, trace, 1.0))
  regularized = normalized + reg_eps * jnp.eye(num_tasks, dtype=gram.dtype)
  lower_bounds = jnp.diag(preference)  # row i: the weights of g_i * preference[i].
  projected = jax.vmap(_box_qp, in_axes=(None, 0))(regularized, lower_bounds)
  return jnp.sum(projected, axis=0)


def upgrad(
    preference: Sequence[float] | jax.Array | None = None,
    *,
    norm_eps: float = 1e-4,
    reg_eps: float = 1e-4,
) -> Aggregator:
  r"""Unconflicting projection of gradients, UPGrad (Quinton & Rey, 2024).

  Each task gradient, scaled by its preference weight ``p_i`` (``1/T`` by
  default), is projected onto the dual cone of the task gradients
  :math:`\{x : g_j \cdot x \ge 0\ \forall j\}`, and the projections are summed.
  By the paper's Proposition 1 the projection of :math:`J^\top u` is
  :math:`J^\top v` with :math:`v = \arg\min_{v \ge u} v^\top G v`, a box-
  constrained QP on the Gram matrix (TorchJD solves it with ``quadprog``; here a
  projected Newton method in JAX). As TorchJD, ``G`` is first divided by its
  trace (or zeroed if the trace is below ``norm_eps``) and ``reg_eps * I`` is
  added.

  Properties (tested): the update does not conflict with any task,
  :math:`g_i \cdot d \ge 0` (up to the ``reg_eps`` regularisation); it is a
  non-negative combination of the task gradients; when no two task gradients
  conflict it is :math:`\sum_i p_i g_i`, the mean by default.

  Args:
    preference: ``[T]`` weights ``p``, or None for ``1/T`` each.
    norm_eps: threshold on the Gram trace below which the update is zero.
    reg_eps: diagonal regularisation of the normalised Gram matrix.

  Returns:
    A stateless aggregator.

  References:
    Quinton & Rey, Jacobian Descent for Multi-Objective Optimization,
    arXiv:2406.16232, 2024 (code: github.com/TorchJD/torchjd).
  """
  # Kept in its own precision and cast to the Gram matrix's dtype (the gradients') when used.
  fixed = None if preference is None else as_constant(preference)

  def weights_fn(gram):
    num_tasks = gram.shape[0]
    if fixed is not None and fixed.shape != (num_tasks,):
      raise ValueError(f"upgrad has a preference of shape {tuple(fixed.shape)} but "
                       f"task_grads have {num_tasks} tasks.")
    pref = jnp.full((num_tasks,), 1.0 / num_tasks, gram.dtype) if fixed is None else jnp.asarray(fixed, gram.dtype)
    return _upgrad_weights(gram, pref, norm_eps, reg_eps)

  return weights_aggregator(weights_fn)


def _float_dtype(params) -> jnp.dtype:
  """The float dtype of ``params``' float leaves, or the default float dtype (float64 under x64)."""
  floats = [leaf.dtype for leaf in jax.tree.leaves(params)
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating)]
  return jnp.result_type(*floats) if floats else jnp.asarray(1.0).dtype
