"""MAML and the learners that differ from it only in what the inner loop adapts and how.

``maml`` (second order), ``fomaml`` (first order), ``metasgd`` (learned
per-parameter inner learning rates) and ``anil`` (inner loop on the head only)
are one construction, :func:`maml`, with different arguments.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from metalax.meta import inner
from metalax.meta.base import MetaLearner, MetaParams, query_loss, support_loss
from metalax.types import ApplyFn, Batch, LossFn, Params, apply_model


def maml(apply_fn: ApplyFn, loss_fn: LossFn, *, num_steps: int, inner_lr: float | None = None,
         inner_optimizer: optax.GradientTransformation | None = None, first_order: bool = False,
         remat: bool = False, inner_mask: inner.Mask = None) -> MetaLearner:
  """Model-Agnostic Meta-Learning.

  The meta-parameters are ``{"params": params}``; adaptation runs
  ``num_steps`` steps of ``inner_optimizer`` (default ``optax.sgd(inner_lr)``)
  on the mean support loss, and the meta-gradient is taken through them.

  Args:
    apply_fn: ``apply_fn(params, inputs [n, ...]) -> outputs [n, ...]``.
    loss_fn: per-example loss ``loss_fn(outputs, labels) -> [n]``.
    num_steps: inner steps (0: no adaptation, the plain loss). ``adapt`` and
      ``loss`` take a static ``num_steps=`` override, e.g. more steps at test time.
    inner_lr: learning rate of plain-SGD inner steps.
    inner_optimizer: any differentiable optax transform instead of ``inner_lr``.
    first_order: drop second-order terms (first-order MAML).
    remat: recompute each inner step in the backward pass (``jax.checkpoint``),
      trading compute for memory in long inner loops.
    inner_mask: which parameters the inner loop adapts (see
      :data:`metalax.meta.inner.Mask`); default all.

  Returns:
    A :class:`~metalax.meta.MetaLearner`.

  Raises:
    ValueError: if ``num_steps`` is not an int >= 0, or ``inner_lr`` is not positive.

  Example:
    >>> learner = metalax.meta.maml(apply_fn, metalax.losses.squared_error,
    ...                             inner_lr=0.01, num_steps=1)
    >>> meta_params = learner.init(params)
    >>> loss, aux = metalax.meta.batch_loss(learner)(meta_params, episodes)

  References:
    Finn, Abbeel & Levine, Model-Agnostic Meta-Learning for Fast Adaptation of
    Deep Networks, ICML 2017.
  """
  optimizer = inner.inner_optimizer_of(inner_lr, inner_optimizer)
  return _gradient_learner(
      apply_fn, loss_fn, num_steps=num_steps, update=inner.from_optax(optimizer),
      init=lambda params: {"params": params}, first_order=first_order, remat=remat,
      inner_mask=inner_mask)


def fomaml(apply_fn: ApplyFn, loss_fn: LossFn, *, num_steps: int, inner_lr: float | None = None,
           inner_optimizer: optax.GradientTransformation | None = None, remat: bool = False,
           inner_mask: inner.Mask = None) -> MetaLearner:
  """First-order MAML: :func:`maml` with ``first_order=True``.

  References:
    Finn, Abbeel & Levine, ICML 2017 (Section 5.2); Nichol, Achiam & Schulman,
    On First-Order Meta-Learning Algorithms, 2018.
  """
  return maml(apply_fn, loss_fn, num_steps=num_steps, inner_lr=inner_lr,
              inner_optimizer=inner_optimizer, first_order=True, remat=remat, inner_mask=inner_mask)


def metasgd(apply_fn: ApplyFn, loss_fn: LossFn, *, num_steps: int, init_lr: float,
            first_order: bool = False, remat: bool = False, inner_mask: inner.Mask = None) -> MetaLearner:
  """Meta-SGD: MAML whose inner learning rates are learned, one per parameter.

  The meta-parameters are ``{"params": params, "lrs": lrs}`` with ``lrs`` of
  the same structure as ``params``, initialised to ``init_lr``; an inner step
  is ``params <- params - lrs * grads`` and the outer optimizer trains both.

  Args:
    apply_fn: ``apply_fn(params, inputs) -> outputs``.
    loss_fn: per-example loss.
    num_steps: inner steps (Li et al. use 1).
    init_lr: initial value of every learned learning rate (the paper samples
      them from ``U[0.005, 0.1]``; a constant is the common choice).
    first_order, remat, inner_mask: as in :func:`maml`.

  Returns:
    A :class:`~metalax.meta.MetaLearner`.

  References:
    Li, Zhou, Chen & Li, Meta-SGD: Learning to Learn Quickly for Few-Shot
    Learning, 2017.
  """
  inner.check_positive("init_lr", init_lr)

  def init(params: Params) -> MetaParams:
    return {"params": params, "lrs": jax.tree.map(lambda p: jnp.full_like(p, init_lr), params)}

  def update(grads, state, adapted, meta_params):
    partition = inner.Partition.of(meta_params["params"], inner_mask)
    lrs, _ = partition.split(meta_params["lrs"])
    return [-lr * g for lr, g in zip(lrs, grads)], state

  return _gradient_learner(
      apply_fn, loss_fn, num_steps=num_steps, update=inner.InnerUpdate(lambda *_: (), update),
      init=init, first_order=first_order, remat=remat, inner_mask=inner_mask)


def anil(apply_fn: ApplyFn, loss_fn: LossFn, *, num_steps: int, head: str = "head",
         inner_lr: float | None = None, inner_optimizer: optax.GradientTransformation | None = None,
         first_order: bool = False, remat: bool = False) -> MetaLearner:
  """ANIL (Almost No Inner Loop): MAML that adapts only the head.

  Args:
    apply_fn, loss_fn, num_steps, inner_lr, inner_optimizer, first_order, remat:
      as in :func:`maml`.
    head: the name of the head's top-level entry in the parameter dict (the
      built-in models call it ``"head"``).

  Returns:
    A :class:`~metalax.meta.MetaLearner` whose inner loop adapts
    ``params[head]`` only; the outer loop trains all parameters.

  Raises:
    ValueError: (when adapting) if the parameters have no top-level ``head`` entry.

  References:
    Raghu, Raghu, Bengio & Vinyals, Rapid Learning or Feature Reuse? Towards
    Understanding the Effectiveness of MAML, ICLR 2020.
  """

  def head_mask(params: Params):
    if not hasattr(params, "keys") or head not in params:
      keys = list(params.keys()) if hasattr(params, "keys") else type(params).__name__
      raise ValueError(f"anil adapts params[{head!r}], but the parameters' top-level entries are {keys}.")
    # A mask in the parameters' own container types (dict, FrozenDict, nnx.State).
    return jax.tree_util.tree_map_with_path(lambda path, _: inner.path_names(path[:1]) == (head,), params)

  return maml(apply_fn, loss_fn, num_steps=num_steps, inner_lr=inner_lr,
              inner_optimizer=inner_optimizer, first_order=first_order, remat=remat,
              inner_mask=head_mask)


def _gradient_learner(apply_fn: ApplyFn, loss_fn: LossFn, *, num_steps: int,
                      update: inner.InnerUpdate, init: Callable[[Params], MetaParams],
                      first_order: bool, remat: bool, inner_mask: inner.Mask) -> MetaLearner:
  """The MAML construction, shared by :func:`maml`, :func:`metasgd` and :func:`anil`."""
  default_steps = inner.check_num_steps(num_steps)

  def adapt(meta_params: MetaParams, support: Batch, num_steps: int = default_steps,
            key: jax.Array | None = None) -> Params:
    inner.check_num_steps(num_steps)
    params = meta_params["params"]
    partition = inner.Partition.of(params, inner_mask)
    adapted, frozen = partition.split(params)

    def objective(adapted, step_key=None):
      return support_loss(apply_fn, loss_fn, partition.merge(adapted, frozen), support, step_key)

    adapted = inner.inner_loop(
        objective, adapted, update.init(adapted, meta_params),
        lambda grads, state, adapted: update.update(grads, state, adapted, meta_params),
        num_steps=num_steps, first_order=first_order, remat=remat, key=key)
    return partition.merge(adapted, frozen)

  def predict(task_params: Params, inputs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    return apply_model(apply_fn, task_params, inputs, key)

  return MetaLearner(init=init, adapt=adapt, predict=predict,
                     loss=query_loss(adapt, predict, loss_fn))
