"""Hyperparameters by hypergradient: differentiate the validation loss through training.

Hyperparameter optimisation is meta-learning with the training run as the
inner loop: the hyperparameters ``h`` are the meta-parameters, training
``w_T(h)`` on the training set is adaptation, and the validation loss
``L_val(w_T(h))`` is the meta-objective. Its gradient ``dL_val / dh`` (the
hypergradient) comes either

* by **unrolling** (:func:`unrolled_hypergradient`): reverse-mode through every
  training step (``lax.scan``; with ``remat=True`` each step and each segment
  of ``sqrt(T)`` steps is recomputed in the backward pass, so memory grows like
  ``sqrt(T)``); exact for the truncated run, works for optimiser
  hyperparameters such as learning rates (Maclaurin et al. 2015; Franceschi
  et al. 2017);
* by **implicit differentiation** at the inner optimum
  (:func:`implicit_hypergradient`): at ``w* = argmin_w L_train(w, h)``,
  ``dL_val / dh = -(d^2 L_train / dh dw) H^{-1} grad_w L_val(w*)`` with ``H`` the
  training loss's Hessian, ``H^{-1} v`` by conjugate gradients on
  Hessian-vector products (the machinery of :func:`metalax.meta.imaml`);
  memory does not grow with the number of training steps, but only
  hyperparameters of the training *objective* (weight decay) have a gradient
  there (Pedregosa 2016; Lorraine, Vicol & Duvenaud 2020).

Hyperparameters are a dict ``{"log_learning_rate": prefix, "log_weight_decay":
prefix}`` whose values are pytree prefixes of the model parameters: one log
value per layer (the parameters' top-level entries), per leaf, or a single
global one (:func:`layer_hyperparameters`). A training step is
``w <- w - lr * (grad L(w) + wd * w)`` per layer, i.e. SGD on the training
loss :func:`regularised_loss`. Log values keep learning rates and decays
positive under any outer optimiser (e.g. optax.adam on the hypergradient).
"""

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metalax.meta.inner import check_num_steps, conjugate_gradient
from metalax.types import ApplyFn, Batch, LossFn, Params

Hyperparameters = dict[str, Any]
"""``{"log_learning_rate": prefix tree, "log_weight_decay": prefix tree}``."""

GRANULARITIES = ("layer", "leaf", "global")


def layer_hyperparameters(params: Params, *, learning_rate: float = 0.1, weight_decay: float = 1e-4,
                          per: str = "layer") -> Hyperparameters:
  """Initial hyperparameters: one log learning rate and one log weight decay per layer, leaf or globally.

  Args:
    params: the model parameters (a dict of layers for ``per="layer"``).
    learning_rate: initial learning rate (> 0).
    weight_decay: initial weight decay (> 0).
    per: ``"layer"`` (one per top-level entry of ``params``), ``"leaf"`` or ``"global"``.

  Returns:
    ``{"log_learning_rate": tree, "log_weight_decay": tree}`` of float32 scalars.

  Raises:
    ValueError: if a value is not positive, ``per`` is unknown, or ``per="layer"``
      and ``params`` is not a dict.
  """
  for name, value in (("learning_rate", learning_rate), ("weight_decay", weight_decay)):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
      raise ValueError(f"{name} must be a positive number, got {value!r}.")
  if per not in GRANULARITIES:
    raise ValueError(f"per must be one of {GRANULARITIES}, got {per!r}.")
  if per == "layer" and not hasattr(params, "keys"):
    raise ValueError(f"per='layer' needs a dict of layers, got {type(params).__name__}.")

  def of(value):
    scalar = lambda: jnp.asarray(math.log(value), jnp.float32)
    if per == "global":
      return scalar()
    if per == "leaf":
      return jax.tree.map(lambda _: scalar(), params)
    return {name: scalar() for name in params}

  return {"log_learning_rate": of(learning_rate), "log_weight_decay": of(weight_decay)}


def regularised_loss(apply_fn: ApplyFn, loss_fn: LossFn, params: Params, hyperparams: Hyperparameters,
                     batch: Batch) -> jax.Array:
  """The training objective: mean loss plus ``sum_layers wd / 2 ||w_layer||^2``."""
  decay = _expand(hyperparams["log_weight_decay"], params)
  penalty = sum(0.5 * jnp.exp(d) * jnp.sum(jnp.square(p))
                for d, p in zip(jax.tree.leaves(decay), jax.tree.leaves(params)))
  return jnp.mean(loss_fn(apply_fn(params, batch.inputs), batch.labels)) + penalty


