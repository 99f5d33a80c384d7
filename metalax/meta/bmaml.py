"""Bayesian MAML: an ensemble of particles adapted by Stein variational gradient descent.

Instead of one initialisation adapted by gradient steps, Bayesian MAML
(Yoon et al. 2018) meta-learns ``M`` initial particles ``Theta_0 = {theta^m}``
and adapts them to a task by ``n`` steps of SVGD (Liu & Wang 2016) towards the
task posterior ``p(theta | D) ~ exp(-L_D(theta) - prior_precision / 2
||theta||^2)`` (``L_D`` the mean support loss, so a loss that is a negative
log-likelihood gives a tempered posterior):

    theta^i <- theta^i + inner_lr * phi(theta^i),
    phi(theta^i) = (1 / M) sum_j [k(theta^j, theta^i) grad log p(theta^j | D) + grad_{theta^j} k(theta^j, theta^i)],

with the RBF kernel ``k(a, b) = exp(-||a - b||^2 / (2 h^2))`` and the median
heuristic ``h^2 = med / (2 log(M + 1))``, ``med`` the median of the ``M x M``
squared distances between particles (as in Liu & Wang's reference code). The
adapted particles are an ensemble: the predictive is ``p(y | x) = (1 / M)
sum_m p(y | x, theta^m)``. The meta-gradient flows through the SVGD steps,
the kernel included (the bandwidth is held constant, ``stop_gradient``).

The inner loop is :func:`metalax.meta.inner.inner_loop`, as for :func:`maml`:
``first_order`` and ``remat`` apply to it, and :func:`metalax.meta.batch_loss`
and :func:`metalax.meta.train_step` (with ``tasks_per_chunk``) vmap over tasks
as for any learner.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metalax.meta import inner
from metalax.meta.base import Aux, MetaLearner, MetaParams, TaskParams, split_key, support_loss
from metalax.types import ApplyFn, Batch, Episode, LossFn, Params, apply_model, is_classification

OBJECTIVES = ("chaser", "predictive")
"""Bayesian MAML's meta-objectives (see :func:`bmaml`)."""


def svgd_direction(particles: jax.Array, log_density_grads: jax.Array,
                   bandwidth: float | jax.Array | None = None) -> jax.Array:
  """The SVGD direction ``phi`` of every particle, with an RBF kernel.

  Args:
    particles: ``[M, D]``.
    log_density_grads: ``[M, D]``, ``grad log p`` at each particle.
    bandwidth: ``h``; None for the median heuristic ``h^2 = med / (2 log(M +
      1))`` (``med``: median of the ``M x M`` squared distances, diagonal
      included; ``h = 1`` when all particles coincide), held constant for
      differentiation.

  Returns:
    ``[M, D]``: ``phi_i = (1 / M) sum_j [K_ji g_j + (x_i - x_j) K_ji / h^2]``,
    ``K_ji = exp(-||x_j - x_i||^2 / (2 h^2))``.

  References:
    Liu & Wang, Stein Variational Gradient Descent: A General Purpose Bayesian
    Inference Algorithm, NeurIPS 2016.
  """
  if particles.ndim != 2 or particles.shape != log_density_grads.shape:
    raise ValueError(f"svgd_direction: particles and gradients must both be [M, D], got "
                     f"{tuple(particles.shape)} and {tuple(log_density_grads.shape)}.")
  num_particles = particles.shape[0]
  squared_norms = jnp.sum(jnp.square(particles), axis=-1)
  squared = jnp.maximum(squared_norms[:, None] + squared_norms[None, :] - 2 * particles @ particles.T, 0.0)
  if bandwidth is None:
    median = jax.lax.stop_gradient(jnp.median(squared))
    h2 = jnp.where(median > 0, 0.5 * median / np.log(num_particles + 1), 1.0)
  else:
    h2 = jnp.square(jnp.asarray(bandwidth, particles.dtype))
  kernel = jnp.exp(-squared / (2 * h2))                       # symmetric: K_ij = K_ji
  repulsion = (particles * jnp.sum(kernel, axis=1, keepdims=True) - kernel @ particles) / h2
  return (kernel @ log_density_grads + repulsion) / num_particles


