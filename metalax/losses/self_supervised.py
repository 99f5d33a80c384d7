r"""Self-supervision without labels beyond SimCLR: BYOL, MoCo v2, SimSiam, Barlow Twins, VICReg.

The losses are plain array functions of the two views' outputs: BYOL, MoCo
and SimSiam return per-example values ``[n]`` (the caller averages, and
symmetrises by swapping the views, as each docstring shows); Barlow Twins and
VICReg are defined on batch statistics (a cross-correlation, variances,
covariances) and return a scalar.

The training state they need is pure too: the momentum (target) encoder is
an exponential moving average of the online parameters,
:func:`target_network_update` (``optax.incremental_update``), with BYOL's cosine
schedule from :func:`momentum_schedule`; MoCo's negative queue is a
:class:`QueueState` with :func:`queue_init` and :func:`queue_update`.

Each method's collapse is visible in :func:`metalax.losses.collapse_metrics`
(embedding standard deviation and effective rank), which a training loop logs.

Example (BYOL, one step; ``online_fn(params, images) -> (projections,
predictions)``, ``target_fn(params, images) -> projections``)::

  def loss_fn(online, target, views_a, views_b):
    projections_a, predictions_a = online_fn(online, views_a)
    projections_b, predictions_b = online_fn(online, views_b)
    per_example = (byol_loss(predictions_a, target_fn(target, views_b))
                   + byol_loss(predictions_b, target_fn(target, views_a)))
    return jnp.mean(per_example)

  grads = jax.grad(loss_fn)(online, target, views_a, views_b)
  updates, opt_state = optimizer.update(grads, opt_state, online)
  online = optax.apply_updates(online, updates)
  target = target_network_update(online, target, schedule(step))
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from metalax.losses.contrastive import _check_embeddings
from metalax.losses.contrastive import info_nce
from metalax.losses.contrastive import l2_normalize


def _check_pair(x: jax.Array, y: jax.Array, names: tuple[str, str]) -> None:
  _check_embeddings(x, names[0])
  _check_embeddings(y, names[1])
  if x.shape != y.shape:
    raise ValueError(f"{names[0]} and {names[1]} must have the same shape [n, d], got {tuple(x.shape)} and "
                     f"{tuple(y.shape)}.")


def _cosine(x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.sum(l2_normalize(x) * l2_normalize(y), axis=-1)


def byol_loss(predictions: jax.Array, targets: jax.Array) -> jax.Array:
  r"""BYOL's regression loss: :math:`\|\bar q - \bar z'\|^2 = 2 - 2\cos(q, z')`, per example.

  The online network's prediction ``q`` of one view regresses the target
  network's projection ``z'`` of the other view (no gradient through the
  target: ``stop_gradient`` is applied). BYOL's loss is the sum of this loss
  and the one with the views swapped, averaged over the batch.

  Args:
    predictions: ``[n, d]``, the online predictor's outputs for one view.
    targets: ``[n, d]``, the target network's projections of the other view.

  Returns:
    Per-example losses ``[n]`` in ``[0, 4]``; 0 when the directions coincide.

  Raises:
    ValueError: if the shapes differ or are not ``[n, d]``.

  References:
    Grill et al., Bootstrap Your Own Latent: A New Approach to Self-Supervised
    Learning, NeurIPS 2020 (eq. 2).
  """
  _check_pair(predictions, targets, ("predictions", "targets"))
  return 2.0 - 2.0 * _cosine(predictions, jax.lax.stop_gradient(targets))


def simsiam_loss(predictions: jax.Array, projections: jax.Array) -> jax.Array:
  r"""SimSiam's negative cosine similarity :math:`D(p, z) = -\cos(p, \text{stopgrad}(z))`, per example.

  SimSiam's loss is :math:`\tfrac12 D(p_1, z_2) + \tfrac12 D(p_2, z_1)`:
  ``0.5 * (simsiam_loss(p1, z2) + simsiam_loss(p2, z1))``, averaged over the
  batch. The stop-gradient on ``z`` is what prevents collapse (the paper's
  main finding); it is part of this function.

  Args:
    predictions: ``[n, d]``, the predictor's outputs ``p`` for one view.
    projections: ``[n, d]``, the encoder's projections ``z`` of the other view.

  Returns:
    Per-example losses ``[n]`` in ``[-1, 1]``.

  Raises:
    ValueError: if the shapes differ or are not ``[n, d]``.

  References:
    Chen & He, Exploring Simple Siamese Representation Learning, CVPR 2021.
  """
  _check_pair(predictions, projections, ("predictions", "projections"))
  return -_cosine(predictions, jax.lax.stop_gradient(projections))


def moco_loss(queries: jax.Array, keys: jax.Array, queue: jax.Array, *, temperature: float = 0.2) -> jax.Array:
  r"""MoCo's InfoNCE: each query's positive is its key, the negatives the queue, per query.

  :func:`metalax.losses.info_nce` on L2-normalised queries and keys, with no
  gradient through the keys (the momentum encoder's outputs) or the queue.
  MoCo v2's temperature 0.2 is the default (MoCo v1: 0.07).

  Args:
    queries: ``[n, d]``, the query encoder's outputs for one view.
    keys: ``[n, d]``, the momentum encoder's outputs for the other view.
    queue: ``[k, d]``, earlier keys (:attr:`QueueState.embeddings`).
    temperature: ``tau > 0`` (may be traced; checked only when concrete).

  Returns:
    Per-query losses ``[n]``.

  Raises:
    ValueError: for mismatched shapes or a concrete ``temperature <= 0``.

  References:
    He, Fan, Wu, Xie & Girshick, Momentum Contrast for Unsupervised Visual
    Representation Learning, CVPR 2020. Chen, Fan, Girshick & He, Improved
    Baselines with Momentum Contrastive Learning, arXiv:2003.04297, 2020.
  """
  _check_pair(queries, keys, ("queries", "keys"))
  _check_embeddings(queue, "queue")
  return info_nce(queries, jax.lax.stop_gradient(keys), jax.lax.stop_gradient(queue), temperature=temperature)


class QueueState(NamedTuple):
  """MoCo's queue of negative keys: a ring buffer."""
  embeddings: jax.Array  # [size, d], L2-normalised keys
  pointer: jax.Array     # int32 scalar: the row the next key overwrites


def queue_init(key: jax.Array, size: int, dim: int, dtype=jnp.float32) -> QueueState:
  """MoCo's initial queue: ``size`` random unit vectors (normalised Gaussian rows), pointer 0.

  Args:
    key: a PRNG key.
    size: the number of negatives ``K`` (MoCo: 65,536).
    dim: the embedding dimension ``d`` (MoCo: 128).
    dtype: of the embeddings.

  Returns:
    A :class:`QueueState` with embeddings ``[size, dim]``.

  Raises:
    ValueError: if ``size`` or ``dim`` is not positive.
  """
  if size < 1 or dim < 1:
    raise ValueError(f"queue size and dim must be >= 1, got size={size}, dim={dim}.")
  embeddings = l2_normalize(jax.random.normal(key, (size, dim), dtype))
  return QueueState(embeddings, jnp.zeros((), jnp.int32))


def queue_update(queue: QueueState, keys: jax.Array) -> QueueState:
  """Enqueues a batch of keys (L2-normalised, no gradient), overwriting the oldest.

  Row ``(pointer + i) % size`` gets key ``i``; the pointer advances by ``n``
  modulo ``size`` (MoCo's ``_dequeue_and_enqueue``, which also accepts batches
  that do not divide the queue size).

  Args:
    queue: the current state.
    keys: ``[n, d]`` with ``n <= size``.

  Returns:
    The new :class:`QueueState`.

  Raises:
    ValueError: if ``keys`` is not ``[n, d]`` with the queue's ``d`` and ``n <= size``.
  """
  _check_embeddings(keys, "keys")
  size, dim = queue.embeddings.shape
  if keys.shape[1] != dim or keys.shape[0] > size:
    raise ValueError(f"keys must be [n, {dim}] with n <= the queue size {size}, got {tuple(keys.shape)}.")
  rows = (queue.pointer + jnp.arange(keys.shape[0])) % size
  keys = l2_normalize(jax.lax.stop_gradient(keys)).astype(queue.embeddings.dtype)
  return QueueState(queue.embeddings.at[rows].set(keys), (queue.pointer + keys.shape[0]) % size)


def _batch_normalize(z: jax.Array, eps: float) -> jax.Array:
  """``BatchNorm1d(affine=False)`` in training mode: batch mean, biased variance."""
  mean = jnp.mean(z, axis=0, keepdims=True)
  variance = jnp.mean(jnp.square(z - mean), axis=0, keepdims=True)
  return (z - mean) * jax.lax.rsqrt(variance + eps)


def barlow_twins_loss(z1: jax.Array, z2: jax.Array, *, redundancy_weight: float = 5e-3,
                      eps: float = 1e-5) -> jax.Array:
  r"""Barlow Twins: the cross-correlation of the two views' embeddings pushed towards the identity.

  .. math::
    \mathcal{L} = \sum_i (1 - C_{ii})^2 + \lambda \sum_i \sum_{j \ne i} C_{ij}^2,
    \qquad C = \tfrac1n \hat z_1^\top \hat z_2,

  with :math:`\hat z` each dimension standardised over the batch as the
  published code does (``BatchNorm1d(affine=False)`` in training mode: batch
  mean, biased variance, ``eps`` inside the square root).

  Args:
    z1: ``[n, d]`` projections of one view.
    z2: ``[n, d]`` projections of the other view.
    redundancy_weight: :math:`\lambda`; the paper's 5e-3 (the published
      code's default is 0.0051).
    eps: BatchNorm's epsilon.

  Returns:
    A scalar (a function of the batch's cross-correlation, not a sum over
    examples).

  Raises:
    ValueError: if the shapes differ or are not ``[n, d]``.

  References:
    Zbontar, Jing, Misra, LeCun & Deny, Barlow Twins: Self-Supervised Learning
    via Redundancy Reduction, ICML 2021.
  """
  _check_pair(z1, z2, ("z1", "z2"))
  n, d = z1.shape
  c = _batch_normalize(z1, eps).T @ _batch_normalize(z2, eps) / n
  off_diagonal = ~jnp.eye(d, dtype=bool)
  on = jnp.sum(jnp.square(1.0 - jnp.diagonal(c)))
  return on + redundancy_weight * jnp.sum(jnp.where(off_diagonal, jnp.square(c), 0.0))


def vicreg_loss(z1: jax.Array, z2: jax.Array, *, invariance_weight: float = 25.0, variance_weight: float = 25.0,
                covariance_weight: float = 1.0, eps: float = 1e-4) -> jax.Array:
  r"""VICReg: invariance, variance and covariance terms (defaults 25 / 25 / 1, as the paper).

  .. math::
    \mathcal{L} = \lambda\, s(Z, Z') + \mu\,[v(Z) + v(Z')] + \nu\,[c(Z) + c(Z')]

  with :math:`s` the mean squared difference of the embeddings (over examples
  and dimensions), :math:`v(Z) = \tfrac1d \sum_j [1 - \sqrt{\mathrm{Var}(z_j) +
  \epsilon}]_+` (unbiased variance; the published code's extra 1/2 on each
  of :math:`v(Z), v(Z')` is kept, as in the code and PML's ``VICRegLoss``) and
  :math:`c(Z) = \tfrac1d \sum_{i \ne j} \mathrm{Cov}(Z)_{ij}^2` (covariance
  with ``n - 1``).

  Args:
    z1: ``[n, d]`` expander outputs of one view (``n >= 2``).
    z2: ``[n, d]`` of the other view.
    invariance_weight: :math:`\lambda`.
    variance_weight: :math:`\mu`.
    covariance_weight: :math:`\nu`.
    eps: inside the square root of the variance.

  Returns:
    A scalar.

  Raises:
    ValueError: if the shapes differ, are not ``[n, d]``, or ``n < 2``.

  References:
    Bardes, Ponce & LeCun, VICReg: Variance-Invariance-Covariance
    Regularization for Self-Supervised Learning, ICLR 2022.
  """
  _check_pair(z1, z2, ("z1", "z2"))
  n, d = z1.shape
  if n < 2:
    raise ValueError(f"vicreg_loss needs n >= 2 examples (variances over the batch), got {n}.")
  invariance = jnp.mean(jnp.square(z1 - z2))
  off_diagonal = ~jnp.eye(d, dtype=bool)

  def variance_and_covariance(z):
    centred = z - jnp.mean(z, axis=0, keepdims=True)
    std = jnp.sqrt(jnp.sum(jnp.square(centred), axis=0) / (n - 1) + eps)
    covariance = centred.T @ centred / (n - 1)
    return (jnp.mean(jax.nn.relu(1.0 - std)) / 2,
            jnp.sum(jnp.where(off_diagonal, jnp.square(covariance), 0.0)) / d)

  variance_1, covariance_1 = variance_and_covariance(z1)
  variance_2, covariance_2 = variance_and_covariance(z2)
  return (invariance_weight * invariance + variance_weight * (variance_1 + variance_2)
          + covariance_weight * (covariance_1 + covariance_2))


def target_network_update(online: optax.Params, target: optax.Params, momentum: float | jax.Array) -> optax.Params:
  r"""The momentum (target) encoder's step: :math:`\xi \leftarrow m\,\xi + (1 - m)\,\theta`.

  ``optax.incremental_update(online, target, 1 - momentum)``, leaf by leaf:
  BYOL's target network and MoCo's key encoder.

  Args:
    online: the online parameters :math:`\theta` (any pytree).
    target: the target parameters :math:`\xi`, same structure.
    momentum: :math:`m \in [0, 1]` (a float or a traced scalar, e.g. from
      :func:`momentum_schedule`); 1 leaves the target unchanged.

  Returns:
    The new target parameters.

  Raises:
    ValueError: for a concrete momentum outside ``[0, 1]``.
  """
  try:
    concrete = float(momentum)
  except TypeError:
    concrete = None
  if concrete is not None and not 0.0 <= concrete <= 1.0:
    raise ValueError(f"momentum must be in [0, 1], got {momentum}.")
  return optax.incremental_update(online, target, 1.0 - momentum)


def momentum_schedule(num_steps: int, base_momentum: float = 0.996, final_momentum: float = 1.0) -> optax.Schedule:
  r"""BYOL's cosine momentum schedule: :math:`m_k = m_1 - (m_1 - m_0)(\cos(\pi k / K) + 1) / 2`.

  From ``base_momentum`` :math:`m_0` at step 0 to ``final_momentum``
  :math:`m_1` at step ``num_steps`` :math:`K` (and after), built on
  ``optax.cosine_decay_schedule``. BYOL: 0.996 -> 1. MoCo uses a constant
  0.999 (``final_momentum = base_momentum``).

  Args:
    num_steps: ``K``, the number of training steps.
    base_momentum: the momentum at step 0.
    final_momentum: the momentum at step ``K``.

  Returns:
    An ``optax.Schedule``: step -> momentum.

  Raises:
    ValueError: if ``num_steps < 1`` or a momentum is outside ``[0, 1]``.

  References:
    Grill et al., BYOL, NeurIPS 2020 (section 3.2).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  for name, value in (("base_momentum", base_momentum), ("final_momentum", final_momentum)):
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"{name} must be in [0, 1], got {value}.")
  decay = optax.cosine_decay_schedule(init_value=final_momentum - base_momentum, decay_steps=num_steps)
  return lambda step: final_momentum - decay(step)

