"""Min-norm and conflict-averse aggregators: MGDA (and its solver, for MGDA-UB) and CAGrad.

Both solve a small problem over the simplex of task weights on the ``[T, T]``
Gram matrix of the task gradients.

References:
  Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization (MGDA,
  MGDA-UB), NeurIPS 2018.
  Liu et al., Conflict-Averse Gradient Descent for Multi-task Learning
  (CAGrad), NeurIPS 2021.
"""

import jax
import jax.numpy as jnp
import optax

from metalax.mtl.aggregation.base import Aggregator
from metalax.mtl.aggregation.base import combine
from metalax.mtl.aggregation.base import HIGHEST
from metalax.mtl.aggregation.base import gramian
from metalax.mtl.aggregation.base import weights_aggregator


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


METHODS = ("active_set", "projected", "frank_wolfe")
"""The min-norm solvers: Wolfe's exact active-set method, and Sener & Koltun's two iterations."""


def _pair_weights(gram):
  """The exact two-task weights, each computed directly (no ``1 - gamma`` cancellation)."""
  a, b, c = gram[0, 0], gram[0, 1], gram[1, 1]
  denominator = a + c - 2.0 * b
  safe = jnp.where(denominator > 0, denominator, 1.0)
  interior = jnp.stack([c - b, a - b]) / safe
  ends = jnp.where(b >= a, jnp.array([1.0, 0.0], gram.dtype), jnp.array([0.0, 1.0], gram.dtype))
  return jnp.where((b >= a) | (b >= c), ends, interior)


def _affine_minimizer(gram, members):
  """Weights of the minimum-norm point of the affine hull of the ``members`` (a ``[T]`` bool mask).

  Solves ``[[G_SS, 1], [1^T, 0]] [w_S; -mu] = [0; 1]`` with identity rows for
  the non-members (whose weights come out 0), a static ``(T + 1)``-square system.
  """
  num_tasks = gram.shape[0]
  ones = members.astype(gram.dtype)
  reduced = jnp.where(jnp.outer(members, members), gram, 0.0) + jnp.diag(1.0 - ones)
  system = jnp.block([[reduced, ones[:, None]], [ones[None, :], jnp.zeros((1, 1), gram.dtype)]])
  rhs = jnp.zeros((num_tasks + 1,), gram.dtype).at[-1].set(1.0)
  return jnp.linalg.solve(system, rhs)[:num_tasks] * ones


def _active_set_weights(gram, max_steps, tolerance):
  """Wolfe's minimum-norm-point algorithm on the Gram matrix (static shapes, one solve per step).

  Keeps a set ``S`` of affinely independent gradients (the "corral") and weights
  ``w > 0`` on it. A step computes the minimiser ``v`` of the norm over the
  affine hull of ``S`` (:func:`_affine_minimizer`). If ``v > 0`` on ``S``, it
  becomes the point; then if no gradient improves on it (``|x|^2 - g_j . x <=
  tolerance |g_j| sum_i w_i |g_i|`` for all ``j``, with ``x = sum_i w_i g_i``:
  the rounding error of ``g_j . x``) it is the solution, else the most
  improving ``g_j`` joins ``S``. Otherwise the point moves from
  ``w`` towards ``v`` to the first weight that reaches zero and that gradient
  leaves ``S``. Each step strictly decreases the norm or shrinks ``S``, so
  the method ends, in practice after about ``|S*|`` to ``2 |S*|`` steps.
  """
  num_tasks = gram.shape[0]
  scale = jnp.max(jnp.diag(gram))
  gram = gram / jnp.where(scale > 0, scale, 1.0)   # max |g_i|^2 = 1
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  start = jnp.argmin(jnp.diag(gram))
  members = jax.nn.one_hot(start, num_tasks, dtype=bool)
  weights = members.astype(gram.dtype)
  index = jnp.arange(num_tasks)

  def body(carry):
    i, members, weights, _ = carry
    v = _affine_minimizer(gram, members)
    finite = jnp.all(jnp.isfinite(v))   # a singular system (numerically dependent corral): stop
    inside = jnp.all(jnp.where(members, v > 0, True)) & finite
    # v is inside the simplex: stop, or add the gradient that improves most on x = sum v_i g_i:
    # g_j improves if |x|^2 - g_j . x exceeds the rounding of g_j . x, ~ |g_j| sum_i v_i |g_i|.
    dots = gram @ v
    improvement = v @ dots - dots
    rounding = tolerance * norms * (v @ norms)
    improves = improvement > rounding
    best = jnp.argmax(jnp.where(improves, improvement, -jnp.inf))
    optimal = ~jnp.any(improves) | members[best]
    grown = members | ((index == best) & ~optimal)
    # v is outside: walk from w towards v to the first zero weight, and drop it.
    ratios = jnp.where(members & (v <= 0), weights / jnp.maximum(weights - v, 1e-30), jnp.inf)
    leaving = jnp.argmin(ratios)
    walked = weights + ratios[leaving] * (v - weights)
    shrunk = members & (walked > 0) & (index != leaving)
    walked = jnp.where(shrunk, walked, 0.0)
    walked = walked / jnp.sum(walked)
    new_weights = jnp.where(inside, v, jnp.where(finite, walked, weights))
    return i + 1, jnp.where(inside, grown, shrunk), new_weights, (inside & optimal) | ~finite

  def cond(carry):
    i, _, _, done = carry
    return (i < max_steps) & ~done

  _, _, weights, _ = jax.lax.while_loop(
      cond, body, (jnp.zeros((), jnp.int32), members, weights, jnp.zeros((), bool)))
  return weights


