r"""Conditioning a network on a task descriptor ``z``: linen modules, params only.

A task-conditioned network computes ``f(x, z)``, where ``z`` describes the
task: a one-hot task index, a learned embedding (``flax.linen.Embed``), or
given metadata (see :func:`metalax.mtl.one_hot_descriptors` and
:func:`metalax.mtl.task_descriptors`). The ways of injecting ``z`` into a
layer with input ``x [n, d_x]`` and width ``features``:

* :class:`ConcatConditioning`: ``W [x; z] + b``;
* :class:`AdditiveConditioning`: ``W_x x + W_z z + b`` (a task-dependent bias);
* :class:`FiLM` (multiplicative): ``gamma(z) * h + beta(z)`` on features ``h``
  (Perez et al., 2018), the feature-wise affine modulation; with
  ``use_shift=False`` it is pure multiplicative gating;
* :class:`MultiHead`: one linear head per task, picked by the task index.

Concatenation and additive conditioning are the same function class: writing
``W = [W_x, W_z]`` (rows split at ``d_x``), ``W [x; z] + b = W_x x + W_z z +
b`` exactly, so the parameters of one map one-to-one to the other
(``concat["dense"]["kernel"] == vstack(additive["inputs"]["kernel"],
additive["task"]["kernel"])``, same bias; tested). Conditioning becomes more
expressive than a task-dependent bias only when ``z`` also acts
multiplicatively (FiLM, task-specific heads) or enters through a nonlinearity.

Every module takes the descriptors per example, ``[n, d_z]`` (rows may belong
to different tasks), or once for the whole batch, ``[d_z]``.

References:
  Perez, Strub, de Vries, Dumoulin & Courville, FiLM: Visual Reasoning with a
  General Conditioning Layer, AAAI 2018.
  Dumoulin et al., Feature-wise transformations, Distill 2018.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Initializer = Callable[..., jax.Array]


def _broadcast_descriptors(task_embeddings: jax.Array, num_examples: int,
                           name: str = "task_embeddings") -> jax.Array:
  """``[d_z]`` or ``[n, d_z]`` -> ``[n, d_z]``."""
  task_embeddings = jnp.asarray(task_embeddings)
  if task_embeddings.ndim == 1:
    return jnp.broadcast_to(task_embeddings, (num_examples,) + task_embeddings.shape)
  if task_embeddings.ndim != 2 or task_embeddings.shape[0] != num_examples:
    raise ValueError(
        f"{name} must have shape [d_z] (one descriptor for the batch) or "
        f"[n, d_z] with n = {num_examples} (one per example), got "
        f"{tuple(task_embeddings.shape)}.")
  return task_embeddings


def _check_inputs(inputs: jax.Array, name: str = "inputs") -> None:
  if inputs.ndim != 2:
    raise ValueError(f"{name} must have shape [n, d], got {tuple(inputs.shape)}.")


class _DenseConditioning(nn.Module):
  """The fields and the call shared by :class:`ConcatConditioning` and :class:`AdditiveConditioning`.

  Both compute ``W_x x + W_z z + b``; they differ only in how ``W`` is stored:
  one kernel on ``[x; z]`` (``split_kernel=False``) or two (``True``).
  """

  features: int
  use_bias: bool = True
  kernel_init: Initializer = nn.initializers.lecun_normal()
  bias_init: Initializer = nn.initializers.zeros_init()
  split_kernel = False  # a class constant, not a field

  @nn.compact
  def __call__(self, inputs: jax.Array, task_embeddings: jax.Array) -> jax.Array:
    """Args: ``inputs [n, d_x]``, ``task_embeddings [n, d_z]`` or ``[d_z]``.

    Returns: ``[n, features]``.
    """
    _check_inputs(inputs)
    z = _broadcast_descriptors(task_embeddings, inputs.shape[0]).astype(inputs.dtype)
    dense = lambda name, use_bias=self.use_bias: nn.Dense(
        self.features, use_bias=use_bias, kernel_init=self.kernel_init, bias_init=self.bias_init, name=name)
    if not self.split_kernel:
      return dense("dense")(jnp.concatenate([inputs, z], -1))
    return dense("inputs")(inputs) + dense("task", use_bias=False)(z)


class ConcatConditioning(_DenseConditioning):
  """A dense layer on the concatenation ``[x; z]``: ``W [x; z] + b``.

  Attributes:
    features: output width.
    use_bias: whether to add ``b``.
    kernel_init: initialiser of ``W`` (``[d_x + d_z, features]``).
    bias_init: initialiser of ``b``.

  Parameters are ``{"dense": {"kernel": [d_x + d_z, features], "bias":
  [features]}}``; the first ``d_x`` kernel rows act on ``x``.

  Example:
    >>> layer = ConcatConditioning(features=8)
    >>> x, z = jnp.ones((4, 3)), jnp.eye(2)[jnp.array([0, 1, 1, 0])]
    >>> params = layer.init(jax.random.key(0), x, z)["params"]
    >>> layer.apply({"params": params}, x, z).shape
    (4, 8)
  """


class AdditiveConditioning(_DenseConditioning):
  """A dense layer plus a task-dependent bias: ``W_x x + W_z z + b``.

  The same function class as :class:`ConcatConditioning` (see the module
  docstring); with a one-hot ``z``, ``W_z z`` is a learned bias per task.

  Attributes:
    features: output width.
    use_bias: whether to add ``b``.
    kernel_init: initialiser of ``W_x`` and ``W_z``.
    bias_init: initialiser of ``b``.

  Parameters are ``{"inputs": {"kernel": [d_x, features], "bias": [features]},
  "task": {"kernel": [d_z, features]}}``.

  Example:
    >>> layer = AdditiveConditioning(features=8)
    >>> x, z = jnp.ones((4, 3)), jnp.array([1.0, 0.0])  # one task for the batch
    >>> params = layer.init(jax.random.key(0), x, z)["params"]
    >>> layer.apply({"params": params}, x, z).shape
    (4, 8)
  """

  split_kernel = True


class FiLM(nn.Module):
  r"""Feature-wise linear modulation: ``gamma(z) * h + beta(z)`` (Perez et al., 2018).

  ``gamma(z) = scale_offset + W_g z + b_g`` and ``beta(z) = W_b z + b_b`` are
  linear in the descriptor, one scale and one shift per feature (per channel
  for ``h [n, ..., d]``, shared over the middle axes, as FiLM on convolutional
  feature maps). ``scale_offset=1`` is the "Δγ" parameterisation common in
  FiLM implementations: the layer predicts ``gamma - 1``, so small generator
  weights start it near the identity rather than near zero. ``use_shift=False`` gives pure
  multiplicative gating ``gamma(z) * h``; ``use_scale=False`` reduces to
  additive conditioning of ``h``.

  Attributes:
    use_scale: whether to multiply by ``gamma(z)``.
    use_shift: whether to add ``beta(z)``.
    scale_offset: constant added to the predicted scale (1.0: Δγ form; 0.0:
      ``gamma`` predicted directly).
    kernel_init: initialiser of ``W_g`` and ``W_b``.

  Parameters are ``{"scale": {"kernel": [d_z, d], "bias": [d]}, "shift": {...}}``.

  Example:
    >>> film = FiLM()
    >>> h, z = jnp.ones((4, 6)), jnp.eye(3)[jnp.array([0, 1, 2, 0])]
    >>> params = film.init(jax.random.key(0), h, z)["params"]
    >>> film.apply({"params": params}, h, z).shape
    (4, 6)

  References:
    Perez, Strub, de Vries, Dumoulin & Courville, FiLM: Visual Reasoning with
    a General Conditioning Layer, AAAI 2018.
  """

  use_scale: bool = True
  use_shift: bool = True
  scale_offset: float = 1.0
  kernel_init: Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, features: jax.Array, task_embeddings: jax.Array) -> jax.Array:
    """Args: ``features [n, ..., d]``, ``task_embeddings [n, d_z]`` or ``[d_z]``.

    Returns: ``[n, ..., d]``, the modulated features.
    """
    if features.ndim < 2:
      raise ValueError(f"features must have shape [n, ..., d], got {tuple(features.shape)}.")
    if not (self.use_scale or self.use_shift):
      raise ValueError("FiLM needs use_scale or use_shift (or both) to be True.")
    z = _broadcast_descriptors(task_embeddings, features.shape[0]).astype(features.dtype)
    width = features.shape[-1]
    expand = (features.shape[0],) + (1,) * (features.ndim - 2) + (width,)
    out = features
    if self.use_scale:
      gamma = nn.Dense(width, kernel_init=self.kernel_init, name="scale")(z)
      out = (gamma + self.scale_offset).reshape(expand) * out
    if self.use_shift:
      beta = nn.Dense(width, kernel_init=self.kernel_init, name="shift")(z)
      out = out + beta.reshape(expand)
    return out


class MultiHead(nn.Module):
  """One linear head per task, selected by each example's task index.

  All heads have the same width ``num_outputs``. For tasks with different
  output sizes use the largest and let each task's loss read its leading
  columns (``lambda out, y: cross_entropy(out[:, :10], y)``), or use the
  per-task heads of :mod:`metalax.mtl.architectures`.

  Attributes:
    num_tasks: number of heads ``T``.
    num_outputs: width of every head.
    kernel_init: initialiser of each ``[d, num_outputs]`` kernel.
    bias_init: initialiser of each bias.

  Parameters are ``{"kernel": [T, d, num_outputs], "bias": [T, num_outputs]}``.

  Example:
    >>> heads = MultiHead(num_tasks=3, num_outputs=2)
    >>> h, task_ids = jnp.ones((4, 5)), jnp.array([0, 2, 1, 0])
    >>> params = heads.init(jax.random.key(0), h, task_ids)["params"]
    >>> heads.apply({"params": params}, h, task_ids).shape
    (4, 2)
  """

  num_tasks: int
  num_outputs: int
  kernel_init: Initializer = nn.initializers.lecun_normal(batch_axis=(0,))
  bias_init: Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, features: jax.Array, task_ids: jax.Array | int | None = None) -> jax.Array:
    """Applies the heads.

    Args:
      features: ``[n, d]``.
      task_ids: ``[n]`` int task indices in ``[0, T)``, one int for the whole
        batch, or None for every head.

    Returns:
      ``[n, num_outputs]``, each row from its task's head; ``[T, n,
      num_outputs]`` (all heads) when ``task_ids`` is None.
    """
    _check_inputs(features, "features")
    if self.num_tasks < 1 or self.num_outputs < 1:
      raise ValueError(f"num_tasks and num_outputs must be positive, got {self.num_tasks} "
                       f"and {self.num_outputs}.")
    kernel = self.param("kernel", self.kernel_init,
                        (self.num_tasks, features.shape[-1], self.num_outputs), jnp.float32)
    bias = self.param("bias", self.bias_init, (self.num_tasks, self.num_outputs), jnp.float32)
    kernel, bias = kernel.astype(features.dtype), bias.astype(features.dtype)
    if task_ids is None:
      return jnp.einsum("nd,tdo->tno", features, kernel) + bias[:, None, :]
    task_ids = jnp.asarray(task_ids)
    if task_ids.ndim == 0:
      return features @ kernel[task_ids] + bias[task_ids]
    if task_ids.shape != features.shape[:1]:
      raise ValueError(f"task_ids must have shape [n] = [{features.shape[0]}] (one task per "
                       f"example) or be a scalar, got {tuple(task_ids.shape)}.")
    # All heads, then each row's: T times the (small) head compute, no [n, d, o] gather.
    outputs = jnp.einsum("nd,tdo->nto", features, kernel) + bias[None]
    return jnp.take_along_axis(outputs, task_ids[:, None, None], axis=1)[:, 0]
