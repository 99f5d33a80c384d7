"""Loss weightings for multi-task learning: task losses ``[T]`` -> one scalar loss.

A loss weighting is a :class:`LossWeighting`, a NamedTuple of pure functions,
built by a constructor that closes over the hyperparameters (the optax way):

* ``init(num_tasks) -> (weighting_params, state)``. ``weighting_params`` is a
  pytree trained by the outer optimizer together with the model (empty ``{}``
  for weightings that learn nothing); ``state`` is carried by the caller from
  one call to the next, like an optax optimizer state.
* ``loss(weighting_params, task_losses [T], state, **extra_args) -> (total_loss,
  (weights [T], new_state))``. ``total_loss`` is the scalar to differentiate,
  ``weights`` are the task weights it used (for logging), ``new_state``
  replaces ``state``. Every weighting accepts and ignores extra keyword
  arguments it does not use (as optax's ``update(..., **extra_args)``).
* ``project(weighting_params) -> weighting_params`` (or None): applied to the
  weighting parameters after every optimizer step (GradNorm rescales its
  weights to sum to ``T``).
* ``requires``: the names of the extra arguments ``loss`` needs, which the
  training step computes only for the weightings that ask:

  - ``"task_gradient_norms"``: ``[T]`` norms of the per-task gradients with
    respect to a chosen set of shared parameters (:func:`gradnorm`);
  - ``"representation_gradients"``: ``[T, n, ...]`` per-task gradients with
    respect to the shared representation ``z`` (:func:`mgda_ub`).

  :func:`metalax.mtl.train_step` provides both (see its ``gradient_norm_params``
  and ``representation`` arguments).

The signature puts learnable weightings (uncertainty weighting, whose
log-variances are trained by gradient descent; GradNorm, whose weights are
trained by its balance loss) on the same footing as fixed ones: the caller
differentiates ``total_loss`` with respect to ``{"model": params,
"weighting": weighting_params}`` in one ``jax.grad`` and hands the whole
gradient to one optax optimizer. For weightings that learn nothing
``weighting_params`` is ``{}`` and gets an empty gradient. Every weighting's
``total_loss`` has ``d total / d L_i = weights[i]``: the model gradient is
``sum_i weights[i] grad L_i``.

Example::

  weighting = metalax.mtl.uncertainty_weighting()
  weighting_params, weighting_state = weighting.init(num_tasks)
  params = {"model": model_params, "weighting": weighting_params}
  opt_state = optimizer.init(params)

  def objective(params, batch, weighting_state):
    task_losses = task_losses_fn(params["model"], batch)            # [T]
    return weighting.loss(params["weighting"], task_losses, weighting_state)

  (loss, (weights, weighting_state)), grads = jax.value_and_grad(
      objective, has_aux=True)(params, batch, weighting_state)

:func:`metalax.mtl.train_step` does this (and the extra arguments, the
projection, aggregators and task scheduling) in one jittable step.

Weights of the non-learnable weightings are constants for the gradient
(``jax.lax.stop_gradient``): only the task losses carry gradient to the model.

References:
  Kendall, Gal & Cipolla, Multi-Task Learning Using Uncertainty to Weigh Losses
  for Scene Geometry and Semantics, CVPR 2018.
  Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR 2019.
  Lin, Ye, Xu, Shi & Zhang, Reasonable Effectiveness of Random Weighting: A
  Litmus Test for Multi-Task Learning, TMLR 2022 (arXiv:2111.10603, 2021).
  Chen, Badrinarayanan, Lee & Rabinovich, GradNorm: Gradient Normalization for
  Adaptive Loss Balancing in Deep Multitask Networks, ICML 2018.
  Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization,
  NeurIPS 2018 (MGDA-UB).
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from metalax.mtl.aggregation.min_norm import min_norm_solver

WeightingParams = Any
"""A pytree of arrays trained by the outer optimizer (``{}`` when none)."""

WeightingState = Any
"""A pytree of arrays carried between calls (``()`` when none)."""


class LossWeighting(NamedTuple):
  """Pure functions of one loss weighting. Holds no arrays and no state.

  Attributes:
    init: ``init(num_tasks) -> (weighting_params, state)``.
    loss: ``loss(weighting_params, task_losses [T], state, **extra_args) ->
      (total_loss [], (weights [T], new_state))``.
    project: ``project(weighting_params) -> weighting_params``, applied after
      every optimizer step; None for none.
    requires: names of the extra arguments ``loss`` needs (see the module
      docstring); ``()`` for none.
  """

  init: Callable[[int], tuple[WeightingParams, WeightingState]]
  loss: Callable[..., tuple[jax.Array, tuple[jax.Array, WeightingState]]]
  project: Callable[[WeightingParams], WeightingParams] | None = None
  requires: tuple[str, ...] = ()


def _check_task_losses(task_losses: jax.Array, num_tasks: int | None = None) -> None:
  if not hasattr(task_losses, "shape") or task_losses.ndim != 1:
    shape = tuple(task_losses.shape) if hasattr(task_losses, "shape") else type(task_losses)
    raise ValueError(f"task_losses must have shape [T] (one loss per task), got {shape}.")
  if num_tasks is not None and task_losses.shape[0] != num_tasks:
    raise ValueError(
        f"task_losses must have shape [{num_tasks}] (the number of tasks this "
        f"weighting was built or initialised for), got {tuple(task_losses.shape)}.")


def _check_num_tasks(num_tasks: int) -> None:
  if not isinstance(num_tasks, int) or num_tasks < 1:
    raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}.")


def _weighted_sum(weights: jax.Array, task_losses: jax.Array) -> jax.Array:
  return jnp.sum(weights * task_losses)


# ---------------------------------------------------------------------------
# Fixed weightings.


def static_weighting(weights: Sequence[float] | jax.Array) -> LossWeighting:
  """Fixed, user-given task weights: ``total_loss = sum_i weights[i] * L_i``.

  Args:
    weights: ``[T]`` non-negative task weights.

  Returns:
    A :class:`LossWeighting` with no parameters and no state.

  Raises:
    ValueError: if ``weights`` is not a non-empty vector, or (at ``init``/``loss``)
      its length differs from the number of tasks.

  Example:
    >>> weighting = static_weighting([1.0, 0.5])
    >>> params, state = weighting.init(2)
    >>> loss, (weights, state) = weighting.loss(params, jnp.array([2.0, 4.0]), state)
    >>> float(loss)
    4.0
  """
  weights = jnp.asarray(weights, dtype=jnp.float32)
  if weights.ndim != 1 or weights.shape[0] == 0:
    raise ValueError(f"weights must have shape [T] with T >= 1, got {tuple(weights.shape)}.")
  num_tasks = weights.shape[0]

  def init_fn(n):
    _check_num_tasks(n)
    if n != num_tasks:
      raise ValueError(f"static_weighting was given {num_tasks} weights but init got "
                       f"num_tasks={n}.")
    return {}, ()

  def loss_fn(params, task_losses, state, **extra_args):
    del params, extra_args
    _check_task_losses(task_losses, num_tasks)
    w = weights.astype(task_losses.dtype)
    return _weighted_sum(w, task_losses), (w, state)

  return LossWeighting(init_fn, loss_fn)


def equal_weighting() -> LossWeighting:
  """Equal weights, ``total_loss = sum_i L_i`` (all weights 1, as LibMTL's EW).

  Returns:
    A :class:`LossWeighting` with no parameters and no state.

  Example:
    >>> weighting = equal_weighting()
    >>> params, state = weighting.init(3)
    >>> loss, (weights, _) = weighting.loss(params, jnp.array([1.0, 2.0, 3.0]), state)
    >>> float(loss), weights.tolist()
    (6.0, [1.0, 1.0, 1.0])
  """

  def init_fn(num_tasks):
    _check_num_tasks(num_tasks)
    return {}, ()

  def loss_fn(params, task_losses, state, **extra_args):
    del params, extra_args
    _check_task_losses(task_losses)
    weights = jnp.ones_like(task_losses)
    return _weighted_sum(weights, task_losses), (weights, state)

  return LossWeighting(init_fn, loss_fn)


# ---------------------------------------------------------------------------
# Uncertainty weighting (learnable).


def uncertainty_weighting(
    task_types: Sequence[str] | None = None,
    *,
    init_log_variance: float = 0.0,
) -> LossWeighting:
  r"""Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, 2018).

  Each task has a learnable log-variance ``s_i = log sigma_i^2`` (unconstrained,
  as the paper recommends for stability), stored in
  ``weighting_params = {"log_variances": s}`` and trained by the outer optimizer
  together with the model. The total loss is, per task type,

  * ``"regression"`` (Gaussian likelihood, paper eq. 7):
    :math:`\frac{1}{2\sigma_i^2} L_i + \log\sigma_i = \tfrac12 e^{-s_i} L_i + \tfrac12 s_i`;
  * ``"classification"`` (scaled softmax, the approximation of paper eq. 10):
    :math:`\frac{1}{\sigma_i^2} L_i + \log\sigma_i = e^{-s_i} L_i + \tfrac12 s_i`.

  With ``task_types=None`` every task uses the regression form. That is what
  LibMTL's ``UW`` (``losses / (2 * exp(s)) + s / 2`` for all tasks, ``s``
  initialised to -0.5), the MTAN code (same form, ``logsigma`` initialised to
  -0.5) and the Nash-MTL code (same form, initialised to 0) implement.

  Minimising over ``s_i`` alone gives ``e^{s_i} = L_i`` (regression) or
  ``2 L_i`` (classification): each task's weight tends to the inverse of its loss.

  Args:
    task_types: ``[T]`` strings, each ``"regression"`` or ``"classification"``;
      None for the regression form on every task.
    init_log_variance: initial value of every ``s_i`` (0.0, i.e. ``sigma = 1``;
      LibMTL and MTAN use -0.5).

  Returns:
    A :class:`LossWeighting` whose ``weights`` are the factors in front of the
    task losses, ``e^{-s}/2`` or ``e^{-s}`` (differentiable in ``s``).

  Raises:
    ValueError: on an unknown task type, or a number of tasks that differs from
      ``len(task_types)``.

  Example:
    >>> weighting = uncertainty_weighting(["regression", "classification"])
    >>> params, state = weighting.init(2)
    >>> loss, (weights, _) = weighting.loss(params, jnp.array([2.0, 1.0]), state)
    >>> float(loss), weights.tolist()
    (2.0, [0.5, 1.0])

  References:
    Kendall, Gal & Cipolla, Multi-Task Learning Using Uncertainty to Weigh
    Losses for Scene Geometry and Semantics, CVPR 2018.
  """
  factors = None
  if task_types is not None:
    task_types = tuple(task_types)
    unknown = [t for t in task_types if t not in ("regression", "classification")]
    if unknown or not task_types:
      raise ValueError(
          "task_types must be a non-empty sequence of 'regression' or "
          f"'classification', got {task_types!r}.")
    factors = jnp.array([0.5 if t == "regression" else 1.0 for t in task_types])

  def init_fn(num_tasks):
    _check_num_tasks(num_tasks)
    if factors is not None and num_tasks != factors.shape[0]:
      raise ValueError(f"uncertainty_weighting was given {factors.shape[0]} task types "
                       f"but init got num_tasks={num_tasks}.")
    return {"log_variances": jnp.full((num_tasks,), init_log_variance, jnp.float32)}, ()

  def loss_fn(params, task_losses, state, **extra_args):
    del extra_args
    log_variances = params["log_variances"]
    _check_task_losses(task_losses, log_variances.shape[0])
    scale = jnp.full_like(task_losses, 0.5) if factors is None else factors.astype(
        task_losses.dtype)
    weights = scale * jnp.exp(-log_variances)
    total = jnp.sum(weights * task_losses + 0.5 * log_variances)
    return total, (weights, state)

  return LossWeighting(init_fn, loss_fn)


# ---------------------------------------------------------------------------
# Dynamic weight average.


class DynamicWeightAverageState(NamedTuple):
  """State of :func:`dynamic_weight_average`.

  Attributes:
    step: int32 number of ``loss`` calls in the current epoch.
    epoch_loss_sum: ``[T]`` sum of the task losses seen in the current epoch.
    last_epoch_losses: ``[T]`` mean task losses of the last completed epoch.
    previous_epoch_losses: ``[T]`` mean task losses of the epoch before it.
    num_epochs: int32 number of completed epochs.
  """

  step: jax.Array
  epoch_loss_sum: jax.Array
  last_epoch_losses: jax.Array
  previous_epoch_losses: jax.Array
  num_epochs: jax.Array


def dynamic_weight_average(
    temperature: float = 2.0,
    *,
    steps_per_epoch: int = 1,
) -> LossWeighting:
  r"""Dynamic Weight Average, DWA (Liu, Johns & Davison, 2019).

  With :math:`\bar L_i(k)` the mean loss of task ``i`` over epoch ``k``,

  .. math::
    r_i = \bar L_i(k-1) / \bar L_i(k-2), \qquad
    \lambda_i(k) = T \, \mathrm{softmax}(r / \tau)_i,

  and :math:`\lambda_i = 1` for the first two epochs; ``total_loss = sum_i
  lambda_i L_i`` (weights sum to ``T``).

  An "epoch" is ``steps_per_epoch`` calls of ``loss``: the weights stay fixed
  for that many calls, the state averages the task losses it is given over them,
  and the next epoch's weights use the last two such averages. With the default
  ``steps_per_epoch=1`` every call is an epoch (the ratio of the last two calls'
  losses). Setting it to the number of batches per epoch reproduces the MTAN
  and LibMTL code, which use epoch-averaged training losses.

  Args:
    temperature: softmax temperature ``tau`` (2.0 in the paper and LibMTL).
    steps_per_epoch: number of ``loss`` calls per epoch.

  Returns:
    A :class:`LossWeighting` with no parameters and a
    :class:`DynamicWeightAverageState`.

  Raises:
    ValueError: if ``temperature <= 0`` or ``steps_per_epoch < 1``.

  Example:
    >>> weighting = dynamic_weight_average()
    >>> params, state = weighting.init(2)
    >>> for losses in ([1.0, 1.0], [0.5, 1.0], [0.5, 1.0]):
    ...   loss, (weights, state) = weighting.loss(params, jnp.array(losses), state)
    >>> [round(w, 4) for w in weights.tolist()]  # softmax([0.5, 1.0] / 2) * 2
    [0.8756, 1.1244]

  References:
    Liu, Johns & Davison, End-to-End Multi-Task Learning with Attention, CVPR
    2019 (Sec. 3.3, T = 2).
  """
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
  if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}.")

  def init_fn(num_tasks):
    _check_num_tasks(num_tasks)
    zeros = jnp.zeros((num_tasks,), jnp.float32)
    zero = jnp.zeros((), jnp.int32)
    return {}, DynamicWeightAverageState(zero, zeros, zeros, zeros, zero)

  def loss_fn(params, task_losses, state, **extra_args):
    del params, extra_args
    _check_task_losses(task_losses, state.epoch_loss_sum.shape[0])
    num_tasks = task_losses.shape[0]
    ratios = state.last_epoch_losses / jnp.where(
        state.previous_epoch_losses == 0, 1.0, state.previous_epoch_losses)
    dynamic = num_tasks * jax.nn.softmax(ratios / temperature)
    weights = jnp.where(state.num_epochs >= 2, dynamic, 1.0).astype(task_losses.dtype)
    total = _weighted_sum(weights, task_losses)

    losses = jax.lax.stop_gradient(task_losses).astype(state.epoch_loss_sum.dtype)
    step = state.step + 1
    epoch_loss_sum = state.epoch_loss_sum + losses
    epoch_done = step >= steps_per_epoch
    new_state = DynamicWeightAverageState(
        step=jnp.where(epoch_done, 0, step),
        epoch_loss_sum=jnp.where(epoch_done, 0.0, epoch_loss_sum),
        last_epoch_losses=jnp.where(epoch_done, epoch_loss_sum / steps_per_epoch,
                                    state.last_epoch_losses),
        previous_epoch_losses=jnp.where(epoch_done, state.last_epoch_losses,
                                        state.previous_epoch_losses),
        num_epochs=state.num_epochs + epoch_done.astype(jnp.int32),
    )
    return total, (weights, new_state)

  return LossWeighting(init_fn, loss_fn)


# ---------------------------------------------------------------------------
# Random loss weighting.


class RandomLossWeightingState(NamedTuple):
  """State of :func:`random_loss_weighting`: the PRNG key of the next call."""

  key: jax.Array


def random_loss_weighting(key: jax.Array) -> LossWeighting:
  r"""Random loss weighting, RLW (Lin et al., 2021).

  Every call draws :math:`\tilde\lambda \sim \mathcal N(0, I_T)` and uses
  :math:`\lambda = \mathrm{softmax}(\tilde\lambda)` (weights sum to 1), the
  paper's default normal sampling, as LibMTL's ``RLW`` with ``dist='Normal'``
  and the Nash-MTL code. The key lives in the state and is split at every call,
  as optax's noise transforms do, so the weights are reproducible from ``key``.

  Args:
    key: a PRNG key, from ``jax.random.key``.

  Returns:
    A :class:`LossWeighting` with no parameters and a
    :class:`RandomLossWeightingState`.

  Example:
    >>> weighting = random_loss_weighting(jax.random.key(0))
    >>> params, state = weighting.init(3)
    >>> loss, (weights, state) = weighting.loss(params, jnp.ones(3), state)
    >>> round(float(weights.sum()), 5)
    1.0

  References:
    Lin, Ye, Xu, Shi & Zhang, Reasonable Effectiveness of Random Weighting: A
    Litmus Test for Multi-Task Learning, TMLR 2022 (arXiv:2111.10603, 2021).
  """

  def init_fn(num_tasks):
    _check_num_tasks(num_tasks)
    return {}, RandomLossWeightingState(key)

  def loss_fn(params, task_losses, state, **extra_args):
    del params, extra_args
    _check_task_losses(task_losses)
    next_key, sample_key = jax.random.split(state.key)
    logits = jax.random.normal(sample_key, task_losses.shape, task_losses.dtype)
    weights = jax.nn.softmax(logits)
    return _weighted_sum(weights, task_losses), (weights, RandomLossWeightingState(next_key))

  return LossWeighting(init_fn, loss_fn)


# ---------------------------------------------------------------------------
# GradNorm.


class GradNormState(NamedTuple):
  """State of :func:`gradnorm`.

  Attributes:
    initial_losses: ``[T]`` task losses at the first call, ``L_i(0)``.
    step: int32 number of ``loss`` calls so far.
  """

  initial_losses: jax.Array
  step: jax.Array


def gradnorm(alpha: float = 1.5) -> LossWeighting:
  r"""GradNorm (Chen et al., 2018): learn weights that balance gradient norms.

  The weights ``w = weighting_params["weights"]`` (``[T]``, initialised to 1)
  are trained by minimising

  .. math::
    L_{grad} = \sum_i \bigl| G_i - \mathrm{sg}\bigl[\bar G\, r_i^{\alpha}\bigr] \bigr|,
    \quad G_i = w_i \|\nabla_W L_i\|, \quad \bar G = \tfrac1T \textstyle\sum_j G_j,
    \quad r_i = \frac{\tilde L_i}{\tfrac1T\sum_j \tilde L_j},
    \quad \tilde L_i = L_i(t) / L_i(0),

  where ``W`` are the shared parameters whose gradients are balanced (the
  paper: the last shared layer; LibMTL: all shared parameters) and ``sg``
  stops the gradient (the target is a constant, paper Sec. 3.2). The model is
  trained by ``sum_i w_i L_i`` with ``w`` held constant, and after every
  optimizer step the weights are renormalised to sum to ``T`` (``project``).

  ``loss`` returns ``total_loss = sum_i sg(w_i) L_i + L_grad``: the first term
  does not depend on ``w`` and the second not on the model, so one
  ``jax.grad`` of ``total_loss`` trains both. It needs the extra argument
  ``task_gradient_norms [T]``, ``||grad_W L_i||``, the norms of the
  *unweighted* per-task gradients; since ``w_i > 0``, ``||grad_W (w_i L_i)|| =
  w_i * task_gradient_norms[i]`` exactly, so the norms are constants.
  :func:`metalax.mtl.train_step` computes them (one vectorised pass of ``T``
  backward passes, :func:`metalax.mtl.task_gradients`) on the parameters its
  ``gradient_norm_params`` selects. ``L_i(0)`` are the task losses of the
  first ``loss`` call (at that call ``r_i = 1``).

  Args:
    alpha: the asymmetry ("restoring force") hyperparameter: larger values
      pull the tasks' training rates together more strongly. 1.5 is LibMTL's
      default (the SamsungLabs MTL code defaults to 2; the paper uses 0.12 on
      its toy problem).

  Returns:
    A :class:`LossWeighting` with ``weighting_params = {"weights": [T]}``, a
    :class:`GradNormState`, ``project`` the renormalisation and ``requires =
    ("task_gradient_norms",)``.

  Raises:
    ValueError: (at ``loss``) when ``task_gradient_norms`` is missing or not
      ``[T]``.

  Example::

    weighting = metalax.mtl.gradnorm(alpha=0.12)
    params, state = weighting.init(2)
    total, (weights, state) = weighting.loss(
        params, task_losses, state, task_gradient_norms=jnp.array([0.5, 2.0]))

  References:
    Chen, Badrinarayanan, Lee & Rabinovich, GradNorm: Gradient Normalization
    for Adaptive Loss Balancing in Deep Multitask Networks, ICML 2018.
  """

  def init_fn(num_tasks):
    _check_num_tasks(num_tasks)
    return ({"weights": jnp.ones((num_tasks,), jnp.float32)},
            GradNormState(jnp.zeros((num_tasks,), jnp.float32), jnp.zeros((), jnp.int32)))

  def initial_losses(task_losses, state):
    losses = jax.lax.stop_gradient(task_losses).astype(state.initial_losses.dtype)
    return jnp.where(state.step == 0, losses, state.initial_losses)

  def balance_loss(params, grad_norms, task_losses, state):
    norms = params["weights"] * jax.lax.stop_gradient(grad_norms)
    losses = jax.lax.stop_gradient(task_losses)
    inverse_rates = losses / initial_losses(losses, state)
    relative_rates = inverse_rates / jnp.mean(inverse_rates)
    target = jax.lax.stop_gradient(jnp.mean(norms) * relative_rates**alpha)
    return jnp.sum(jnp.abs(norms - target))

  def loss_fn(params, task_losses, state, *, task_gradient_norms=None, **extra_args):
    del extra_args
    weights = jax.lax.stop_gradient(params["weights"])
    _check_task_losses(task_losses, weights.shape[0])
    if task_gradient_norms is None:
      raise ValueError("gradnorm needs loss(..., task_gradient_norms=[T]), the norms of the per-task gradients "
                       "at the balanced shared parameters; metalax.mtl.train_step provides them.")
    if jnp.shape(task_gradient_norms) != task_losses.shape:
      raise ValueError(f"task_gradient_norms must have shape {tuple(task_losses.shape)} (one norm per task), "
                       f"got {tuple(jnp.shape(task_gradient_norms))}.")
    weights = weights.astype(task_losses.dtype)
    total = _weighted_sum(weights, task_losses) + balance_loss(params, task_gradient_norms, task_losses, state)
    new_state = GradNormState(initial_losses(task_losses, state), state.step + 1)
    return total, (weights, new_state)

  def project_fn(params):
    weights = params["weights"]
    return {**params, "weights": weights * (weights.shape[0] / jnp.sum(weights))}

  return LossWeighting(init_fn, loss_fn, project_fn, ("task_gradient_norms",))


# ---------------------------------------------------------------------------
# MGDA-UB.


MGDA_UB_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def mgda_ub(normalization: str = "loss+") -> LossWeighting:
  r"""MGDA-UB (Sener & Koltun, 2018): MGDA on the gradients at the shared representation.

  The weights are the minimum-norm point of the convex hull of the per-task
  gradients with respect to the shared representation ``z = encode(params,
  inputs)`` (an upper bound of the MGDA problem on the shared parameters, and
  one backward pass through the decoders per task instead of through the whole
  network):

  .. math::
    w = \arg\min_{w \in \Delta_T} \Bigl\| \sum_i w_i\, \frac{\nabla_z L_i}{s_i} \Bigr\|^2,
    \qquad \text{total} = \sum_i \mathrm{sg}(w_i)\, L_i ,

  solved by :func:`metalax.mtl.min_norm_solver` (their ``MinNormSolver``),
  with the gradients normalised by ``s_i`` as their ``gradient_normalizers``:
  ``"none"`` (1), ``"l2"`` (``||grad_z L_i||``), ``"loss"`` (``L_i``) or
  ``"loss+"`` (``L_i ||grad_z L_i||``, the default of their MultiMNIST
  configuration).

  ``loss`` needs the extra argument ``representation_gradients [T, ...]``
  (``grad_z L_i``, e.g. ``[T, n, d]``), which :func:`metalax.mtl.train_step`
  computes when given ``representation=(encode_fn, decode_losses_fn)``.

  Args:
    normalization: one of ``"none"``, ``"l2"``, ``"loss"``, ``"loss+"``.

  Returns:
    A :class:`LossWeighting` with no parameters and no state and ``requires =
    ("representation_gradients",)``.

  Raises:
    ValueError: on an unknown normalization, or (at ``loss``) a missing or
      mis-shaped ``representation_gradients``.

  References:
    Sener & Koltun, Multi-Task Learning as Multi-Objective Optimization,
    NeurIPS 2018 (Sec. 3.3; code: github.com/isl-org/MultiObjectiveOptimization).
  """
  if normalization not in MGDA_UB_NORMALIZATIONS:
    raise ValueError(f"normalization must be one of {', '.join(MGDA_UB_NORMALIZATIONS)}, got {normalization!r}.")

  def init_fn(num_tasks):
    _check_num_tasks(num_tasks)
    return {}, ()

  def loss_fn(params, task_losses, state, *, representation_gradients=None, **extra_args):
    del params, extra_args
    _check_task_losses(task_losses)
    num_tasks = task_losses.shape[0]
    if representation_gradients is None:
      raise ValueError("mgda_ub needs loss(..., representation_gradients=[T, ...]), the per-task gradients with "
                       "respect to the shared representation; metalax.mtl.train_step provides them when given "
                       "representation=(encode_fn, decode_losses_fn).")
    if jnp.ndim(representation_gradients) < 1 or jnp.shape(representation_gradients)[0] != num_tasks:
      raise ValueError(f"representation_gradients must have shape [{num_tasks}, ...] (one gradient per task), "
                       f"got {tuple(jnp.shape(representation_gradients))}.")
    flat = jax.lax.stop_gradient(representation_gradients).reshape(num_tasks, -1)
    losses = jax.lax.stop_gradient(task_losses)
    norms = jnp.linalg.norm(flat, axis=1)
    scale = {"none": jnp.ones_like(losses), "l2": norms, "loss": losses, "loss+": losses * norms}[normalization]
    weights = jax.lax.stop_gradient(min_norm_solver(flat / jnp.where(scale > 0, scale, 1.0)[:, None]))
    weights = weights.astype(task_losses.dtype)
    return _weighted_sum(weights, task_losses), (weights, state)

  return LossWeighting(init_fn, loss_fn, None, ("representation_gradients",))