def sgd_training(apply_fn: ApplyFn, loss_fn: LossFn, *, num_steps: int, remat: bool = False,
                 minibatches: bool = False) -> Callable[[Hyperparameters, Params, Batch], Params]:
  """Training as a differentiable function of the hyperparameters.

  Args:
    apply_fn: ``apply_fn(params, inputs) -> outputs``.
    loss_fn: per-example loss.
    num_steps: SGD steps ``T`` (static).
    remat: checkpoint each step and each segment of ``isqrt(T)`` steps
      (memory ``O(sqrt(T))`` in the backward pass, one more forward pass).
    minibatches: False: ``batches`` is one :class:`~metalax.types.Batch` used
      at every step; True: its leaves have a leading ``[T]`` axis, one
      minibatch per step.

  Returns:
    ``train(hyperparams, params, batches) -> trained params``: ``T`` steps of
    ``w <- w - exp(log_lr) * grad regularised_loss(w)`` per layer.

  Raises:
    ValueError: if ``num_steps`` is not an int >= 0; when called with
      ``minibatches=True``, if the batches' leading axis is not ``num_steps``.
  """
  num_steps = check_num_steps(num_steps)

  def train(hyperparams: Hyperparameters, params: Params, batches: Batch) -> Params:
    per_step = minibatches
    if per_step and (batches.inputs.shape[:1] != (num_steps,) or batches.labels.shape[:1] != (num_steps,)):
      raise ValueError(f"minibatches=True expects batches with a leading [num_steps] = [{num_steps}] axis, got "
                       f"inputs {tuple(batches.inputs.shape)} and labels {tuple(batches.labels.shape)}.")
    rates = _expand(hyperparams["log_learning_rate"], params)

    def step(params, batch):
      grads = jax.grad(regularised_loss, argnums=2)(apply_fn, loss_fn, params, hyperparams, batch)
      return jax.tree.map(lambda p, g, r: p - jnp.exp(r) * g, params, grads, rates), None

    if per_step:
      scan = lambda fn, carry, xs, length: jax.lax.scan(fn, carry, xs, length=length)[0]
      xs = batches
    else:
      scan = lambda fn, carry, xs, length: jax.lax.scan(
          lambda c, _: fn(c, batches), carry, None, length=length)[0]
      xs = None
    if not remat:
      return scan(step, params, xs, num_steps)
    checkpointed = jax.checkpoint(step)
    length = max(1, math.isqrt(num_steps))
    num_segments, rest = divmod(num_steps, length)

    @jax.checkpoint
    def segment(params, segment_xs):
      return scan(checkpointed, params, segment_xs, length), None

    head = tail = None
    if per_step:
      head = jax.tree.map(lambda x: x[:num_segments * length].reshape((num_segments, length) + x.shape[1:]),
                          batches)
      tail = jax.tree.map(lambda x: x[num_segments * length:], batches)
    params = jax.lax.scan(segment, params, head, length=num_segments)[0]
    return scan(checkpointed, params, tail, rest)

  return train


def unrolled_hypergradient(apply_fn: ApplyFn, loss_fn: LossFn, *, num_steps: int, remat: bool = False,
                           minibatches: bool = False) -> Callable[..., tuple[jax.Array, Hyperparameters, Params]]:
  """The hypergradient by reverse-mode differentiation through ``num_steps`` SGD steps.

  Args:
    apply_fn, loss_fn, num_steps, remat, minibatches: as :func:`sgd_training`.

  Returns:
    ``hypergradient(hyperparams, params, train_batches, validation) ->
    (validation_loss, hypergradients, trained_params)``: the mean validation
    loss after training from ``params``, its gradient with respect to every
    hyperparameter (the structure of ``hyperparams``), and the trained
    parameters. Wrap it in ``jax.jit``.

  Example:
    >>> hyperparams = metalax.hyper.layer_hyperparameters(params, learning_rate=0.1)
    >>> hypergradient = jax.jit(metalax.hyper.unrolled_hypergradient(apply_fn, loss_fn, num_steps=100))
    >>> loss, grads, _ = hypergradient(hyperparams, params, train, validation)
    >>> updates, opt_state = optax.adam(0.05).update(grads, opt_state)

  References:
    Maclaurin, Duvenaud & Adams, Gradient-based Hyperparameter Optimization
    through Reversible Learning, ICML 2015; Franceschi, Donini, Frasconi &
    Pontil, Forward and Reverse Gradient-Based Hyperparameter Optimization,
    ICML 2017.
  """
  train = sgd_training(apply_fn, loss_fn, num_steps=num_steps, remat=remat, minibatches=minibatches)

  def validation_loss(hyperparams, params, train_batches, validation):
    trained = train(hyperparams, params, train_batches)
    return jnp.mean(loss_fn(apply_fn(trained, validation.inputs), validation.labels)), trained

  grad_fn = jax.value_and_grad(validation_loss, has_aux=True)

  def hypergradient(hyperparams: Hyperparameters, params: Params, train_batches: Batch, validation: Batch):
    (loss, trained), grads = grad_fn(hyperparams, params, train_batches, validation)
    return loss, grads, trained

  return hypergradient


