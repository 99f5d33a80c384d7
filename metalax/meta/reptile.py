"""Reptile, with its outer update expressed as a pseudo-gradient for any optax optimizer."""

import jax
import optax

from metalax.meta import inner
from metalax.meta.base import Aux, MetaLearner, MetaParams, query_metrics, split_key, support_loss
from metalax.types import ApplyFn, Batch, Episode, LossFn, Params, apply_model


def reptile(apply_fn: ApplyFn, loss_fn: LossFn, *, num_steps: int, inner_lr: float | None = None,
            inner_optimizer: optax.GradientTransformation | None = None) -> MetaLearner:
  """Reptile: move the initialisation towards the parameters adapted to each task.

  Adaptation runs ``num_steps`` steps of the inner optimizer on the support
  set, with no gradient through them. The learner's ``loss`` is the surrogate
  ``0.5 * ||params - stop_gradient(adapted)||^2`` whose gradient is Reptile's
  pseudo-gradient ``params - adapted``: :func:`metalax.meta.train_step` with
  ``optax.sgd(epsilon)`` is the paper's update
  ``params <- params + epsilon * mean(adapted - params)``, and any other optax
  optimizer (e.g. Adam, as in the paper's few-shot experiments) applies to the
  pseudo-gradient. ``aux`` holds the query metrics after adaptation.

  Args:
    apply_fn: ``apply_fn(params, inputs) -> outputs``.
    loss_fn: per-example loss.
    num_steps: inner steps (``adapt`` and ``loss`` take a ``num_steps=`` override).
    inner_lr: learning rate of plain-SGD inner steps.
    inner_optimizer: any optax transform instead of ``inner_lr`` (the paper uses Adam).

  Returns:
    A :class:`~metalax.meta.MetaLearner` with meta-parameters ``{"params": params}``.

  References:
    Nichol, Achiam & Schulman, On First-Order Meta-Learning Algorithms, 2018.
  """
  optimizer = inner.inner_optimizer_of(inner_lr, inner_optimizer)
  default_steps = inner.check_num_steps(num_steps)

  def adapt(meta_params: MetaParams, support: Batch, num_steps: int = default_steps,
            key: jax.Array | None = None) -> Params:
    inner.check_num_steps(num_steps)
    leaves, treedef = jax.tree.flatten(jax.lax.stop_gradient(meta_params["params"]))

    def objective(leaves, step_key=None):
      return support_loss(apply_fn, loss_fn, treedef.unflatten(leaves), support, step_key)

    leaves = inner.inner_loop(
        objective, leaves, optimizer.init(leaves), optimizer.update, num_steps=num_steps,
        first_order=True, key=key)
    return treedef.unflatten(leaves)

  def predict(task_params: Params, inputs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    return apply_model(apply_fn, task_params, inputs, key)

  def loss(meta_params: MetaParams, episode: Episode, key: jax.Array | None = None,
           **adapt_kwargs) -> tuple[jax.Array, Aux]:
    adapt_key, predict_key = split_key(key)
    adapted = adapt(meta_params, episode.support, key=adapt_key, **adapt_kwargs)
    params = jax.tree.leaves(meta_params["params"])
    surrogate = 0.5 * inner.squared_distance(params, jax.tree.leaves(adapted))
    outputs = predict(adapted, episode.query.inputs, key=predict_key)
    return surrogate, query_metrics(outputs, episode.query.labels, loss_fn)

  return MetaLearner(init=lambda params: {"params": params}, adapt=adapt, predict=predict, loss=loss)
