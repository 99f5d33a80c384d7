"""Reptile, with its outer update expressed as a pseudo-gradient for any optax optimizer."""

import jax
import optax

from metalax.meta import inner
from metalax.meta.base import Aux, MetaLearner, MetaParams, query_metrics, support_loss
from metalax.types import ApplyFn, Batch, Episode, LossFn, Params


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

  def adapt(meta_params: MetaParams, support: Batch, num_steps: int = default_steps) -> Params:
    inner.check_num_steps(num_steps)
    leaves, treedef = jax.tree.flatten(jax.lax.stop_gradient(meta_params["params"]))
    objective = lambda leaves: support_loss(apply_fn, loss_fn, treedef.unflatten(leaves), support)
    leaves = inner.inner_loop(
        objective, leaves, optimizer.init(leaves), optimizer.update, num_steps=num_steps,
        first_order=True)
    return treedef.unflatten(leaves)

  def loss(meta_params: MetaParams, episode: Episode, **adapt_kwargs) -> tuple[jax.Array, Aux]:
    adapted = adapt(meta_params, episode.support, **adapt_kwargs)
    params = jax.tree.leaves(meta_params["params"])
    surrogate = 0.5 * inner.squared_distance(params, jax.tree.leaves(adapted))
    return surrogate, query_metrics(apply_fn(adapted, episode.query.inputs), episode.query.labels, loss_fn)

  return MetaLearner(init=lambda params: {"params": params}, adapt=adapt, predict=apply_fn, loss=loss)
