"""Gradient aggregation for multi-task learning: per-task gradients -> one update.

Per-task gradients are a pytree shaped like the parameters with a leading task
axis: every leaf is ``[T, *param_shape]``, as returned by :func:`task_gradients`
(one forward pass and ``T`` vectorised backward passes, i.e. ``jax.jacrev``),
or by ``jax.vmap(jax.grad(loss), in_axes=(None, 0))`` over per-task batches.
An aggregator maps them to one update ``[*param_shape]`` per leaf.

Interface: every constructor here returns an
``optax.experimental.aggregating.Aggregator`` -- the NamedTuple ``(init,
update)`` that optax uses for per-element gradients -- with

* ``init(params) -> state``
* ``update(task_grads, state, params=None, **extra_args) -> (update, new_state)``

so the aggregators *are* optax aggregators, with no adapter: chain them with
an optimizer through ``optax.experimental.aggregating.process(preprocessor,
aggregator, postprocessor)``, or call ``update`` directly and pass the result
to any optax optimizer. (Where the installed optax has no
``optax.experimental.aggregating``, a NamedTuple with the same two fields is
used instead.) The randomised methods (PCGrad, GradDrop) keep their PRNG key
in the state and split it at every call, as optax's noise transforms do.

Typically only the shared parameters are aggregated; task-specific heads get
the plain sum of task gradients (their gradient rows for other tasks are
zero). ``optax.transforms.partition`` does this split::

  aggregator = optax.transforms.partition(
      {"shared": metalax.mtl.pcgrad(key), "heads": metalax.mtl.linear_scalarization()},
      param_labels)
  task_losses, task_grads = metalax.mtl.task_gradients(task_losses_fn, params, batch)
  update, agg_state = aggregator.update(task_grads, agg_state, params)
  updates, opt_state = optimizer.update(update, opt_state, params)

Most methods compute task weights ``w [T]`` from the ``[T, T]`` Gram matrix of
the flattened task gradients and return ``sum_i w_i g_i``; they never build the
``[T, D]`` matrix (the Gram matrix is summed leaf by leaf). PCGrad is done in
that space too (each projected gradient is a combination of the ``g_j``).
GradDrop is elementwise.

What each method returns when all task gradients equal ``g`` (tested):
``linear_scalarization`` ``T g`` (sum), ``pcgrad`` ``T g`` (sum, as the paper),
``mgda`` ``g``, ``cagrad`` ``g`` for ``rescale=2`` (``(1+c) g / (1+c^2)`` for the
default ``rescale=1``), ``graddrop`` ``T g``, ``imtl_g`` ``g``, ``nash_mtl``
``sqrt(T) g / |g|`` clipped to norm ``max_norm``, ``aligned_mtl`` ``T g``,
``upgrad`` ``g``.

References:
  Yu et al., Gradient Surgery for Multi-Task Learning (PCGrad), NeurIPS 2020.
  Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization (MGDA,
  MGDA-UB), NeurIPS 2018.
  Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning
  (CAGrad), NeurIPS 2021.
  Chen et al., Just Pick a Sign: Optimizing Deep Multitask Models with Gradient
  Sign Dropout (GradDrop), NeurIPS 2020.
  Liu et al., Towards Impartial Multi-task Learning (IMTL), ICLR 2021.
  Navon et al., Multi-Task Learning as a Bargaining Game (Nash-MTL), ICML 2022.
  Senushkin et al., Independent Component Alignment for Multi-Task Learning
  (Aligned-MTL), CVPR 2023.
  Quinton & Rey, Jacobian Descent for Multi-Objective Optimization (UPGrad),
  arXiv:2406.16232, 2024.
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

try:
  from optax.experimental import aggregating as _optax_aggregating
  Aggregator = _optax_aggregating.Aggregator
except (ImportError, AttributeError):  # optax without experimental aggregating.

  class Aggregator(NamedTuple):  # type: ignore[no-redef]
    """``(init, update)`` of an aggregator, as in ``optax.experimental.aggregating``."""

    init: Callable[..., Any]
    update: Callable[..., Any]


TaskGrads = Any
"""A pytree whose leaves are ``[T, *param_shape]``: one gradient per task."""

_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------------------
# Per-task gradients and helpers.


def task_gradients(
    task_losses_fn: Callable[..., Any],
    params: Any,
    *args: Any,
    has_aux: bool = False,
) -> tuple[Any, TaskGrads]:
  """Task losses and per-task gradients in one vectorised pass.

  One forward pass and ``T`` backward passes batched by ``jax.vmap`` over the
  rows of the identity (what ``jax.jacrev`` does), never a Python loop.

  Args:
    task_losses_fn: ``task_losses_fn(params, *args) -> task_losses [T]`` (or
      ``(task_losses [T], aux)`` with ``has_aux=True``).
    params: the pytree to differentiate with respect to.
    *args: further arguments of ``task_losses_fn`` (not differentiated).
    has_aux: whether ``task_losses_fn`` also returns auxiliary data.

  Returns:
    ``(task_losses [T], task_grads)``, or ``((task_losses, aux), task_grads)``
    with ``has_aux=True``, like ``jax.value_and_grad``; ``task_grads`` has the
    structure of ``params`` with leaves ``[T, *param_shape]``.

  Raises:
    ValueError: if ``task_losses_fn`` does not return a vector.

  Example:
    >>> params = {"w": jnp.array([1.0, 2.0])}
    >>> fn = lambda p: jnp.stack([p["w"][0] ** 2, p["w"][0] * p["w"][1]])
    >>> losses, grads = task_gradients(fn, params)
    >>> grads["w"].tolist()
    [[2.0, 0.0], [2.0, 1.0]]
  """
  fn = lambda p: task_losses_fn(p, *args)
  if has_aux:
    task_losses, vjp_fn, aux = jax.vjp(fn, params, has_aux=True)
  else:
    task_losses, vjp_fn = jax.vjp(fn, params)
  if not hasattr(task_losses, "ndim") or task_losses.ndim != 1:
    shape = getattr(task_losses, "shape", type(task_losses))
    raise ValueError(
        "task_losses_fn must return the task losses as a vector [T], got "
        f"{tuple(shape) if isinstance(shape, tuple) else shape}.")
  cotangents = jnp.eye(task_losses.shape[0], dtype=task_losses.dtype)
  (task_grads,) = jax.vmap(vjp_fn)(cotangents)
  if has_aux:
    return (task_losses, aux), task_grads
  return task_losses, task_grads


def _num_tasks(task_grads: TaskGrads) -> int:
  leaves = jax.tree.leaves(task_grads)
  if not leaves:
    raise ValueError("task_grads has no leaves: expected a pytree of [T, *param_shape] arrays.")
  shapes = [tuple(getattr(leaf, "shape", ())) for leaf in leaves]
  if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
    raise ValueError(
        "every leaf of task_grads must have the same leading task axis [T, ...]; "
        f"got leaf shapes {shapes}.")
  return shapes[0][0]


def task_gradient_norms(task_grads: TaskGrads) -> jax.Array:
  """Euclidean norm of each task's gradient over all leaves.

  Args:
    task_grads: a pytree with leaves ``[T, *param_shape]``.

  Returns:
    ``[T]`` norms.
  """
  _num_tasks(task_grads)
  squares = [jnp.sum(jnp.square(leaf).reshape(leaf.shape[0], -1), axis=1)
             for leaf in jax.tree.leaves(task_grads)]
  return jnp.sqrt(sum(squares))


def _gramian(task_grads: TaskGrads) -> jax.Array:
  """``[T, T]`` inner products of the flattened task gradients, leaf by leaf."""
  num_tasks = _num_tasks(task_grads)
  leaves = jax.tree.leaves(task_grads)
  dtype = jnp.result_type(jnp.float32, *[leaf.dtype for leaf in leaves])
  gram = jnp.zeros((num_tasks, num_tasks), dtype)
  for leaf in leaves:
    flat = leaf.reshape(num_tasks, -1).astype(dtype)
    gram = gram + jnp.matmul(flat, flat.T, precision=_HIGHEST)
  return gram


def _combine(weights: jax.Array, task_grads: TaskGrads) -> Any:
  """``sum_i weights[i] * task_grads[i]`` on every leaf."""
  return jax.tree.map(
      lambda leaf: jnp.tensordot(weights.astype(leaf.dtype), leaf, axes=1,
                                 precision=_HIGHEST), task_grads)


def _weights_aggregator(weights_fn: Callable[[jax.Array], jax.Array]) -> Aggregator:
  """A stateless aggregator from ``weights_fn(gramian [T, T]) -> weights [T]``."""

  def update_fn(task_grads, state, params=None, **extra_args):
    del params, extra_args
    weights = weights_fn(_gramian(task_grads))
    return _combine(weights, task_grads), state

  return Aggregator(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------------
# Linear scalarisation.


def linear_scalarization(weights: Sequence[float] | jax.Array | None = None) -> Aggregator:
  """Weighted sum of the task gradients, ``sum_i weights[i] g_i``.

  The gradient of ``sum_i weights[i] L_i``; with ``weights=None`` the plain sum.
  Use it for task-specific parameters next to another aggregator on the shared
  ones (see the module docstring).

  Args:
    weights: ``[T]`` task weights, or None for all ones.

  Returns:
    A stateless aggregator.
  """
  fixed = None if weights is None else jnp.asarray(weights, jnp.float32)

  def update_fn(task_grads, state, params=None, **extra_args):
    del params, extra_args
    num_tasks = _num_tasks(task_grads)
    if fixed is not None and fixed.shape != (num_tasks,):
      raise ValueError(f"linear_scalarization has weights of shape {tuple(fixed.shape)} "
                       f"but task_grads have {num_tasks} tasks.")
    w = jnp.ones((num_tasks,), jnp.float32) if fixed is None else fixed
    return _combine(w, task_grads), state

  return Aggregator(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------------
# PCGrad.


class PCGradState(NamedTuple):
  """State of :func:`pcgrad`: the PRNG key of the next call."""

  key: jax.Array


def _pcgrad_weights(key: jax.Array, gram: jax.Array) -> jax.Array:
  """Weights ``c [T]`` with ``sum_i g_i^PC = sum_j c_j g_j``.

  Each projected gradient is a combination ``g_i^PC = sum_j C[i, j] g_j``;
  projecting ``g_i^PC`` off ``g_j`` changes row ``i`` only, using
  ``g_i^PC . g_j = (C G)[i, j]``.
  """
  num_tasks = gram.shape[0]
  # Row i: a uniformly random order of the tasks (i itself is skipped below).
  orders = jnp.argsort(jax.random.uniform(key, (num_tasks, num_tasks)), axis=1)
  tasks = jnp.arange(num_tasks)
  sq_norms = jnp.diag(gram)

  def project(coefficients, partners):
    dots = jnp.sum(coefficients * gram[partners], axis=1)  # g_i^PC . g_j, [T]
    safe = jnp.where(sq_norms[partners] > 0, sq_norms[partners], 1.0)
    conflict = (dots < 0) & (partners != tasks) & (sq_norms[partners] > 0)
    scale = jnp.where(conflict, dots / safe, 0.0)
    return coefficients.at[tasks, partners].add(-scale), None

  coefficients, _ = jax.lax.scan(project, jnp.eye(num_tasks, dtype=gram.dtype), orders.T,
                                 unroll=True)
  return jnp.sum(coefficients, axis=0)


def pcgrad(key: jax.Array, *, reduction: str = "sum") -> Aggregator:
  r"""Projecting Conflicting Gradients, PCGrad (Yu et al., 2020).

  For every task ``i``, in a random order of the other tasks ``j`` (drawn anew
  for each ``i`` at every call, paper Algorithm 1),

  .. math::
    g_i^{PC} \leftarrow g_i^{PC} - \frac{\min(g_i^{PC} \cdot g_j, 0)}{\|g_j\|^2} g_j ,

  and the update is :math:`\sum_i g_i^{PC}` (the paper's sum; ``reduction="mean"``
  divides by ``T``, as the CAGrad authors' PCGrad). Dot products use the
  original ``g_j`` and the partly projected ``g_i^{PC}``, as the reference
  implementations. LibMTL's loop also lets a task project onto itself, which
  the paper excludes; we follow the paper.

  Args:
    key: a PRNG key (``jax.random.key``) for the random task orders; it lives in
      the state and is split at every call.
    reduction: ``"sum"`` (paper, LibMTL) or ``"mean"``.

  Returns:
    An aggregator with a :class:`PCGradState`.

  Example:
    >>> agg = pcgrad(jax.random.key(0))
    >>> state = agg.init(None)
    >>> update, state = agg.update(jnp.array([[1.0, 0.0], [-1.0, 1.0]]), state)
    >>> update.tolist()  # [0.5, 0.5] + [0, 1]: each projected off the other
    [0.5, 1.5]

  References:
    Yu, Kumar, Gupta, Levine, Hausman & Finn, Gradient Surgery for Multi-Task
    Learning, NeurIPS 2020.
  """
  if reduction not in ("sum", "mean"):
    raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")

  def init_fn(params):
    del params
    return PCGradState(key)

  def update_fn(task_grads, state, params=None, **extra_args):
    del params, extra_args
    next_key, sample_key = jax.random.split(state.key)
    gram = _gramian(task_grads)
    weights = _pcgrad_weights(sample_key, gram)
    if reduction == "mean":
      weights = weights / gram.shape[0]
    return _combine(weights, task_grads), PCGradState(next_key)

  return Aggregator(init_fn, update_fn)


# ---------------------------------------------------------------------------
# MGDA: the min-norm solver of Sener & Koltun.


def _min_norm_2(v1v1, v1v2, v2v2):
  """``argmin_{gamma in [0, 1]} |gamma x1 + (1 - gamma) x2|^2`` and its value."""
  denominator = v1v1 + v2v2 - 2.0 * v1v2
  safe = jnp.where(denominator > 0, denominator, 1.0)
  gamma = jnp.where(v1v2 >= v1v1, 1.0,
                    jnp.where(v1v2 >= v2v2, 0.0, (v2v2 - v1v2) / safe))
  gamma = jnp.clip(gamma, 0.0, 1.0)
  cost = jnp.where(v1v2 >= v1v1, v1v1,
                   jnp.where(v1v2 >= v2v2, v2v2, v2v2 + gamma * (v1v2 - v2v2)))
  return gamma, cost


def _next_point(current, direction):
  """The projected-gradient step of Sener & Koltun's ``_next_point``."""
  n = current.shape[0]
  projected = direction - jnp.sum(direction) / n
  safe = jnp.where(projected == 0, 1.0, projected)
  to_zero = jnp.where(projected < 0, -current / safe, jnp.inf)
  to_one = jnp.where(projected > 0, (1.0 - current) / safe, jnp.inf)
  valid_zero = (projected < 0) & (to_zero > 1e-7)
  valid_one = (projected > 0) & (to_one > 1e-7)
  step = jnp.where(jnp.any(valid_zero), jnp.min(jnp.where(valid_zero, to_zero, jnp.inf)), 1.0)
  step = jnp.minimum(step, jnp.min(jnp.where(valid_one, to_one, jnp.inf)))
  return optax.projections.projection_simplex(projected * step + current)


def min_norm_solver(
    grads: jax.Array,
    *,
    method: str = "projected",
    max_steps: int = 250,
    tolerance: float = 1e-5,
) -> jax.Array:
  r"""Weights of the minimum-norm point of the convex hull of the rows of ``grads``.

  Solves :math:`\min_{w \in \Delta_T} \|\sum_i w_i g_i\|^2` as Sener & Koltun's
  ``MinNormSolver``: start from the best pair of tasks (the exact two-task
  solution :math:`\gamma = \mathrm{clip}((g_2 - g_1) \cdot g_2 / \|g_1 - g_2\|^2,
  0, 1)`, optimal when ``T = 2``), then iterate on the ``[T, T]`` Gram matrix
  with an exact line search until the weights change by less than
  ``tolerance`` (L1) or ``max_steps`` steps:

  * ``method="projected"``: their ``find_min_norm_element``, a projected
    gradient step onto the simplex; what their training code, LibMTL and the
    Nash-MTL code call.
  * ``method="frank_wolfe"``: their ``find_min_norm_element_FW``, the
    Frank-Wolfe iteration of the paper's Algorithm 2.

  Differences from the reference code: the two-point line search clips to
  ``[0, 1]`` where theirs returns 0.999 or 0.001 at the ends, and the loop is
  capped at ``max_steps`` (theirs never increments its counter).

  MGDA-UB is this solver applied to the gradients of the task losses with
  respect to the shared representation ``z = encoder(params, inputs)``: flatten
  them to ``[T, n * d]`` (e.g. with :func:`task_gradients` on ``z``), get ``w``,
  and train on ``sum_i stop_gradient(w_i) L_i``.

  Args:
    grads: ``[T, D]`` one (flattened) gradient per row.
    method: ``"projected"`` or ``"frank_wolfe"``.
    max_steps: iteration cap (the reference's ``MAX_ITER = 250``).
    tolerance: stop when ``sum |w_new - w| < tolerance`` (``STOP_CRIT = 1e-5``).

  Returns:
    ``[T]`` weights on the simplex.

  Raises:
    ValueError: if ``grads`` is not a matrix or ``method`` is unknown.

  References:
    Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization,
    NeurIPS 2018 (Algorithm 2; code: github.com/isl-org/MultiObjectiveOptimization).
  """
  if not hasattr(grads, "ndim") or grads.ndim != 2:
    raise ValueError(f"grads must have shape [T, D], got {getattr(grads, 'shape', grads)}.")
  grads = grads.astype(jnp.result_type(jnp.float32, grads.dtype))
  gram = jnp.matmul(grads, grads.T, precision=_HIGHEST)
  return _min_norm_weights(gram, method=method, max_steps=max_steps, tolerance=tolerance)


def _min_norm_weights(gram, *, method="projected", max_steps=250, tolerance=1e-5):
  if method not in ("projected", "frank_wolfe"):
    raise ValueError(f"method must be 'projected' or 'frank_wolfe', got {method!r}.")
  num_tasks = gram.shape[0]
  if num_tasks == 1:
    return jnp.ones((1,), gram.dtype)
  first, second = jnp.triu_indices(num_tasks, 1)
  gammas, costs = _min_norm_2(gram[first, first], gram[first, second], gram[second, second])
  best = jnp.argmin(costs)
  weights = jnp.zeros((num_tasks,), gram.dtype)
  weights = weights.at[first[best]].set(gammas[best])
  weights = weights.at[second[best]].add(1.0 - gammas[best])
  if num_tasks == 2:
    return weights

  def step(weights):
    gw = gram @ weights
    if method == "projected":
      new_point = _next_point(weights, -gw)
      v1v2 = new_point @ gw
      v2v2 = new_point @ gram @ new_point
    else:
      index = jnp.argmin(gw)
      new_point = jax.nn.one_hot(index, num_tasks, dtype=gram.dtype)
      v1v2 = gw[index]
      v2v2 = gram[index, index]
    gamma, _ = _min_norm_2(weights @ gw, v1v2, v2v2)
    return gamma * weights + (1.0 - gamma) * new_point

  def cond(carry):
    i, _, change = carry
    return (i < max_steps) & (change >= tolerance)

  def body(carry):
    i, weights, _ = carry
    new_weights = step(weights)
    change = jnp.sum(jnp.abs(new_weights - weights))
    # As the reference, keep the previous point once the change is small.
    return i + 1, jnp.where(change < tolerance, weights, new_weights), change

  _, weights, _ = jax.lax.while_loop(
      cond, body, (jnp.zeros((), jnp.int32), weights, jnp.array(jnp.inf, gram.dtype)))
  return weights


def mgda(
    *,
    normalization: str = "none",
    method: str = "projected",
    max_steps: int = 250,
    tolerance: float = 1e-5,
) -> Aggregator:
  r"""Multiple Gradient Descent Algorithm, MGDA (Sener & Koltun, 2018).

  The update is the minimum-norm element of the convex hull of the task
  gradients, :math:`\sum_i w_i g_i` with ``w`` from :func:`min_norm_solver`
  (weights sum to 1, so equal gradients give the same gradient back).

  ``normalization`` rescales each ``g_i`` before solving for ``w`` (the
  official code's ``gradient_normalizers``): ``"none"`` (LibMTL's default),
  ``"l2"`` (``|g_i|``), ``"loss"`` (``L_i``) or ``"loss+"`` (``L_i |g_i|``, the
  official ``sample.json``'s choice); the last two need ``update(...,
  task_losses=...)`` (inside ``aggregating.process`` that extra argument also
  reaches the postprocessor, which must accept or ignore it).
  As the official code (which scales the raw losses by ``w``), the update
  combines the *unnormalised* gradients; LibMTL combines the normalised ones.

  For MGDA-UB (gradients with respect to the shared representation), use
  :func:`min_norm_solver` directly.

  Args:
    normalization: ``"none"``, ``"l2"``, ``"loss"`` or ``"loss+"``.
    method: ``"projected"`` or ``"frank_wolfe"``, see :func:`min_norm_solver`.
    max_steps: iteration cap of the solver.
    tolerance: stopping tolerance of the solver.

  Returns:
    A stateless aggregator; ``update(task_grads, state, params=None, *,
    task_losses=None)``.

  References:
    Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization,
    NeurIPS 2018.
  """
  if normalization not in ("none", "l2", "loss", "loss+"):
    raise ValueError(
        f"normalization must be 'none', 'l2', 'loss' or 'loss+', got {normalization!r}.")
  if method not in ("projected", "frank_wolfe"):
    raise ValueError(f"method must be 'projected' or 'frank_wolfe', got {method!r}.")

  def update_fn(task_grads, state, params=None, *, task_losses=None, **extra_args):
    del params, extra_args
    gram = _gramian(task_grads)
    num_tasks = gram.shape[0]
    if normalization in ("loss", "loss+"):
      if task_losses is None or jnp.shape(task_losses) != (num_tasks,):
        got = None if task_losses is None else jnp.shape(task_losses)
        raise ValueError(
            f"mgda(normalization={normalization!r}) needs update(..., task_losses=...) "
            f"of shape [{num_tasks}], got {got}.")
    norms = jnp.sqrt(jnp.diag(gram))
    scale = {
        "none": jnp.ones((num_tasks,), gram.dtype),
        "l2": norms,
        "loss": None if task_losses is None else jnp.asarray(task_losses, gram.dtype),
        "loss+": None if task_losses is None else jnp.asarray(task_losses, gram.dtype) * norms,
    }[normalization]
    scale = jnp.where(scale == 0, 1.0, scale)
    normalized = gram / jnp.outer(scale, scale)
    weights = _min_norm_weights(normalized, method=method, max_steps=max_steps,
                                tolerance=tolerance)
    return _combine(weights, task_grads), state

  return Aggregator(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------------
# CAGrad.


def _simplex_minimize(grad_fn, decrease_fn, weights, num_steps):
  """Projected gradient descent on the simplex, step picked from a log grid.

  ``decrease_fn(w, w_new)`` is ``f(w_new) - f(w)`` computed without
  cancellation, so steps are compared to float precision in ``w`` (comparing
  ``f`` values directly would stop at the square root of it).
  """
  steps = jnp.logspace(-4.0, 2.0, 25, dtype=weights.dtype)

  def body(_, weights):
    grad = grad_fn(weights)
    candidates = jax.vmap(
        lambda s: optax.projections.projection_simplex(weights - s * grad))(steps)
    decreases = jax.vmap(decrease_fn, in_axes=(None, 0))(weights, candidates)
    best = jnp.argmin(decreases)
    return jnp.where(decreases[best] < 0, candidates[best], weights)

  return jax.lax.fori_loop(0, num_steps, body, weights)


def _simplex_polish(grad_fn, hessian_fn, weights, num_steps=3):
  """Newton steps on the face ``{w_i > 0}`` of the simplex, kept if they reduce
  the optimality residual ``|w - P(w - grad f(w))|_1`` and stay feasible."""
  num_tasks = weights.shape[0]

  def residual(w):
    return jnp.sum(jnp.abs(w - optax.projections.projection_simplex(w - grad_fn(w))))

  def body(_, w):
    free = w > 0
    grad, hessian = grad_fn(w), hessian_fn(w)
    ones = free.astype(w.dtype)
    reduced = jnp.where(jnp.outer(free, free), hessian, 0.0) + jnp.diag(1.0 - ones)
    system = jnp.block([[reduced, ones[:, None]], [ones[None, :], jnp.zeros((1, 1), w.dtype)]])
    rhs = jnp.concatenate([-jnp.where(free, grad, 0.0), jnp.zeros((1,), w.dtype)])
    step = jnp.linalg.solve(system, rhs)[:num_tasks] * ones
    candidate = w + step
    keep = (jnp.all(candidate >= 0) & jnp.all(jnp.isfinite(candidate))
            & (residual(candidate) < residual(w)))
    return jnp.where(keep, candidate, w)

  return jax.lax.fori_loop(0, num_steps, body, weights)


def _cagrad_weights(gram, c, rescale, num_steps):
  num_tasks = gram.shape[0]
  scale = jnp.trace(gram) / num_tasks
  scale = jnp.where(scale > 0, scale, 1.0)
  normalized = gram / scale  # the minimiser is scale-invariant; conditioning is not.
  mean = jnp.full((num_tasks,), 1.0 / num_tasks, gram.dtype)
  g0_norm = jnp.sqrt(jnp.maximum(mean @ normalized @ mean, 0.0) + 1e-8)
  radius = c * g0_norm
  g0_dots = normalized @ mean
  root = lambda w: jnp.sqrt(jnp.maximum(w @ normalized @ w, 0.0) + 1e-8)

  # The dual over the simplex: f(w) = g_w . g_0 + c |g_0| sqrt(|g_w|^2 + 1e-8).
  def grad_fn(w):
    return g0_dots + radius * (normalized @ w) / root(w)

  def hessian_fn(w):
    r, gw = root(w), normalized @ w
    return radius * (normalized / r - jnp.outer(gw, gw) / r**3)

  def decrease_fn(w, w_new):
    dw = w_new - w
    return dw @ g0_dots + radius * (dw @ normalized @ (w_new + w)) / (root(w_new) + root(w))

  w = _simplex_minimize(grad_fn, decrease_fn, mean, num_steps)
  w = _simplex_polish(grad_fn, hessian_fn, w)
  gw_norm = jnp.sqrt(jnp.maximum(w @ normalized @ w, 0.0))
  weights = mean + radius / (gw_norm + 1e-8) * w
  divisor = {0: 1.0, 1: 1.0 + c**2, 2: 1.0 + c}[rescale]
  return weights / divisor


def cagrad(c: float = 0.5, *, rescale: int = 1, num_steps: int = 200) -> Aggregator:
  r"""Conflict-Averse Gradient descent, CAGrad (Liu et al., 2021).

  With :math:`g_0 = \frac1T\sum_i g_i`, CAGrad looks for the update ``d`` that
  maximises the worst task improvement :math:`\min_i g_i \cdot d` in the ball
  :math:`\|d - g_0\| \le c\|g_0\|`. As the reference code, we solve the dual
  over the simplex,

  .. math::
    w^* = \arg\min_{w \in \Delta_T} \; g_w \cdot g_0 + c\|g_0\| \sqrt{\|g_w\|^2 + 10^{-8}},
    \qquad g_w = \textstyle\sum_i w_i g_i ,

  and return :math:`d = g_0 + \frac{c\|g_0\|}{\|g_{w^*}\| + 10^{-8}} g_{w^*}`
  divided by ``1`` (``rescale=0``), ``1 + c^2`` (``rescale=1``, the default of
  the official code and LibMTL) or ``1 + c`` (``rescale=2``). The reference
  solves the dual with SciPy's SLSQP; here it is projected gradient descent on
  the simplex with the step chosen from a logarithmic grid at every iteration
  (``num_steps`` iterations), then a few Newton steps on the active face, on
  the Gram matrix divided by its mean diagonal (which leaves ``w*`` unchanged).
  The tests check the result against SLSQP on the same dual (agreement to
  about 1e-3, where SLSQP's own accuracy lies) and that our dual objective is
  never worse. ``c = 0`` gives the mean gradient.

  The official code and the Nash-MTL code multiply ``d`` by ``T`` before the
  optimizer step ("to match the sum loss"); LibMTL does not; neither do we.

  Args:
    c: the radius scale ``c`` (``calpha``); 0.5 is LibMTL's default, the
      official NYUv2 script uses 0.4.
    rescale: 0, 1 or 2, see above.
    num_steps: iterations of the simplex solver.

  Returns:
    A stateless aggregator.

  References:
    Liu, Liu, Jin, Stone & Liu, Conflict-Averse Gradient Descent for
    Multi-task Learning, NeurIPS 2021 (code: github.com/Cranial-XIX/CAGrad).
  """
  if c < 0:
    raise ValueError(f"c must be >= 0, got {c}.")
  if rescale not in (0, 1, 2):
    raise ValueError(f"rescale must be 0, 1 or 2, got {rescale!r}.")
  return _weights_aggregator(lambda gram: _cagrad_weights(gram, c, rescale, num_steps))


# ---------------------------------------------------------------------------
# GradDrop.


class GradDropState(NamedTuple):
  """State of :func:`graddrop`: the PRNG key of the next call."""

  key: jax.Array


def graddrop(key: jax.Array, *, leak: float | Sequence[float] = 0.0) -> Aggregator:
  r"""Gradient sign dropout, GradDrop (Chen et al., 2020).

  Elementwise over every leaf: with the sign purity
  :math:`P = \frac12\bigl(1 + \frac{\sum_i g_i}{\sum_i |g_i| + 10^{-7}}\bigr)`
  and :math:`U \sim \mathcal U(0, 1)` drawn per element, task ``i`` keeps its
  gradient where :math:`M_i = [P > U][g_i > 0] + [P < U][g_i < 0]` is 1, and
  the update is :math:`\sum_i (\ell_i + (1 - \ell_i) M_i)\, g_i` (lines 10-15 of
  the paper's Algorithm 1 with ``f`` the identity, as TorchJD's ``GradDrop``;
  ``leak = 0`` by default as in LibMTL). Where all tasks agree in sign the
  update is the plain sum.

  The paper applies GradDrop to gradients with respect to a shared activation,
  after summing over the batch with a sign correction by the activation's sign
  (LibMTL does this); here it acts on whatever per-task gradients it is given:
  parameter gradients (as TorchJD and the CAGrad authors' code) or
  representation gradients prepared that way.

  Args:
    key: a PRNG key (``jax.random.key``); it lives in the state and is split at
      every call.
    leak: ``l`` scalar or ``[T]`` leak coefficients in ``[0, 1]``.

  Returns:
    An aggregator with a :class:`GradDropState`.

  References:
    Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, Just Pick a Sign:
    Optimizing Deep Multitask Models with Gradient Sign Dropout, NeurIPS 2020.
  """
  leak_array = jnp.asarray(leak, jnp.float32)
  if leak_array.ndim > 1 or jnp.any((leak_array < 0) | (leak_array > 1)):
    raise ValueError(f"leak must be a scalar or [T] vector in [0, 1], got {leak!r}.")

  def init_fn(params):
    del params
    return GradDropState(key)

  def update_fn(task_grads, state, params=None, **extra_args):
    del params, extra_args
    num_tasks = _num_tasks(task_grads)
    if leak_array.ndim == 1 and leak_array.shape[0] != num_tasks:
      raise ValueError(f"leak has {leak_array.shape[0]} entries but task_grads have "
                       f"{num_tasks} tasks.")
    next_key, sample_key = jax.random.split(state.key)
    leaves, treedef = jax.tree.flatten(task_grads)
    keys = jax.random.split(sample_key, len(leaves))

    def drop(leaf, leaf_key):
      purity = 0.5 * (1.0 + jnp.sum(leaf, 0) / (jnp.sum(jnp.abs(leaf), 0) + 1e-7))
      uniform = jax.random.uniform(leaf_key, leaf.shape[1:], purity.dtype)
      keep = (((purity > uniform) & (leaf > 0)) | ((purity < uniform) & (leaf < 0)))
      leak_t = jnp.broadcast_to(leak_array, (num_tasks,)).astype(leaf.dtype)
      leak_t = leak_t.reshape((num_tasks,) + (1,) * (leaf.ndim - 1))
      return jnp.sum((leak_t + (1 - leak_t) * keep.astype(leaf.dtype)) * leaf, axis=0)

    update = jax.tree.unflatten(
        treedef, [drop(leaf, k) for leaf, k in zip(leaves, keys, strict=True)])
    return update, GradDropState(next_key)

  return Aggregator(init_fn, update_fn)


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
  return _weights_aggregator(_imtl_g_weights)


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
    del params
    return NashMTLState(jnp.zeros((), jnp.int32), jnp.ones((num_tasks,), jnp.float32))

  def update_fn(task_grads, state, params=None, **extra_args):
    del params, extra_args
    if _num_tasks(task_grads) != num_tasks:
      raise ValueError(f"nash_mtl was built for {num_tasks} tasks but task_grads have "
                       f"{_num_tasks(task_grads)}.")
    gram = _gramian(task_grads)
    weights = jax.lax.cond(state.step % update_weights_every == 0,
                           lambda: _nash_weights(gram, max_steps),
                           lambda: state.weights.astype(gram.dtype))
    # The state keeps the unclipped weights, as the reference.
    new_state = NashMTLState(state.step + 1, weights.astype(state.weights.dtype))
    if max_norm > 0:
      norm = jnp.sqrt(jnp.maximum(weights @ gram @ weights, 0.0))
      weights = weights * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-30))
    return _combine(weights, task_grads), new_state

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
  return _weights_aggregator(lambda gram: _aligned_mtl_weights(gram, scale_mode))


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
  fixed = None if preference is None else jnp.asarray(preference, jnp.float32)

  def weights_fn(gram):
    num_tasks = gram.shape[0]
    if fixed is not None and fixed.shape != (num_tasks,):
      raise ValueError(f"upgrad has a preference of shape {tuple(fixed.shape)} but "
                       f"task_grads have {num_tasks} tasks.")
    pref = jnp.full((num_tasks,), 1.0 / num_tasks, gram.dtype) if fixed is None else fixed
    return _upgrad_weights(gram, pref, norm_eps, reg_eps)

  return _weights_aggregator(weights_fn)