def bmaml(apply_fn: ApplyFn, loss_fn: LossFn, *, num_particles: int, num_steps: int, inner_lr: float,
          objective: str = "chaser", leader_steps: int = 1, prior_precision: float = 0.0,
          bandwidth: float | None = None, first_order: bool = False, remat: bool = False,
          init_noise: float = 0.01, seed: int = 0) -> MetaLearner:
  """Bayesian MAML with Stein variational particles.

  The meta-parameters are ``{"particles": tree}``, the model's parameter tree
  with a leading ``[num_particles]`` axis on every leaf. ``init`` takes one of

  * ``{"particles": tree}`` as it is;
  * a list or tuple of ``num_particles`` parameter trees (e.g. independent
    initialisations), stacked;
  * one parameter tree, copied ``num_particles`` times with independent
    ``N(0, init_noise^2)`` perturbations from ``jax.random.key(seed)``
    (identical particles would never separate: the kernel's repulsion
    vanishes between equal particles).

  ``adapt(meta_params, support, key=None, num_steps=None)`` returns the
  adapted particles (a tree with the ``[M]`` axis); ``predict(task_params,
  inputs, key=None)`` returns every particle's outputs ``[M, n, ...]`` (for
  classification, the ensemble's log predictive probabilities are
  ``logsumexp_m log_softmax(outputs_m) - log M``). ``loss(meta_params,
  episode, key=None, num_steps=None)`` returns the meta-objective and ``aux``:
  ``"loss"``, the query's ensemble negative log predictive
  ``-log mean_m exp(-loss_fn(outputs_m, y))`` (with ``loss_fn`` a negative
  log-likelihood, e.g. the cross-entropy), ``"accuracy"`` (arg-max of the
  ensemble's probabilities) for classification, ``"chaser"`` for the chaser
  objective.

  Meta-objectives (``objective``):

  * ``"chaser"`` (the paper's Chaser loss): the chaser ``Theta_n`` (``n``
    steps on the support set) follows the leader ``Theta_{n+s}`` (``s =
    leader_steps`` more SVGD steps from ``Theta_n`` on support and query
    together, ``stop_gradient``): ``sum_m ||theta_n^m - theta_{n+s}^m||^2``.
  * ``"predictive"`` (the paper's Bayesian Fast Adaptation): the query's
    ensemble negative log predictive.

  Args:
    apply_fn: ``apply_fn(params, inputs) -> outputs`` (see the key contract of
      :mod:`metalax.meta.base`: each particle's call gets its own key).
    loss_fn: per-example loss, read as a negative log-likelihood.
    num_particles: ``M``, a static int >= 1 (1: gradient descent on the
      regularised loss, i.e. MAML with a weight-decay prior).
    num_steps: SVGD steps ``n`` (``adapt`` and ``loss`` take an override).
    inner_lr: SVGD step size.
    objective: ``"chaser"`` or ``"predictive"``.
    leader_steps: ``s``, the leader's extra steps (chaser only).
    prior_precision: ``lambda`` of the Gaussian prior ``N(0, I / lambda)`` (0:
      flat).
    bandwidth: a fixed kernel bandwidth ``h``; None for the median heuristic.
    first_order: drop the second-order terms of the inner loop (as in :func:`maml`).
    remat: recompute the inner steps in the backward pass (as in :func:`maml`).
    init_noise: standard deviation of the perturbations of a single tree in ``init``.
    seed: their seed.

  Returns:
    A :class:`~metalax.meta.MetaLearner`.

  Raises:
    ValueError: if a count, rate or name is invalid; if ``init`` gets a
      sequence of the wrong length or trees of different structures.

  Example:
    >>> learner = metalax.meta.bmaml(apply_fn, metalax.losses.cross_entropy, num_particles=5,
    ...                              num_steps=1, inner_lr=0.4)
    >>> meta_params = learner.init(params)
    >>> step = jax.jit(metalax.meta.train_step(learner, optax.adam(1e-3)))

  References:
    Yoon, Kim, Dia, Kim, Bengio & Ahn, Bayesian Model-Agnostic Meta-Learning,
    NeurIPS 2018; Liu & Wang, NeurIPS 2016.
  """
  num_particles = _check_count("num_particles", num_particles)
  default_steps = inner.check_num_steps(num_steps)
  inner.check_positive("inner_lr", inner_lr)
  leader_steps = _check_count("leader_steps", leader_steps)
  if objective not in OBJECTIVES:
    raise ValueError(f"bmaml: objective must be one of {OBJECTIVES}, got {objective!r}.")
  for name, value, positive in (("prior_precision", prior_precision, False), ("init_noise", init_noise, False),
                                ("bandwidth", bandwidth, True)):
    if value is None and name == "bandwidth":
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
      raise ValueError(f"bmaml: {name} must be a number {'> 0' if positive else '>= 0'}, got {value!r}.")

  def init(params: Params) -> MetaParams:
    if isinstance(params, dict) and set(params) == {"particles"}:
      return {"particles": params["particles"]}
    if isinstance(params, (list, tuple)):
      if len(params) != num_particles:
        raise ValueError(f"bmaml: init got {len(params)} parameter trees, expected num_particles={num_particles}.")
      structures = {jax.tree.structure(p) for p in params}
      if len(structures) != 1:
        raise ValueError("bmaml: init got parameter trees of different structures.")
      return {"particles": jax.tree.map(lambda *xs: jnp.stack(xs), *params)}
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), max(len(leaves), 1))
    noisy = [jnp.asarray(x)[None] + init_noise * jax.random.normal(k, (num_particles,) + jnp.shape(x),
                                                                   jnp.asarray(x).dtype)
             for k, x in zip(keys, leaves)]
    return {"particles": treedef.unflatten(noisy)}

  def svgd(particles: Params, data: Batch, num_steps: int, key: jax.Array | None) -> Params:
    """``num_steps`` SVGD steps of the particle tree on ``data`` (with the inner-loop machinery)."""
    leaves, treedef = jax.tree.flatten(particles)

    def objective_fn(leaves, step_key=None):
      # Sum over particles of the negative log posterior: its gradient is each particle's own.
      particle_keys = None if step_key is None else jax.random.split(step_key, num_particles)

      def negative_log_posterior(params, particle_key):
        prior = 0.5 * prior_precision * sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(params))
        return support_loss(apply_fn, loss_fn, params, data, particle_key) + prior

      per_particle = jax.vmap(negative_log_posterior)(treedef.unflatten(leaves), particle_keys)
      return jnp.sum(per_particle)

    def update(grads, state, leaves):
      flat = jnp.concatenate([x.reshape(num_particles, -1) for x in leaves], axis=1)
      flat_grads = jnp.concatenate([g.reshape(num_particles, -1) for g in grads], axis=1)
      direction = inner_lr * svgd_direction(flat, -flat_grads, bandwidth)
      sizes = np.cumsum([int(np.prod(x.shape[1:])) for x in leaves])[:-1]
      pieces = jnp.split(direction, sizes, axis=1)
      return [p.reshape(x.shape) for p, x in zip(pieces, leaves)], state

    leaves = inner.inner_loop(objective_fn, leaves, (), update, num_steps=num_steps,
                              first_order=first_order, remat=remat, key=key)
    return treedef.unflatten(leaves)

  def adapt(meta_params: MetaParams, support: Batch, key: jax.Array | None = None,
            num_steps: int = default_steps) -> TaskParams:
    inner.check_num_steps(num_steps)
    return svgd(meta_params["particles"], support, num_steps, key)

  def predict(task_params: TaskParams, inputs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    keys = None if key is None else jax.random.split(key, num_particles)
    return jax.vmap(lambda params, k: apply_model(apply_fn, params, inputs, k))(task_params, keys)

  def loss(meta_params: MetaParams, episode: Episode, key: jax.Array | None = None,
           num_steps: int = default_steps) -> tuple[jax.Array, Aux]:
    inner.check_num_steps(num_steps)
    adapt_key, predict_key, leader_key = split_key(key, 3)
    chaser = adapt(meta_params, episode.support, key=adapt_key, num_steps=num_steps)
    outputs = predict(chaser, episode.query.inputs, key=predict_key)           # [M, n, ...]
    labels = episode.query.labels
    log_likelihoods = -jax.vmap(loss_fn, in_axes=(0, None))(outputs, labels)   # [M, n]
    aux = {"loss": -jnp.mean(jax.nn.logsumexp(log_likelihoods, axis=0) - np.log(num_particles))}
    if is_classification(labels):
      log_predictive = jax.nn.logsumexp(jax.nn.log_softmax(outputs), axis=0)
      aux["accuracy"] = jnp.mean(jnp.argmax(log_predictive, axis=-1) == labels)
    if objective == "predictive":
      return aux["loss"], aux
    both = jax.tree.map(lambda s, q: jnp.concatenate([s, q]), episode.support, episode.query)
    leader = jax.lax.stop_gradient(svgd(chaser, both, leader_steps, leader_key))
    aux["chaser"] = sum(jnp.sum(jnp.square(c - t)) for c, t in zip(jax.tree.leaves(chaser),
                                                                      jax.tree.leaves(leader)))
    return aux["chaser"], aux

  return MetaLearner(init=init, adapt=adapt, predict=predict, loss=loss)


def _check_count(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"bmaml: {name} must be an int >= 1, got {value!r}.")
  return int(value)

