"""Aggregators that align the update with every task: GradVac, ConFIG, DualProj.

All three work on the ``[T, T]`` Gram matrix of the task gradients (GradVac
also per leaf) and return a combination ``sum_i w_i g_i``.

References:
  Wang, Tsvetkov, Firat & Cao, Gradient Vaccine: Investigating and Improving
  Multi-task Optimization in Massively Multilingual Models (GradVac), ICLR 2021.
  Liu, Chu, Thuerey, Conflict-Free Inverse Gradients: Towards Conflict-free
  Training of Physics Informed Neural Networks (ConFIG), arXiv:2408.11104, 2024
  (ICLR 2025).
  Lopez-Paz & Ranzato, Gradient Episodic Memory for Continual Learning
  (the dual-cone projection DualProj applies to the mean), NeurIPS 2017.
"""

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metalax.mtl.aggregation.balanced import _box_qp
from metalax.mtl.aggregation.base import Aggregator
from metalax.mtl.aggregation.base import combine
from metalax.mtl.aggregation.base import count_tasks
from metalax.mtl.aggregation.base import gramian
from metalax.mtl.aggregation.base import weights_aggregator


def _preference(preference, num_tasks, dtype, default, name):
  """``preference`` as a ``[T]`` array, or ``default`` filled to ``[T]``."""
  if preference is None:
    return jnp.full((num_tasks,), default, dtype)
  if preference.shape != (num_tasks,):
    raise ValueError(f"{name} has a preference of shape {tuple(preference.shape)} but "
                     f"task_grads have {num_tasks} tasks.")
  return preference.astype(dtype)


def _checked_preference(preference):
  if preference is None:
    return None
  values = np.asarray(preference, np.float32)  # NumPy: the constructor may run inside jit
  if values.ndim != 1 or values.size == 0:
    raise ValueError(f"preference must be a [T] vector, got shape {values.shape}.")
  return jnp.asarray(values)


# ---------------------------------------------------------------------------
# GradVac.


class GradVacState(NamedTuple):
  """State of :func:`gradvac`.

  Attributes:
    key: the PRNG key of the next call.
    targets: ``[G, T, T]`` similarity goals ``phi_hat[g, i, j]`` (the EMA of the
      cosine between task ``i``'s partly adjusted gradient and ``g_j``), one
      ``[T, T]`` matrix per group ``g`` (``G = 1`` for ``granularity="model"``,
      the number of leaves for ``"leaf"``).
  """

  key: jax.Array
  targets: jax.Array


def _gradvac_weights(gram, targets, orders, beta):
  """Weights ``c [T]`` with ``sum_i g_i^{GV} = sum_j c_j g_j``, and the new targets.

  ``orders[i]`` is task ``i``'s order of partners (``i`` itself is skipped).
  Row ``i`` of ``C`` holds ``g_i^{GV} = sum_j C[i, j] g_j``; rows are
  independent, so each step treats all ``i`` at once.
  """
  num_tasks = gram.shape[0]
  tasks = jnp.arange(num_tasks)
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))

  def step(carry, partners):
    coefficients, targets = carry
    dots = jnp.sum(coefficients * gram[partners], axis=1)                # g_i^GV . g_j
    own = jnp.sqrt(jnp.maximum(jnp.sum((coefficients @ gram) * coefficients, axis=1), 0.0))
    rho = dots / (own * norms[partners] + 1e-8)
    goal = targets[tasks, partners]
    sin_rho = jnp.sqrt(jnp.maximum(1.0 - rho**2, 0.0))
    sin_goal = jnp.sqrt(jnp.maximum(1.0 - goal**2, 0.0))
    scale = own * (goal * sin_rho - rho * sin_goal) / (norms[partners] * sin_goal + 1e-8)
    adjust = (rho < goal) & (partners != tasks)
    coefficients = coefficients.at[tasks, partners].add(jnp.where(adjust, scale, 0.0))
    new_goal = jnp.where(partners != tasks, (1.0 - beta) * goal + beta * rho, goal)
    return (coefficients, targets.at[tasks, partners].set(new_goal)), None

  (coefficients, targets), _ = jax.lax.scan(
      step, (jnp.eye(num_tasks, dtype=gram.dtype), targets.astype(gram.dtype)), orders.T,
      unroll=True)
  return jnp.sum(coefficients, axis=0), targets