def min_norm_solver(
    grads: jax.Array,
    *,
    method: str = "active_set",
    max_steps: int = 250,
    tolerance: float | None = None,
) -> jax.Array:
  r"""Weights of the minimum-norm point of the convex hull of the rows of ``grads``.

  Solves :math:`\min_{w \in \Delta_T} \|\sum_i w_i g_i\|^2` on the ``[T, T]``
  Gram matrix. Three methods:

  * ``method="active_set"`` (the default): Wolfe's minimum-norm-point
    algorithm, an active-set method that is exact once it has found the
    gradients with positive weight (each step solves the ``(T + 1)``-square
    KKT system of the current set; static shapes, a ``while_loop`` of about
    ``|support|`` to ``2 |support|`` steps). It stops when no gradient improves
    on the current point ``x`` by more than the rounding error of ``g_j . x``,
    ``tolerance |g_j| sum_i w_i |g_i|`` (default ``10 * eps`` of the dtype). Against an exact enumeration
    of active sets (float64) on conflicting Jacobians of 2 to 10 tasks, the
    float32 update ``sum_i w_i g_i`` is within 1e-6 (relative) of the exact
    min-norm point (tested at 2e-6); duplicate and linearly dependent
    gradients, gradients of very different scales and Jacobians whose hull
    contains the origin are handled.
  * ``method="projected"``: Sener & Koltun's ``find_min_norm_element``, a
    projected gradient step onto the simplex with an exact line search, from
    the best pair of tasks, until the weights change by less than
    ``tolerance`` (L1; default their ``STOP_CRIT = 1e-5``) or ``max_steps``
    steps; what their training code, LibMTL and the Nash-MTL code call.
  * ``method="frank_wolfe"``: their ``find_min_norm_element_FW``, the
    Frank-Wolfe iteration of the paper's Algorithm 2, with the same start and
    stopping rule.

  The two iterations are sublinear: with their stopping rule they end up to
  1e-4 (``"projected"``, ``T <= 6``) and 0.3 (both, ``T = 7..10``) away
  (relative) from the exact point on the same Jacobians in float32, and
  tighter tolerances stall well before machine precision. They are kept as
  transcriptions of the reference. Differences from the reference code: the
  two-point line search clips to ``[0, 1]`` where theirs returns 0.999 or
  0.001 at the ends, and the loop is capped at ``max_steps`` (theirs never
  increments its counter).

  MGDA-UB is this solver applied to the gradients of the task losses with
  respect to the shared representation ``z = encoder(params, inputs)``: flatten
  them to ``[T, n * d]`` (e.g. with :func:`task_gradients` on ``z``), get ``w``,
  and train on ``sum_i stop_gradient(w_i) L_i``.

  Args:
    grads: ``[T, D]`` one (flattened) gradient per row.
    method: ``"active_set"``, ``"projected"`` or ``"frank_wolfe"``.
    max_steps: iteration cap (the reference's ``MAX_ITER = 250``).
    tolerance: the stopping tolerance of the method (see above); None for its default.

  Returns:
    ``[T]`` weights on the simplex.

  Raises:
    ValueError: if ``grads`` is not a matrix or ``method`` is unknown.

  References:
    Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization,
    NeurIPS 2018 (Algorithm 2; code: github.com/isl-org/MultiObjectiveOptimization);
    Wolfe, Finding the nearest point in a polytope, Mathematical Programming, 1976.
  """
  if not hasattr(grads, "ndim") or grads.ndim != 2:
    raise ValueError(f"grads must have shape [T, D], got {getattr(grads, 'shape', grads)}.")
  grads = grads.astype(jnp.result_type(jnp.float32, grads.dtype))
  gram = jnp.matmul(grads, grads.T, precision=HIGHEST)
  return _min_norm_weights(gram, method=method, max_steps=max_steps, tolerance=tolerance)