def implicit_hypergradient(apply_fn: ApplyFn, loss_fn: LossFn, *, num_steps: int,
                           inner_optimizer: optax.GradientTransformation | None = None, inner_lr: float = 0.1,
                           cg_steps: int = 20, damping: float = 0.0
                           ) -> Callable[..., tuple[jax.Array, Hyperparameters, Params]]:
  """The hypergradient by implicit differentiation at the (approximate) training optimum.

  Training minimises :func:`regularised_loss` with ``num_steps`` steps of
  ``inner_optimizer`` (default ``optax.sgd(inner_lr)``; the learning-rate
  hyperparameters are not used) with nothing stored for the backward pass.
  The backward pass solves ``(H + damping I) x = grad_w L_val(w*)`` by
  ``cg_steps`` conjugate-gradient iterations on Hessian-vector products of
  the training objective at ``w*``, then returns ``-(d/dh grad_w
  L_train(w*, h))^T x``. Exact when ``w*`` is the optimum, ``H`` is positive
  definite and CG has converged; the gradient of ``log_learning_rate`` is 0
  (a learning rate does not move the optimum).

  Args:
    apply_fn, loss_fn: as :func:`sgd_training`.
    num_steps: training steps towards the optimum.
    inner_optimizer: any optax transform; default ``optax.sgd(inner_lr)``.
    inner_lr: learning rate of the default optimiser.
    cg_steps: conjugate-gradient iterations (>= 1).
    damping: ``>= 0``, added to the Hessian's diagonal for stability.

  Returns:
    ``hypergradient(hyperparams, params, train, validation) ->
    (validation_loss, hypergradients, trained_params)`` as in
    :func:`unrolled_hypergradient`, ``train`` one full batch.

  References:
    Pedregosa, Hyperparameter optimization with approximate gradient, ICML
    2016; Rajeswaran, Finn, Kakade & Levine, Meta-Learning with Implicit
    Gradients, NeurIPS 2019; Lorraine, Vicol & Duvenaud, Optimizing Millions of
    Hyperparameters by Implicit Differentiation, AISTATS 2020.
  """
  num_steps = check_num_steps(num_steps)
  if inner_optimizer is None:
    if isinstance(inner_lr, bool) or not isinstance(inner_lr, (int, float)) or not inner_lr > 0:
      raise ValueError(f"inner_lr must be a positive number, got {inner_lr!r}.")
    inner_optimizer = optax.sgd(inner_lr)
  if isinstance(cg_steps, bool) or not isinstance(cg_steps, int) or cg_steps < 1:
    raise ValueError(f"cg_steps must be an int >= 1, got {cg_steps!r}.")
  if isinstance(damping, bool) or not isinstance(damping, (int, float)) or damping < 0:
    raise ValueError(f"damping must be a number >= 0, got {damping!r}.")
  objective = functools.partial(regularised_loss, apply_fn, loss_fn)   # (params, hyperparams, batch)

  def solve(hyperparams, params, train):
    def step(carry, _):
      params, state = carry
      updates, state = inner_optimizer.update(jax.grad(objective)(params, hyperparams, train), state, params)
      return (optax.apply_updates(params, updates), state), None

    carry, _ = jax.lax.scan(step, (params, inner_optimizer.init(params)), None, length=num_steps)
    return carry[0]

  @jax.custom_vjp
  def optimum(hyperparams, params, train):
    return solve(hyperparams, params, train)

  def forward(hyperparams, params, train):
    trained = solve(hyperparams, params, train)
    return trained, (hyperparams, trained, train)

  def backward(residuals, cotangent):
    hyperparams, trained, train = residuals
    weight_grad = lambda p, h: jax.grad(objective)(p, h, train)

    def matvec(v):
      hvp = jax.jvp(lambda p: weight_grad(p, hyperparams), (trained,), (v,))[1]
      return jax.tree.map(lambda v, h: h + damping * v, v, hvp)

    solution = conjugate_gradient(matvec, cotangent, cg_steps)
    _, mixed_vjp = jax.vjp(lambda h: weight_grad(trained, h), hyperparams)
    (hyper_cotangent,) = mixed_vjp(solution)
    zeros = jax.tree.map(_zero_cotangent, (trained, train))
    return (jax.tree.map(jnp.negative, hyper_cotangent),) + zeros

  optimum.defvjp(forward, backward)

  def validation_loss(hyperparams, params, train, validation):
    trained = optimum(hyperparams, params, train)
    return jnp.mean(loss_fn(apply_fn(trained, validation.inputs), validation.labels)), trained

  grad_fn = jax.value_and_grad(validation_loss, has_aux=True)

  def hypergradient(hyperparams: Hyperparameters, params: Params, train: Batch, validation: Batch):
    (loss, trained), grads = grad_fn(hyperparams, params, train, validation)
    return loss, grads, trained

  return hypergradient


def _expand(prefix: Any, params: Params) -> Params:
  """A hyperparameter prefix tree broadcast to the full structure of ``params``."""
  try:
    return jax.tree.map(lambda h, sub: jax.tree.map(lambda _: h, sub), prefix, params)
  except (ValueError, TypeError) as e:
    raise ValueError(f"hyperparameters must be a pytree prefix of the parameters (one value per layer, "
                     f"per leaf or one global value): {e}") from None


def _zero_cotangent(x: jax.Array) -> jax.Array:
  if jnp.issubdtype(jnp.result_type(x), jnp.inexact):
    return jnp.zeros_like(x)
  return np.zeros(jnp.shape(x), dtype=jax.dtypes.float0)