def gradvac(
    key: jax.Array,
    num_tasks: int,
    *,
    beta: float = 0.5,
    granularity: str = "model",
) -> Aggregator:
  r"""Gradient Vaccine, GradVac (Wang et al., 2021).

  PCGrad with adaptive similarity goals. For every task ``i``, in a random
  order of the other tasks ``j`` (drawn anew for each ``i`` at every call), with
  :math:`\phi_{ij}` the cosine between the partly adjusted :math:`g_i^{GV}` and
  :math:`g_j` and :math:`\hat\phi_{ij}` its goal,

  .. math::
    \text{if } \phi_{ij} < \hat\phi_{ij}:\quad
    g_i^{GV} \leftarrow g_i^{GV} + \frac{\|g_i^{GV}\|\,(\hat\phi_{ij}\sqrt{1-\phi_{ij}^2}
      - \phi_{ij}\sqrt{1-\hat\phi_{ij}^2})}{\|g_j\|\sqrt{1-\hat\phi_{ij}^2}}\, g_j ,
    \qquad \hat\phi_{ij} \leftarrow (1-\beta)\hat\phi_{ij} + \beta\phi_{ij},

  (the goal is updated at every visit, adjusted or not), and the update is
  :math:`\sum_i g_i^{GV}` (paper Algorithm 2). Goals start at 0, so the first
  call is PCGrad (a conflicting pair is made orthogonal). As LibMTL's
  ``GradVac``, ``1e-8`` is added to the denominators of the cosine and of the
  step, and the goals live in the state.

  ``granularity="model"`` (LibMTL's default ``group_type=0``) uses one cosine
  over all the parameters; ``"leaf"`` adjusts every leaf of ``task_grads``
  separately, with its own goals (LibMTL's ``group_type=2``, one group per
  parameter tensor; the paper's per-layer variant is the leaf grouping of a
  network whose layers hold one tensor). The random orders are shared by the
  groups, as LibMTL.

  Args:
    key: a PRNG key (``jax.random.key``) for the random orders; it lives in the
      state and is split at every call.
    num_tasks: ``T`` (the state holds ``[G, T, T]`` goals).
    beta: the EMA rate of the goals; 0.5 is LibMTL's default.
    granularity: ``"model"`` or ``"leaf"``.

  Returns:
    An aggregator with a :class:`GradVacState`.

  Raises:
    ValueError: on a bad ``beta``, ``granularity`` or number of tasks.

  Example:
    >>> agg = gradvac(jax.random.key(0), 2)
    >>> update, state = agg.update(jnp.array([[1.0, 0.0], [-1.0, 1.0]]), agg.init(None))
    >>> update.tolist()  # first call: PCGrad
    [0.5, 1.5]

  References:
    Wang, Tsvetkov, Firat & Cao, Gradient Vaccine: Investigating and Improving
    Multi-task Optimization in Massively Multilingual Models, ICLR 2021.
  """
  if not isinstance(num_tasks, int) or num_tasks < 1:
    raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}.")
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"beta must be in [0, 1], got {beta}.")
  if granularity not in ("model", "leaf"):
    raise ValueError(f"granularity must be 'model' or 'leaf', got {granularity!r}.")

  def init_fn(params):
    groups = 1 if granularity == "model" else len(jax.tree.leaves(params))
    if groups == 0:
      raise ValueError("gradvac(granularity='leaf') needs init(params) with the parameters "
                       "whose gradients it aggregates; got no leaves.")
    return GradVacState(key, jnp.zeros((groups, num_tasks, num_tasks), jnp.float32))

  def update_fn(task_grads, state, params=None, **extra_args):
    del params, extra_args
    if count_tasks(task_grads) != num_tasks:
      raise ValueError(f"gradvac was built for {num_tasks} tasks but task_grads have "
                       f"{count_tasks(task_grads)}.")
    next_key, sample_key = jax.random.split(state.key)
    orders = jnp.argsort(jax.random.uniform(sample_key, (num_tasks, num_tasks)), axis=1)
    leaves, treedef = jax.tree.flatten(task_grads)
    if granularity == "model":
      grams = gramian(task_grads)[None]
    else:
      if state.targets.shape[0] != len(leaves):
        raise ValueError(f"gradvac(granularity='leaf') was initialised for "
                         f"{state.targets.shape[0]} leaves but task_grads have {len(leaves)}.")
      grams = jnp.stack([gramian(leaf) for leaf in leaves])
    weights, targets = jax.vmap(_gradvac_weights, in_axes=(0, 0, None, None))(
        grams, state.targets, orders, beta)
    if granularity == "model":
      update = combine(weights[0], task_grads)
    else:
      update = jax.tree.unflatten(
          treedef, [combine(w, leaf) for w, leaf in zip(weights, leaves, strict=True)])
    return update, GradVacState(next_key, targets.astype(state.targets.dtype))

  return Aggregator(init_fn, update_fn)


# ---------------------------------------------------------------------------
# ConFIG.


def _config_weights(gram, preference):
  num_tasks = gram.shape[0]
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  inverse_norms = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0), 0.0)
  unit_gram = gram * jnp.outer(inverse_norms, inverse_norms)
  # pinv(U) w = U^T pinv(U U^T) w: coefficients on the unit gradients.
  rtol = num_tasks * jnp.finfo(gram.dtype).eps
  coefficients = jnp.linalg.pinv(unit_gram, rtol=rtol, hermitian=True) @ preference
  direction = coefficients * inverse_norms                     # on the raw gradients
  norm = jnp.sqrt(jnp.maximum(direction @ gram @ direction, 0.0))
  unit = direction / jnp.where(norm > 0, norm, 1.0)
  length = jnp.sum(gram @ unit)                                # sum_j g_j . unit
  return jnp.where(norm > 0, length, 0.0) * unit