def _min_norm_weights(gram, *, method="active_set", max_steps=250, tolerance=None):
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
  num_tasks = gram.shape[0]
  if num_tasks == 1:
    return jnp.ones((1,), gram.dtype)
  if method == "active_set" and num_tasks == 2:
    return _pair_weights(gram)
  if method == "active_set":
    if tolerance is None:
      tolerance = 10 * jnp.finfo(gram.dtype).eps
    return _active_set_weights(gram, max_steps, tolerance)
  if tolerance is None:
    tolerance = 1e-5
  # The best pair of tasks, in closed form: the solution when T = 2, the start of the iterations.
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
    method: str = "active_set",
    max_steps: int = 250,
    tolerance: float | None = None,
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
    method: ``"active_set"`` (exact), ``"projected"`` or ``"frank_wolfe"``
      (Sener & Koltun's iterations), see :func:`min_norm_solver`.
    max_steps: iteration cap of the solver.
    tolerance: stopping tolerance of the solver; None for the method's default.

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
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}.")

  def update_fn(task_grads, state, params=None, *, task_losses=None, **extra_args):
    del params, extra_args
    gram = gramian(task_grads)
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
    return combine(weights, task_grads), state

  return Aggregator(optax.init_empty_state, update_fn)


# ---------------------------------------------------------------------------
# CAGrad.


def _simplex_minimize(grad_fn, decrease_fn, weights, num_steps):
  """Projected gradient descent on the simplex with an adaptive step.

  Each iteration tries five steps around the last accepted one (``s * 4^k``,
  ``k = -2..2``, starting from ``s = 1`` on the trace-normalised Gram matrix),
  keeps the best if it decreases the objective, and otherwise shrinks ``s``
  16-fold. ``decrease_fn(w, w_new)`` is ``f(w_new) - f(w)`` computed without
  cancellation, so steps are compared to float precision in ``w`` (comparing
  ``f`` values directly would stop at the square root of it).
  """
  factors = 4.0 ** jnp.arange(-2, 3, dtype=weights.dtype)

  def body(_, carry):
    weights, step = carry
    grad = grad_fn(weights)
    steps = step * factors
    candidates = jax.vmap(
        lambda s: optax.projections.projection_simplex(weights - s * grad))(steps)
    decreases = jax.vmap(decrease_fn, in_axes=(None, 0))(weights, candidates)
    best = jnp.argmin(decreases)
    accepted = decreases[best] < 0
    return (jnp.where(accepted, candidates[best], weights),
            jnp.where(accepted, steps[best], steps[0]))

  return jax.lax.fori_loop(0, num_steps, body, (weights, jnp.ones((), weights.dtype)))[0]


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


def cagrad(c: float = 0.5, *, rescale: int = 1, num_steps: int = 60) -> Aggregator:
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
  the simplex (``num_steps`` iterations, each trying five step sizes around the
  last accepted one), then a few Newton steps on the active face, on the Gram
  matrix divided by its mean diagonal (which leaves ``w*`` unchanged). 60
  iterations reached SLSQP's optimum of the dual to within 1e-8 on random,
  rank-deficient and badly scaled Gram matrices up to ``T = 40`` (a
  measurement recorded in BUILD_NOTES.md; the tests check the rank-deficient
  and badly scaled cases at ``T = 10``).
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
  return weights_aggregator(lambda gram: _cagrad_weights(gram, c, rescale, num_steps))
