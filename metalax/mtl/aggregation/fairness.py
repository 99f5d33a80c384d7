"""Aggregators that balance what each task gets: FairGrad (alpha-fair utilities) and DB-MTL.

References:
  Ban & Ji, Fair Resource Allocation in Multi-Task Learning (FairGrad), ICML 2024.
  Lin, Jiang, Ye, Zhang, Zhang & Kwok, Dual-Balancing for Multi-Task Learning
  (DB-MTL), arXiv:2308.12029, 2023.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from metalax.mtl.aggregation.base import Aggregator
from metalax.mtl.aggregation.base import combine
from metalax.mtl.aggregation.base import count_tasks
from metalax.mtl.aggregation.base import gramian
from metalax.mtl.aggregation.base import task_gradient_norms

# ---------------------------------------------------------------------------
# FairGrad.


def _fair_weights(gram, alpha, max_steps=100, tolerance=1e-12):
  r"""Solves ``G w = w^{-1/alpha}`` elementwise, ``w > 0``, by damped Newton.

  The solution minimises the strictly convex
  ``f(a) = a^T G a / 2 - sum_i phi(a_i)`` with ``phi' (a) = a^{-1/alpha}``
  (``phi = log`` for ``alpha = 1``). Newton steps with a step length chosen by
  the lowest ``f`` over 30 halvings that keep ``a > 0`` (the full step once the
  Newton decrement is below 0.1, where ``f`` may not resolve the decrease in
  float32); stops when the squared decrement is below ``tolerance`` or the
  iterate no longer changes. Solved on
  ``G / |G|_F``, then rescaled: if ``G = s Ghat`` and ``Ghat a = a^{-1/alpha}``,
  ``w = s^{-alpha / (alpha + 1)} a``.
  """
  num_tasks = gram.shape[0]
  frobenius = jnp.sqrt(jnp.sum(gram**2))
  frobenius = jnp.where(frobenius > 0, frobenius, 1.0)
  g = gram / frobenius
  power = 1.0 / alpha

  def phi(a):
    if alpha == 1.0:
      return jnp.log(a)
    return a ** (1.0 - power) / (1.0 - power)

  def objective(a):
    safe = jnp.where(a > 0, a, 1.0)
    value = 0.5 * safe @ g @ safe - jnp.sum(phi(safe))
    return jnp.where(jnp.all(a > 0), value, jnp.inf)

  lengths = 0.5 ** jnp.arange(30, dtype=g.dtype)

  def newton(carry):
    i, a, _ = carry
    grad = g @ a - a ** (-power)
    hessian = g + jnp.diag(power * a ** (-power - 1.0))
    direction = -jnp.linalg.solve(hessian, grad)
    decrement_sq = jnp.maximum(-grad @ direction, 0.0)
    candidates = a[None] + lengths[:, None] * direction[None]
    values = jax.vmap(objective)(candidates)
    best = jnp.argmin(values)
    searched = jnp.where(values[best] < objective(a), candidates[best], a)
    # Near the solution f cannot resolve the decrease (~decrement^2 / 2) in float32:
    # take the full Newton step there (quadratic convergence) when it stays feasible.
    full = a + direction
    new_a = jnp.where((decrement_sq < 1e-2) & jnp.all(full > 0), full, searched)
    return i + 1, new_a, jnp.where(jnp.any(new_a != a), decrement_sq, 0.0)

  def cond(carry):
    i, _, decrement_sq = carry
    return (i < max_steps) & (decrement_sq > tolerance)

  _, a, _ = jax.lax.while_loop(
      cond, newton,
      (jnp.zeros((), jnp.int32), jnp.ones((num_tasks,), g.dtype), jnp.array(jnp.inf, g.dtype)))
  return a * frobenius ** (-alpha / (alpha + 1.0))


def fairgrad(alpha: float = 1.0, *, max_norm: float = 1.0, max_steps: int = 100) -> Aggregator:
  r"""FairGrad: alpha-fair allocation of the update among tasks (Ban & Ji, 2024).

  With the utility of task ``i`` the decrease rate :math:`u_i = g_i^\top d`,
  FairGrad maximises :math:`\sum_i u_i^{1-\alpha} / (1 - \alpha)` over a ball
  of updates. The solution is :math:`d = \sum_i w_i g_i` with :math:`w > 0`
  solving

  .. math::
    G w = w^{-1/\alpha} \quad \text{(elementwise)},

  ``G`` the Gram matrix of the task gradients. ``alpha = 1`` is proportional
  fairness, the fixed point of Nash-MTL (:func:`nash_mtl`); ``alpha -> 0``
  tends to the plain sum, large ``alpha`` to equal utilities
  :math:`g_i^\top d` (max-min fairness).

  Solver: LibMTL and the official code call SciPy's ``least_squares`` on the
  residual :math:`G w - w^{-1/\alpha}` with ``w >= 0`` from ``w = 1/T``. Here the
  same fixed point is found to machine precision as the minimiser of the
  strictly convex :math:`\tfrac12 w^\top G w - \sum_i \phi(w_i)`,
  :math:`\phi'(w) = w^{-1/\alpha}`, by damped Newton (at most ``max_steps``
  steps) on ``G`` normalised by its Frobenius norm, then rescaled. The tests
  check the residual, the closed form :math:`w_i = \|g_i\|^{-2\alpha/(\alpha+1)}`
  for orthogonal gradients and agreement with ``least_squares``. When zero is
  a convex combination of the task gradients there is no fixed point and the
  weights grow; the norm clipping then bounds the update.

  The official code clips the shared parameters' update to norm ``max_norm``
  (1.0, our default, as :func:`nash_mtl`); LibMTL does not (``max_norm=0``).
  Both then backpropagate ``sum_i w_i L_i``, so task-specific parameters get
  their task's gradient scaled by ``w_i``; with :func:`linear_scalarization`
  on the heads they get the unscaled sum instead.

  Args:
    alpha: the fairness exponent, ``> 0``; 1.0 is the default of LibMTL and the
      official code.
    max_norm: the update's maximal norm; 0 disables the clipping.
    max_steps: Newton step cap.

  Returns:
    A stateless aggregator.

  Raises:
    ValueError: if ``alpha <= 0`` or ``max_norm < 0``.

  References:
    Ban & Ji, Fair Resource Allocation in Multi-Task Learning, ICML 2024
    (code: github.com/OptMN-Lab/fairgrad).
  """
  if not alpha > 0:
    raise ValueError(f"alpha must be > 0, got {alpha}.")
  if max_norm < 0:
    raise ValueError(f"max_norm must be >= 0, got {max_norm}.")
  alpha = float(alpha)

  def update_fn(task_grads, state, params=None, **extra_args):
    del params, extra_args
    gram = gramian(task_grads)
    weights = _fair_weights(gram, alpha, max_steps)
    if max_norm > 0:
      norm = jnp.sqrt(jnp.maximum(weights @ gram @ weights, 0.0))
      weights = weights * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    return combine(weights, task_grads), state

  return Aggregator(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------------
# DB-MTL.


class DBMTLState(NamedTuple):
  """State of :func:`db_mtl`.

  Attributes:
    step: int32 number of ``update`` calls so far.
    buffer: the EMA of the task gradients of the log losses, structured like
      the aggregated parameters with leaves ``[T, *param_shape]``.
  """

  step: jax.Array
  buffer: Any


def db_mtl(num_tasks: int, *, beta: float = 0.9, beta_sigma: float = 0.0) -> Aggregator:
  r"""Dual-balancing multi-task learning, DB-MTL (Lin et al., 2023).

  Loss-scale balancing: each task's gradient is that of its log loss,
  :math:`\nabla \log(L_i + 10^{-8}) = g_i / (L_i + 10^{-8})`, so ``update``
  needs the task losses. Gradient-magnitude balancing: with the EMA

  .. math::
    \hat g_i \leftarrow \hat g_i^{\text{new}} + \beta_t (\hat g_i - \hat g_i^{\text{new}}),
    \qquad \beta_t = \beta / t^{\sigma},

  (``t`` the call number from 1, the buffer starting at 0), the update is
  :math:`\sum_i \frac{\max_j \|\hat g_j\|}{\|\hat g_i\| + 10^{-8}} \hat g_i`: every
  task contributes a gradient of the largest task's norm. This is LibMTL's
  ``DB_MTL`` (whose authors wrote the paper), with its defaults ``beta = 0.9``,
  ``beta_sigma = 0``.

  Give ``update`` the gradients of the raw task losses and the losses:
  ``update(task_grads, state, params, task_losses=task_losses)``. LibMTL
  backpropagates the log losses to every parameter, so task-specific heads
  get :math:`\sum_i g_i / (L_i + 10^{-8})`; to do the same, scale the heads'
  task gradients by ``1 / (task_losses + 1e-8)`` before summing them.

  Args:
    num_tasks: ``T`` (the state holds a ``[T, ...]`` buffer).
    beta: the EMA coefficient ``beta`` in ``[0, 1)``.
    beta_sigma: the decay exponent ``sigma`` of ``beta_t``.

  Returns:
    An aggregator with a :class:`DBMTLState`; ``init(params)`` needs the
    parameters whose gradients it will aggregate.

  Raises:
    ValueError: on bad hyperparameters, or (at ``update``) missing or
      mis-shaped ``task_losses``.

  References:
    Lin, Jiang, Ye, Zhang, Zhang & Kwok, Dual-Balancing for Multi-Task
    Learning, arXiv:2308.12029, 2023 (code: LibMTL's ``DB_MTL``).
  """
  if not isinstance(num_tasks, int) or num_tasks < 1:
    raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}.")
  if not 0.0 <= beta < 1.0:
    raise ValueError(f"beta must be in [0, 1), got {beta}.")
  if beta_sigma < 0:
    raise ValueError(f"beta_sigma must be >= 0, got {beta_sigma}.")

  def init_fn(params):
    leaves = jax.tree.leaves(params)
    if not leaves:
      raise ValueError("db_mtl needs init(params) with the parameters whose gradients it "
                       "aggregates (the buffer has their shapes); got no leaves.")
    buffer = jax.tree.map(
        lambda p: jnp.zeros((num_tasks,) + jnp.shape(p), jnp.result_type(p, jnp.float32)), params)
    return DBMTLState(jnp.zeros((), jnp.int32), buffer)

  def update_fn(task_grads, state, params=None, *, task_losses=None, **extra_args):
    del params, extra_args
    if count_tasks(task_grads) != num_tasks:
      raise ValueError(f"db_mtl was built for {num_tasks} tasks but task_grads have "
                       f"{count_tasks(task_grads)}.")
    if task_losses is None or jnp.shape(task_losses) != (num_tasks,):
      got = None if task_losses is None else jnp.shape(task_losses)
      raise ValueError(f"db_mtl needs update(..., task_losses=...) of shape [{num_tasks}] (its "
                       f"gradients are those of the log losses), got {got}.")
    if jax.tree.structure(task_grads) != jax.tree.structure(state.buffer):
      raise ValueError("db_mtl: task_grads must have the structure of the params given to init.")
    scale = 1.0 / (jax.lax.stop_gradient(jnp.asarray(task_losses)) + 1e-8)
    step = state.step + 1
    rate = beta / step.astype(jnp.float32) ** beta_sigma

    def ema(buffer, grad):
      log_grad = grad * scale.reshape((-1,) + (1,) * (grad.ndim - 1)).astype(grad.dtype)
      return (log_grad + rate.astype(grad.dtype) * (buffer - log_grad)).astype(buffer.dtype)

    buffer = jax.tree.map(ema, state.buffer, task_grads)
    norms = task_gradient_norms(buffer)
    weights = jnp.max(norms) / (norms + 1e-8)
    update = jax.tree.map(lambda u, g: u.astype(g.dtype), combine(weights, buffer), task_grads)
    return update, DBMTLState(step, buffer)

  return Aggregator(init_fn, update_fn)