def conflict_free(preference: Sequence[float] | jax.Array | None = None) -> Aggregator:
  r"""Conflict-Free Inverse Gradients, ConFIG (Liu et al., 2024).

  With the unit task gradients :math:`u_i = g_i / \|g_i\|` stacked as ``U
  [T, D]``, the direction :math:`x = U^{+} p` (``p`` the preference, all ones
  by default) has the same projection ``p_i`` on every unit gradient, so it
  conflicts with none (paper eq. 2); the update is that direction rescaled to
  the sum of the task gradients' projections on it,

  .. math::
    d = \Bigl(\sum_j g_j^\top \hat x\Bigr) \hat x, \qquad \hat x = x / \|x\| .

  As TorchJD's ``ConFIG`` (adapted from the official ``conflictfree``
  package): zero gradients give zero unit rows, and ``p`` defaults to ones
  (TorchJD's ``SumWeighting``). Here :math:`U^{+} p = U^\top (U U^\top)^{+} p`
  is computed from the Gram matrix; ``(U U^T)^+`` drops eigenvalues below
  ``T * eps`` times the largest, which for linearly dependent unit gradients
  can differ from ``torch.linalg.pinv(U)`` (whose cut-off on the singular
  values is ``max(T, D) * eps``). The official package's two-task closed form
  is the same direction.

  Args:
    preference: ``[T]`` positive weights ``p`` (the projections the direction
      should have on the unit gradients), or None for ones.

  Returns:
    A stateless aggregator.

  Example:
    >>> update, _ = conflict_free().update(jnp.array([[1.0, 0.0], [0.0, 2.0]]), ())
    >>> [round(x, 5) for x in update.tolist()]  # the bisector, length 3 / sqrt(2)
    [1.5, 1.5]

  References:
    Liu, Chu & Thuerey, ConFIG: Towards Conflict-free Training of Physics
    Informed Neural Networks, arXiv:2408.11104, 2024 (ICLR 2025; code:
    github.com/tum-pbs/ConFIG). Quinton & Rey, TorchJD (``ConFIG``).
  """
  fixed = _checked_preference(preference)

  def weights_fn(gram):
    pref = _preference(fixed, gram.shape[0], gram.dtype, 1.0, "conflict_free")
    return _config_weights(gram, pref)

  return weights_aggregator(weights_fn)


# ---------------------------------------------------------------------------
# DualProj.


def _dualproj_weights(gram, preference, norm_eps, reg_eps):
  num_tasks = gram.shape[0]
  trace = jnp.trace(gram)
  normalized = jnp.where(trace < norm_eps, 0.0, gram / jnp.where(trace > 0, trace, 1.0))
  regularized = normalized + reg_eps * jnp.eye(num_tasks, dtype=gram.dtype)
  return _box_qp(regularized, preference)


def dualproj(
    preference: Sequence[float] | jax.Array | None = None,
    *,
    norm_eps: float = 1e-4,
    reg_eps: float = 1e-4,
) -> Aggregator:
  r"""Dual-cone projection of the weighted mean, DualProj (TorchJD).

  Projects :math:`\sum_i p_i g_i` (the mean for the default ``p = 1/T``) onto
  the dual cone :math:`\{x : g_j \cdot x \ge 0\ \forall j\}` of the task
  gradients: the closest update that conflicts with no task, GEM's projection
  (Lopez-Paz & Ranzato, 2017, eq. 11) applied to multi-task learning. By
  Proposition 1 of Quinton & Rey (2024) the projection of :math:`J^\top p` is
  :math:`J^\top v` with :math:`v = \arg\min_{v \ge p} v^\top G v`, solved
  here as in :func:`upgrad` (a projected Newton method on the Gram matrix
  divided by its trace, zeroed when the trace is below ``norm_eps``, plus
  ``reg_eps * I``, as TorchJD's ``DualProj``, which uses ``quadprog``).

  When no two task gradients conflict the update is :math:`\sum_i p_i g_i`;
  otherwise it is a non-negative combination with :math:`g_j \cdot d \ge 0`
  for every task (up to the regularisation).

  Args:
    preference: ``[T]`` weights ``p``, or None for ``1/T`` each.
    norm_eps: threshold on the Gram trace below which the update is zero.
    reg_eps: diagonal regularisation of the normalised Gram matrix.

  Returns:
    A stateless aggregator.

  References:
    Lopez-Paz & Ranzato, Gradient Episodic Memory for Continual Learning,
    NeurIPS 2017. Quinton & Rey, Jacobian Descent for Multi-Objective
    Optimization, arXiv:2406.16232, 2024 (code: github.com/TorchJD/torchjd).
  """
  fixed = _checked_preference(preference)
  if norm_eps < 0 or reg_eps < 0:
    raise ValueError(f"norm_eps and reg_eps must be >= 0, got {norm_eps} and {reg_eps}.")

  def weights_fn(gram):
    num_tasks = gram.shape[0]
    pref = _preference(fixed, num_tasks, gram.dtype, 1.0 / num_tasks, "dualproj")
    return _dualproj_weights(gram, pref, norm_eps, reg_eps)

  return weights_aggregator(weights_fn)
