"""iMAML: the meta-gradient of a proximally regularised inner problem by implicit differentiation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metalax.meta import inner
from metalax.meta.base import MetaLearner, MetaParams, query_loss, split_key, support_loss
from metalax.types import ApplyFn, Batch, LossFn, Params, apply_model


def imaml(apply_fn: ApplyFn, loss_fn: LossFn, *, num_steps: int, reg: float,
          inner_lr: float | None = None, inner_optimizer: optax.GradientTransformation | None = None,
          cg_steps: int = 5, damping: float = 0.0) -> MetaLearner:
  """Implicit MAML.

  Adaptation approximately solves
  ``adapted = argmin_phi  L_support(phi) + reg / 2 * ||phi - params||^2``
  with ``num_steps`` steps of the inner optimizer from ``phi = params``. The
  meta-gradient is the implicit one, ``(I + H / reg)^{-1} grad L_query(adapted)``
  with ``H`` the Hessian of the support loss at ``adapted``, solved by
  ``cg_steps`` iterations of conjugate gradients on Hessian-vector products.
  Nothing of the inner loop is stored for the backward pass, so memory does
  not grow with ``num_steps``. With a PRNG key (a stochastic model), the key
  of ``adapt`` is split into the inner steps' keys and one key for the
  support loss whose Hessian the backward pass uses.

  Args:
    apply_fn: ``apply_fn(params, inputs) -> outputs``.
    loss_fn: per-example loss.
    num_steps: inner steps (``adapt`` and ``loss`` take a ``num_steps=`` override).
    reg: strength ``lambda`` of the proximal term (the paper uses 0.5 to 2 on Omniglot).
    inner_lr: learning rate of plain gradient descent on the regularised objective.
    inner_optimizer: any optax transform instead of ``inner_lr``.
    cg_steps: conjugate-gradient iterations (the paper uses 5).
    damping: solve ``((1 + damping) I + H / reg) x = v`` instead; the official
      code damps for stability (``damping > 0``). 0 is the exact implicit gradient.

  Returns:
    A :class:`~metalax.meta.MetaLearner` with meta-parameters ``{"params": params}``.

  References:
    Rajeswaran, Finn, Kakade & Levine, Meta-Learning with Implicit Gradients,
    NeurIPS 2019.
  """
  optimizer = inner.inner_optimizer_of(inner_lr, inner_optimizer)
  default_steps = inner.check_num_steps(num_steps)
  inner.check_positive("reg", reg)
  if isinstance(cg_steps, bool) or not isinstance(cg_steps, int) or cg_steps < 1:
    raise ValueError(f"cg_steps must be an int >= 1, got {cg_steps!r}.")
  if not isinstance(damping, (int, float)) or damping < 0:
    raise ValueError(f"damping must be a number >= 0, got {damping!r}.")

  def solve(params: Params, support: Batch, num_steps: int, key: jax.Array | None) -> Params:
    anchor, treedef = jax.tree.flatten(params)

    def objective(leaves, step_key=None):
      proximal = 0.5 * reg * inner.squared_distance(leaves, anchor)
      return support_loss(apply_fn, loss_fn, treedef.unflatten(leaves), support, step_key) + proximal

    leaves = inner.inner_loop(objective, anchor, optimizer.init(anchor), optimizer.update,
                              num_steps=num_steps, first_order=True, key=key)
    return treedef.unflatten(leaves)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
  def implicit_adapt(params: Params, support: Batch, keys: tuple, num_steps: int) -> Params:
    return solve(params, support, num_steps, keys[0])

  def forward(params, support, keys, num_steps):
    adapted = solve(params, support, num_steps, keys[0])
    return adapted, (adapted, support, keys)

  def backward(num_steps, residuals, cotangent):
    adapted, support, keys = residuals
    support_grad = jax.grad(lambda p: support_loss(apply_fn, loss_fn, p, support, keys[1]))

    def matvec(v):
      hvp = jax.jvp(support_grad, (adapted,), (v,))[1]
      return jax.tree.map(lambda v, h: (1.0 + damping) * v + h / reg, v, hvp)

    solution = inner.conjugate_gradient(matvec, cotangent, cg_steps)
    return solution, jax.tree.map(_zero_cotangent, support), jax.tree.map(_zero_cotangent, keys)

  implicit_adapt.defvjp(forward, backward)

  def adapt(meta_params: MetaParams, support: Batch, num_steps: int = default_steps,
            key: jax.Array | None = None) -> Params:
    return implicit_adapt(meta_params["params"], support, split_key(key), inner.check_num_steps(num_steps))

  def predict(task_params: Params, inputs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    return apply_model(apply_fn, task_params, inputs, key)

  return MetaLearner(init=lambda params: {"params": params}, adapt=adapt, predict=predict,
                     loss=query_loss(adapt, predict, loss_fn))


def _zero_cotangent(x: jax.Array) -> jax.Array:
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.zeros_like(x)
  return np.zeros(x.shape, dtype=jax.dtypes.float0)
