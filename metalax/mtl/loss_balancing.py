r"""Loss weightings that balance the scales of the task losses: FAMO, IMTL-L, GLS, STCH.

Every constructor returns a :class:`metalax.mtl.LossWeighting` (``init(num_tasks)
-> (weighting_params, state)``, ``loss(weighting_params, task_losses [T], state)
-> (total_loss, (weights [T], new_state))``; see :mod:`metalax.mtl.weighting`),
except :func:`famo`, whose :class:`FAMO` adds a third function, ``update``, to
call after each optimizer step.

``weights`` are always the factors of the task losses' gradients in the gradient
of ``total_loss``, :math:`\partial\,\mathrm{total} / \partial L_i`, whatever the
method's own bookkeeping reports (constants for logging).

References:
  Liu, Liu, Jin, Stone & Liu, FAMO: Fast Adaptive Multitask Optimization,
  NeurIPS 2023.
  Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, Towards Impartial Multi-task
  Learning (IMTL), ICLR 2021.
  Chennupati, Sistu, Yogamani & Rawashdeh, MultiNet++: Multi-Stream Feature
  Aggregation and Geometric Loss Strategy for Multi-Task Learning (GLS), CVPR
  Workshops 2019.
  Lin, Zhang, Liu, Zhang & Kwong, Smooth Tchebycheff Scalarization for
  Multi-Objective Optimization (STCH), ICML 2024.
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metalax.mtl.weighting import LossWeighting
from metalax.mtl.weighting import WeightingParams

def _check_num_tasks(num_tasks: int) -> None:
  if not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
    raise ValueError(f"num_tasks must be a positive int, got {num_tasks!r}.")


def _check_task_losses(task_losses: jax.Array, num_tasks: int | None = None) -> None:
  if not hasattr(task_losses, "shape") or task_losses.ndim != 1:
    shape = tuple(task_losses.shape) if hasattr(task_losses, "shape") else type(task_losses)
    raise ValueError(f"task_losses must have shape [T] (one loss per task), got {shape}.")
  if num_tasks is not None and task_losses.shape[0] != num_tasks:
    raise ValueError(f"task_losses must have shape [{num_tasks}] (the number of tasks this "
                     f"weighting was initialised for), got {tuple(task_losses.shape)}.")


# ---------------------------------------------------------------------------
# FAMO.


class FAMOState(NamedTuple):
  """State of :func:`famo`.

  Attributes:
    logits: ``[T]`` the task logits ``xi`` (weights ``softmax(xi)``).
    opt_state: the state of the logits' optimizer (Adam with L2 decay).
    previous_losses: ``[T]`` the task losses of the last ``loss`` call.
  """

  logits: jax.Array
  opt_state: Any
  previous_losses: jax.Array


class FAMO(NamedTuple):
  """Pure functions of FAMO: a :class:`LossWeighting` plus ``update``.

  Attributes:
    init: ``init(num_tasks) -> ({}, FAMOState)``.
    loss: ``loss({}, task_losses [T], state) -> (total_loss, (weights [T],
      new_state))``; ``new_state`` remembers ``task_losses``.
    update: ``update(state, task_losses [T]) -> state``: one step of the
      logits from the losses before (remembered by ``loss``) and after
      (``task_losses``) the model's optimizer step.
  """

  init: Callable[[int], tuple[WeightingParams, FAMOState]]
  loss: Callable[[WeightingParams, jax.Array, FAMOState],
                 tuple[jax.Array, tuple[jax.Array, FAMOState]]]
  update: Callable[[FAMOState, jax.Array], FAMOState]


def famo(
    *,
    learning_rate: float = 0.025,
    weight_decay: float = 1e-3,
    min_losses: Sequence[float] | jax.Array | None = None,
) -> FAMO:
  r"""Fast Adaptive Multitask Optimization, FAMO (Liu et al., 2023).

  With weights :math:`z = \mathrm{softmax}(\xi)` and :math:`D_i = L_i -
  L_i^{\min} + 10^{-8}`, the model is trained on

  .. math::
    \mathrm{total} = \frac{1}{c}\sum_i z_i \log D_i, \qquad
    c = \mathrm{sg}\Bigl[\sum_i z_i / D_i\Bigr],

  whose gradient :math:`\sum_i \frac{z_i}{c D_i} \nabla L_i` decreases every
  log loss at a rate set by ``z`` (``weights`` are :math:`z_i / (c D_i)`, they sum
  to 1). After the optimizer step, ``update(state, new_losses)`` moves the
  logits so that the tasks improve at equal rates: with
  :math:`\delta_i = \log D_i(\text{before}) - \log D_i(\text{after})`, the
  gradient of the logits is :math:`J_{\mathrm{softmax}}(\xi)^\top \delta` and
  one step of Adam with L2 decay (PyTorch's ``Adam(weight_decay=gamma)``, i.e.
  ``optax.chain(optax.add_decayed_weights(gamma), optax.adam(lr))``) applies
  it. As LibMTL and the official code, ``new_losses`` are the losses of the
  same batch recomputed after the step (one more forward pass)::

    total, (weights, state) = weighting.loss({}, task_losses, state)   # in the grad
    ... optimizer step on the model ...
    state = weighting.update(state, task_losses_fn(new_params, batch))

  Defaults are LibMTL's (``FAMO_w_lr=0.025``, ``FAMO_w_gamma=1e-3``); the
  official code's class defaults to ``gamma=1e-5`` and its scripts set
  ``gamma`` per benchmark; it also clips the model's gradient norm to 1,
  which neither LibMTL nor this weighting does (use ``optax.clip_by_global_norm``).

  Args:
    learning_rate: Adam learning rate of the logits.
    weight_decay: L2 decay ``gamma`` of the logits.
    min_losses: ``[T]`` lower bounds ``L^min`` of the losses (0 by default).

  Returns:
    A :class:`FAMO`.

  Raises:
    ValueError: on a negative rate or decay, or (at ``init``) ``min_losses``
      of the wrong length.

  References:
    Liu, Liu, Jin, Stone & Liu, FAMO: Fast Adaptive Multitask Optimization,
    NeurIPS 2023 (code: github.com/Cranial-XIX/FAMO).
  """
  if learning_rate < 0 or weight_decay < 0:
    raise ValueError(f"learning_rate and weight_decay must be >= 0, got {learning_rate} "
                     f"and {weight_decay}.")
  bounds = None if min_losses is None else np.asarray(min_losses, np.float32)
  if bounds is not None and bounds.ndim != 1:
    raise ValueError(f"min_losses must be a [T] vector, got shape {bounds.shape}.")
  optimizer = optax.chain(optax.add_decayed_weights(weight_decay), optax.adam(learning_rate))

  def log_gaps(task_losses):
    lower = 0.0 if bounds is None else jnp.asarray(bounds, task_losses.dtype)
    return jnp.log(task_losses - lower + 1e-8)

  def init_fn(num_tasks):
    _check_num_tasks(num_tasks)
    if bounds is not None and bounds.shape[0] != num_tasks:
      raise ValueError(f"famo was given {bounds.shape[0]} min_losses but init got "
                       f"num_tasks={num_tasks}.")
    logits = jnp.zeros((num_tasks,), jnp.float32)
    return {}, FAMOState(logits, optimizer.init(logits), jnp.zeros((num_tasks,), jnp.float32))

  def loss_fn(params, task_losses, state):
    del params
    _check_task_losses(task_losses, state.logits.shape[0])
    z = jax.nn.softmax(state.logits).astype(task_losses.dtype)
    log_d = log_gaps(task_losses)
    inverse_d = jax.lax.stop_gradient(jnp.exp(-log_d))
    c = jnp.sum(z * inverse_d)
    total = jnp.sum(z * log_d) / c
    weights = z * inverse_d / c
    previous = jax.lax.stop_gradient(task_losses).astype(state.previous_losses.dtype)
    return total, (weights, state._replace(previous_losses=previous))

  def update_fn(state, task_losses):
    _check_task_losses(task_losses, state.logits.shape[0])
    losses = jax.lax.stop_gradient(task_losses).astype(state.logits.dtype)
    delta = log_gaps(state.previous_losses) - log_gaps(losses)
    _, softmax_vjp = jax.vjp(jax.nn.softmax, state.logits)
    (grad,) = softmax_vjp(delta)
    updates, opt_state = optimizer.update(grad, state.opt_state, state.logits)
    return state._replace(logits=optax.apply_updates(state.logits, updates), opt_state=opt_state)

  return FAMO(init_fn, loss_fn, update_fn)


# ---------------------------------------------------------------------------
# IMTL-L.


def imtl_l() -> LossWeighting:
  r"""Impartial MTL, loss part, IMTL-L (Liu et al., 2021).

  Each task has a learnable log-scale ``s_i`` (``weighting_params =
  {"log_scales": s}``, initialised to 0, trained by the outer optimizer with
  the model) and the total loss is

  .. math::
    \mathrm{total} = \sum_i \bigl(e^{s_i} L_i - s_i\bigr),

  whose minimiser over ``s_i`` is :math:`e^{s_i} = 1 / L_i`: every scaled loss
  tends to 1 (paper Sec. 3.2). ``weights`` are :math:`e^{s}`, differentiable in
  ``s``.

  Full IMTL (LibMTL's ``IMTL``) aggregates the gradients of the scaled losses
  :math:`e^{s_i} L_i - s_i` with :func:`metalax.mtl.imtl_g` on the shared
  parameters and sums them on the rest (heads and ``s``): write
  ``task_losses_fn`` to return ``jnp.exp(s) * losses - s`` and hand it to
  :func:`metalax.mtl.task_gradients`.

  Returns:
    A :class:`LossWeighting` with parameters ``{"log_scales": [T]}`` and no state.

  Example:
    >>> weighting = imtl_l()
    >>> params, state = weighting.init(2)
    >>> loss, (weights, _) = weighting.loss(params, jnp.array([2.0, 0.5]), state)
    >>> float(loss), weights.tolist()
    (2.5, [1.0, 1.0])

  References:
    Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, Towards Impartial Multi-task
    Learning, ICLR 2021.
  """

  def init_fn(num_tasks):
    _check_num_tasks(num_tasks)
    return {"log_scales": jnp.zeros((num_tasks,), jnp.float32)}, ()

  def loss_fn(params, task_losses, state):
    log_scales = params["log_scales"]
    _check_task_losses(task_losses, log_scales.shape[0])
    log_scales = log_scales.astype(task_losses.dtype)
    weights = jnp.exp(log_scales)
    return jnp.sum(weights * task_losses - log_scales), (weights, state)

  return LossWeighting(init_fn, loss_fn)


# ---------------------------------------------------------------------------
# GLS.


def geometric_loss() -> LossWeighting:
  r"""Geometric loss strategy, GLS (Chennupati et al., 2019).

  .. math::
    \mathrm{total} = \Bigl(\prod_{i=1}^T L_i\Bigr)^{1/T},

  computed as :math:`\exp(\frac1T \sum_i \log L_i)` (the product of many small
  losses underflows). Its gradient weights the tasks by
  :math:`\partial\,\mathrm{total}/\partial L_i = \mathrm{total} / (T L_i)`,
  which ``weights`` reports (LibMTL's ``GLS`` returns
  :math:`L_i / (T \prod_j L_j)` for logging, not the gradient factor). The
  losses must be positive.

  Returns:
    A :class:`LossWeighting` with no parameters and no state.

  Example:
    >>> weighting = geometric_loss()
    >>> params, state = weighting.init(2)
    >>> loss, (weights, _) = weighting.loss(params, jnp.array([1.0, 4.0]), state)
    >>> float(loss), weights.tolist()
    (2.0, [1.0, 0.25])

  References:
    Chennupati, Sistu, Yogamani & Rawashdeh, MultiNet++: Multi-Stream Feature
    Aggregation and Geometric Loss Strategy for Multi-Task Learning, CVPR
    Workshops 2019.
  """

  def init_fn(num_tasks):
    _check_num_tasks(num_tasks)
    return {}, ()

  def loss_fn(params, task_losses, state):
    del params
    _check_task_losses(task_losses)
    total = jnp.exp(jnp.mean(jnp.log(task_losses)))
    weights = jax.lax.stop_gradient(total / (task_losses.shape[0] * task_losses))
    return total, (weights, state)

  return LossWeighting(init_fn, loss_fn)


# ---------------------------------------------------------------------------
# STCH.


class STCHState(NamedTuple):
  """State of :func:`stch`.

  Attributes:
    step: int32 number of ``loss`` calls so far (the epoch is ``step //
      steps_per_epoch``).
    loss_sum: ``[T]`` sum of the task losses seen during the last warm-up epoch.
    count: int32 number of calls summed in ``loss_sum``.
  """

  step: jax.Array
  loss_sum: jax.Array
  count: jax.Array


def stch(
    *,
    steps_per_epoch: int,
    mu: float = 1.0,
    warmup_epochs: int = 4,
    preference: Sequence[float] | jax.Array | None = None,
) -> LossWeighting:
  r"""Smooth Tchebycheff scalarisation, STCH (Lin et al., 2024), as in LibMTL.

  The Tchebycheff scalarisation :math:`\max_i \lambda_i f_i` smoothed by
  log-sum-exp with smoothing ``mu``, on the log losses normalised by a
  "nadir" vector ``n`` (the mean task losses of one warm-up epoch):

  .. math::
    \mathrm{total} = T \mu \log \sum_i \exp\bigl(\lambda_i h_i / \mu\bigr), \qquad
    h_i = \log\bigl(L_i / n_i + 10^{-20}\bigr).

  As LibMTL's ``STCH`` (and the official MTL code): for epochs ``0 ..
  warmup_epochs - 1`` the total is :math:`\sum_i \log(L_i + 10^{-20})`; during
  epoch ``warmup_epochs`` it is the same while the losses are averaged into
  ``n``; from epoch ``warmup_epochs + 1`` on it is the STCH total above. An
  epoch is ``steps_per_epoch`` calls of ``loss``. ``lambda`` is the
  preference (all ones in LibMTL; the paper's preference vector when tracing a
  Pareto front). As ``mu -> 0`` the total tends to :math:`T \max_i \lambda_i h_i`.

  Args:
    steps_per_epoch: number of ``loss`` calls per epoch (batches per epoch).
    mu: the smoothing parameter, ``> 0`` (1.0, LibMTL's default).
    warmup_epochs: epochs of log-loss training before the nadir epoch (4,
      LibMTL's default).
    preference: ``[T]`` positive ``lambda``, or None for ones.

  Returns:
    A :class:`LossWeighting` with no parameters and an :class:`STCHState`;
    ``weights`` are :math:`\partial\,\mathrm{total}/\partial L_i`.

  Raises:
    ValueError: on non-positive ``mu`` or ``steps_per_epoch``, negative
      ``warmup_epochs``, or a preference of the wrong shape.

  References:
    Lin, Zhang, Liu, Zhang & Kwong, Smooth Tchebycheff Scalarization for
    Multi-Objective Optimization, ICML 2024 (code: github.com/Xi-L/STCH).
  """
  if not mu > 0:
    raise ValueError(f"mu must be > 0, got {mu}.")
  if not isinstance(steps_per_epoch, (int, np.integer)) or steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}.")
  if not isinstance(warmup_epochs, (int, np.integer)) or warmup_epochs < 0:
    raise ValueError(f"warmup_epochs must be a non-negative int, got {warmup_epochs!r}.")
  fixed = None if preference is None else np.asarray(preference, np.float32)
  if fixed is not None and (fixed.ndim != 1 or np.any(fixed <= 0)):
    raise ValueError(f"preference must be a [T] vector of positive numbers, got {preference!r}.")

  def init_fn(num_tasks):
    _check_num_tasks(num_tasks)
    if fixed is not None and fixed.shape[0] != num_tasks:
      raise ValueError(f"stch was given a preference of {fixed.shape[0]} entries but init got "
                       f"num_tasks={num_tasks}.")
    zero = jnp.zeros((), jnp.int32)
    return {}, STCHState(zero, jnp.zeros((num_tasks,), jnp.float32), zero)

  def loss_fn(params, task_losses, state):
    del params
    _check_task_losses(task_losses, state.loss_sum.shape[0])
    num_tasks = task_losses.shape[0]
    epoch = state.step // steps_per_epoch
    warm = epoch <= warmup_epochs
    pref = jnp.ones((num_tasks,), task_losses.dtype) if fixed is None else jnp.asarray(
        fixed, task_losses.dtype)
    nadir = jnp.where(state.count > 0, state.loss_sum / jnp.maximum(state.count, 1), 1.0)
    nadir = jax.lax.stop_gradient(nadir.astype(task_losses.dtype))
    warm_total = jnp.sum(jnp.log(task_losses + 1e-20))
    scaled = pref * jnp.log(task_losses / nadir + 1e-20) / mu
    stch_total = num_tasks * mu * jax.nn.logsumexp(scaled)
    total = jnp.where(warm, warm_total, stch_total)
    warm_weights = 1.0 / (task_losses + 1e-20)
    stch_weights = (num_tasks * jax.nn.softmax(scaled) * pref
                    / (nadir * (task_losses / nadir + 1e-20)))
    weights = jax.lax.stop_gradient(jnp.where(warm, warm_weights, stch_weights))
    accumulate = epoch == warmup_epochs
    losses = jax.lax.stop_gradient(task_losses).astype(state.loss_sum.dtype)
    new_state = STCHState(
        state.step + 1,
        jnp.where(accumulate, state.loss_sum + losses, state.loss_sum),
        state.count + accumulate.astype(jnp.int32))
    return total, (weights, new_state)

  return LossWeighting(init_fn, loss_fn)
