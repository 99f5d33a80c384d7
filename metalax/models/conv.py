"""Conv-4: the four-block convolutional backbone of MAML and Prototypical Networks.

The network matches learn2learn 0.2.0 (``learn2learn/vision/models/cnn4.py``,
read from the ``learn2learn-0.2.0`` sdist on PyPI), so that a benchmark against
it compares the same function:

* ``ConvBlock``: ``Conv2d(3x3, padding=1, bias=True)`` -> ``BatchNorm2d`` ->
  ``ReLU`` -> optional ``MaxPool2d``. With ``max_pool=False`` the convolution
  has stride 2; with ``max_pool=True`` it has stride 1 and is followed by
  ``MaxPool2d(kernel_size=2, stride=2, ceil_mode=False)`` (odd sizes are
  floored: 7 -> 3).
* ``BatchNorm2d(affine=True)`` with PyTorch's defaults (``eps=1e-5``); the
  networks are run in training mode, so every call normalises with the
  statistics of its own batch (biased variance). Its weight is initialised
  ``uniform(0, 1)``, its bias 0. The conv weights are ``xavier_uniform`` (gain
  1), the conv biases 0.
* ``OmniglotCNN`` (MAML's Omniglot net, Finn et al. 2017): ``ConvBase(hidden=64,
  channels=1, max_pool=False, layers=4)``, then the mean over the spatial axes,
  then ``Linear(hidden, output_size)`` initialised ``normal(0, 1)``, bias 0.
  For 28x28x1 inputs the feature maps are 14, 7, 4, 2 pixels wide and the
  embedding has ``hidden = 64`` features.
* ``CNN4`` / ``MiniImagenetCNN`` (``CNN4Backbone``): the same blocks with
  ``max_pool=True``, then a flatten (``x.reshape(n, -1)``, 25 * hidden features
  for 84x84 inputs) and a ``Linear`` initialised ``xavier_uniform``, bias 0.
  For 28x28x1 inputs the feature maps are 28->14, 14->7, 7->3, 3->1 pixels wide
  and the embedding has ``hidden = 64`` features.

Note that PyTorch's ``padding=1`` pads one pixel on each side, which for a
stride-2 convolution of an even-sized input is not TensorFlow's ``SAME``
(MAML's original code): ``SAME`` pads only the end. This module follows
learn2learn.

The convolutions are written for second-order MAML on XLA:CPU, where a meta-
learner vmaps ``apply_fn(params, x)`` over tasks whose parameters differ. XLA
lowers a vmapped ``lax.conv_general_dilated`` with per-task kernels to a
grouped convolution, and its kernel gradient to a ``batch_group_count``
convolution, both an order of magnitude slower than the same work as matrix
products. With ``conv_impl="patches"`` (the default) every convolution is a
matrix product of image patches with the kernel, so under ``vmap`` it becomes
a batched GEMM:

* stride 2, or fewer than 8 input channels: the nine shifted (strided) views
  are stacked into ``[n, ho, wo, 9 * c]`` patches (two nested 3-way stacks on
  non-minor axes, which XLA fuses into one loop) and multiplied by the kernel
  as ``[9 * c, o]``;
* stride 1 with at least 8 input channels: only the three horizontal shifts
  are stacked (``[n, h, w, 3 * c]``, a third of the memory), multiplied by
  the kernel as ``[3 * c, 3 * o]``, and the product's three slices are added
  one row up, in place and one row down (the zero padding rows are never
  multiplied).

Batch statistics are computed in one pass (``E[x^2] - E[x]^2``). Batch
normalisation of a convolution of fewer than 8 input channels (the first
layer) is folded into it: its statistics follow from the patch covariance,
and conv + norm become one affine map of the patches (see
:func:`_conv_batch_norm`). Under batch normalisation the conv bias, which the
mean subtraction cancels, is not added (it stays a parameter, with zero
gradient, so the parameter tree mirrors learn2learn's). Max-pooling is a
reshape and a max with a derivative that routes tangents through a mask of the
window maxima (no ``select_and_scatter``, which is slow on CPU, and no tie
counts). ``conv_impl="xla"`` uses
``lax.conv_general_dilated`` instead, the better choice on GPU or without
per-task parameters.

References:
  Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of
  Deep Networks. ICML 2017.
  Vinyals et al. Matching Networks for One Shot Learning. NeurIPS 2016.
  Arnold et al. learn2learn: A Library for Meta-Learning Research. 2020.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

VARIANTS = ("strided", "maxpool")
NORMS = ("batch", "layer", "group", "none")
CONV_IMPLS = ("patches", "xla")

_PAD = ((1, 1), (1, 1))
# Stride-1 convolutions with at least this many input channels use horizontal
# patches and a [3c, 3o] kernel; thinner inputs (the first layer) use full patches.
_MIN_CHANNELS_FOR_ROWS = 8


def _full_patches(x: jax.Array, stride: int) -> jax.Array:
  """``[n, h, w, c]`` -> ``[n, ho, wo, 9 * c]`` patches of a 3x3, padding-1 conv.

  The last axis is ordered ``(dy, dx, c)``, matching a ``[3, 3, c, o]`` kernel
  reshaped to ``[9 * c, o]``.
  """
  n, h, w, c = x.shape
  ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
  xp = jnp.pad(x, ((0, 0), *_PAD, (0, 0)))
  rows = []
  for dy in range(3):
    cols = [
        lax.slice(xp, (0, dy, dx, 0),
                  (n, dy + stride * (ho - 1) + 1, dx + stride * (wo - 1) + 1, c),
                  (1, stride, stride, 1))
        for dx in range(3)
    ]
    # XLA:CPU fuses a concatenate only if it has at most 8 operands and is not
    # along a long minor axis: stack 3 at a time on non-minor axes.
    rows.append(jnp.stack(cols, axis=-2))  # [n, ho, wo, 3, c]
  return jnp.stack(rows, axis=-3).reshape(n, ho, wo, 9 * c)


def _conv_patches(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """3x3 convolution, padding 1, as matrix products of patches with the kernel."""
  n, h, w, c = x.shape
  o = kernel.shape[-1]
  if stride == 1 and c >= _MIN_CHANNELS_FOR_ROWS:
    xp = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))  # the zero rows would add zero products
    patches = jnp.stack([xp[:, :, dx:dx + w] for dx in range(3)], axis=-2)
    patches = patches.reshape(n * h * w, 3 * c)  # (dx, c)
    kernel = jnp.transpose(kernel, (1, 2, 0, 3)).reshape(3 * c, 3 * o)  # (dx, c) x (dy, o)
    z = jnp.dot(patches, kernel).reshape(n, h, w, 3, o)  # z[:, r, :, dy]: row r's term in output row r + 1 - dy
    above = jnp.pad(z[:, :h - 1, :, 0], ((0, 0), (1, 0), (0, 0), (0, 0)))
    below = jnp.pad(z[:, 1:, :, 2], ((0, 0), (0, 1), (0, 0), (0, 0)))
    return above + z[:, :, :, 1] + below
  patches = _full_patches(x, stride)
  _, ho, wo, _ = patches.shape
  y = jnp.dot(patches.reshape(n * ho * wo, 9 * c), kernel.reshape(9 * c, o))
  return y.reshape(n, ho, wo, o)


def _conv_xla(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  return lax.conv_general_dilated(
      x, kernel, (stride, stride), _PAD, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def max_pool(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2; odd sizes are floored, as in PyTorch.

  ``lax.reduce_window`` (``nn.max_pool`` with ``padding="VALID"``): its
  derivatives (``select_and_gather_add`` forward, ``select_and_scatter_add``
  backward) are exact to second order under ``jit``. A reshape-and-max with a
  custom derivative was tried and dropped: under ``jit`` its second-order
  MAML meta-gradients through a max-pooled Conv-4 differed from the eager ones
  by up to 1.5 (entries of size ~0.3), while ``reduce_window``'s agree to
  1e-5 (``tests/models/test_conv.py``).

  Args:
    x: ``[n, h, w, c]``.

  Returns:
    ``[n, h // 2, w // 2, c]``.
  """
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _standardize(x: jax.Array, axes: tuple[int, ...], epsilon: float) -> jax.Array:
  """``(x - mean) / sqrt(var + epsilon)`` over ``axes``, statistics in one pass."""
  mean = x.mean(axis=axes, keepdims=True)
  var = jnp.maximum(jnp.square(x).mean(axis=axes, keepdims=True) - jnp.square(mean), 0)
  return (x - mean) * lax.rsqrt(var + epsilon)


class _Conv3x3(nn.Module):
  """3x3 convolution with padding 1; params ``kernel [3, 3, c, o]``, ``bias [o]``."""

  in_features: int
  features: int
  stride: int
  conv_impl: str
  add_bias: bool

  def setup(self) -> None:
    self.kernel = self.param("kernel", nn.initializers.xavier_uniform(),
                             (3, 3, self.in_features, self.features))
    self.bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))

  def __call__(self, x: jax.Array) -> jax.Array:
    conv = _conv_patches if self.conv_impl == "patches" else _conv_xla
    y = conv(x, self.kernel, self.stride)
    return y + self.bias if self.add_bias else y


class _Norm(nn.Module):
  """Batch, layer or group normalisation with per-channel ``scale`` and ``bias``."""

  features: int
  kind: str
  num_groups: int
  epsilon: float

  def setup(self) -> None:
    # learn2learn: BatchNorm2d weight ~ uniform(0, 1)
    scale_init = nn.initializers.uniform(scale=1.0) if self.kind == "batch" else nn.initializers.ones_init()
    self.scale = self.param("scale", scale_init, (self.features,))
    self.bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.kind == "batch":
      x = _standardize(x, (0, 1, 2), self.epsilon)
    elif self.kind == "layer":
      x = _standardize(x, (1, 2, 3), self.epsilon)
    else:
      n, h, w, c = x.shape
      groups = x.reshape(n, h, w, self.num_groups, c // self.num_groups)
      x = _standardize(groups, (1, 2, 4), self.epsilon).reshape(x.shape)
    return x * self.scale + self.bias


def _conv_batch_norm(x: jax.Array, kernel: jax.Array, scale: jax.Array, bias: jax.Array, stride: int,
                     epsilon: float) -> jax.Array:
  """Batch norm of a 3x3 convolution of a thin input, as one affine map of its patches.

  With patches ``p`` (``[m, 9c]``) and kernel ``k`` (``[9c, o]``) the
  convolution ``y = p k`` has batch mean ``mean(p) k`` and biased variance
  ``diag(k^T cov(p) k)``, so ``scale * (y - mean) / sqrt(var + eps) + bias``
  is ``p k' + b'`` with per-channel ``k'`` and ``b'`` computed from the
  ``[9c, 9c]`` patch covariance. The ``[m, o]`` convolution output is never
  normalised in a pass of its own, and its derivatives never go through the
  normalisation's per-channel reductions: for a first layer on
  ``[75, 28, 28, 1]`` images these passes cost more than the convolution.
  """
  patches = _full_patches(x, stride)
  n, ho, wo, d = patches.shape
  flat = patches.reshape(n * ho * wo, d)
  kernel = kernel.reshape(d, -1)
  mean = flat.mean(axis=0)
  centred = flat - mean
  cov = jnp.dot(centred.T, centred, precision=lax.Precision.HIGHEST) / flat.shape[0]
  var = jnp.sum(kernel * jnp.dot(cov, kernel, precision=lax.Precision.HIGHEST), axis=0)
  gain = scale * lax.rsqrt(var + epsilon)
  y = jnp.dot(flat, kernel * gain) + (bias - jnp.dot(mean, kernel) * gain)
  return y.reshape(n, ho, wo, -1)


class Conv4(nn.Module):
  """Four conv blocks (conv 3x3 -> norm -> ReLU [-> max-pool]) and a linear head.

  ``Conv4(num_outputs=5)`` is MAML's Omniglot network (learn2learn's
  ``OmniglotCNN``); ``Conv4(num_outputs=5, hidden=32, variant="maxpool")`` is
  its MiniImagenet network (learn2learn's ``CNN4``); ``Conv4(None,
  variant="maxpool")`` is the Prototypical Networks embedding. See the module
  docstring for the exact definitions.

  Attributes:
    num_outputs: width of the final ``Dense`` layer named ``"head"`` (logits,
      ``num_ways`` for classification); ``None`` returns the embedding.
    hidden: channels of every conv layer.
    variant: ``"strided"``: stride-2 convolutions, embedding = mean over the
      spatial axes; ``"maxpool"``: stride-1 convolutions each followed by a 2x2
      max-pool, embedding = the flattened ``[h, w, hidden]`` feature map.
    norm: ``"batch"``: normalise each channel with the mean and variance of
      the current batch (no running averages, as MAML does); ``"layer"``: each
      example over all its features; ``"group"``: each example over groups of
      ``hidden // num_groups`` channels; ``"none"``. All but ``"none"`` learn a
      per-channel scale and bias.
    num_groups: groups for ``norm="group"``; must divide ``hidden``. ``None``:
      ``gcd(32, hidden)`` (32 groups, as in Wu and He 2018, when ``hidden`` is a
      multiple of 32).
    epsilon: added to the variance.
    conv_impl: ``"patches"``: matrix products of image patches, fast on CPU
      when the parameters differ per task (see the module docstring);
      ``"xla"``: ``lax.conv_general_dilated`` (cuDNN on GPU; slower than
      ``"patches"`` for per-task MAML on CPU and on an H100, see
      BUILD_NOTES.md).

  Params: ``conv_0 .. conv_3`` (``kernel [3, 3, c_in, hidden]``, ``bias
  [hidden]``), ``norm_0 .. norm_3`` (``scale [hidden]``, ``bias [hidden]``;
  absent for ``norm="none"``) and ``head`` (``kernel [d, num_outputs]``,
  ``bias [num_outputs]``).

  Inputs are ``[n, h, w, c]`` float images; outputs are ``[n, num_outputs]``
  logits, or ``[n, d]`` embeddings when ``num_outputs`` is ``None`` (``d =
  hidden`` for ``"strided"``; ``d = hidden * h' * w'`` for ``"maxpool"``,
  where ``h' = w' = 1`` for 28x28 and 5 for 84x84 inputs).

  Example:
    >>> model = Conv4(num_outputs=5)
    >>> params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    >>> model.apply(params, jnp.zeros((10, 28, 28, 1))).shape
    (10, 5)

  Raises:
    ValueError: for an unknown ``variant``, ``norm`` or ``conv_impl``, a
      ``num_groups`` that does not divide ``hidden``, inputs that are not
      ``[n, h, w, c]``, or images too small for four max-pools.
  """

  num_outputs: int | None = None
  hidden: int = 64
  variant: str = "strided"
  norm: str = "batch"
  num_groups: int | None = None
  epsilon: float = 1e-5
  conv_impl: str = "patches"

  def __post_init__(self) -> None:
    for name, allowed in (("variant", VARIANTS), ("norm", NORMS), ("conv_impl", CONV_IMPLS)):
      if getattr(self, name) not in allowed:
        raise ValueError(
            f"Conv4 {name} must be one of {allowed}, got {getattr(self, name)!r}.")
    if self.num_groups is not None and (self.num_groups < 1 or self.hidden % self.num_groups):
      raise ValueError(
          f"Conv4 num_groups must be a positive divisor of hidden={self.hidden}, "
          f"got num_groups={self.num_groups}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    if inputs.ndim != 4:
      raise ValueError(
          f"Conv4 expects images of shape [n, h, w, c], got shape {tuple(inputs.shape)}.")
    if self.variant == "maxpool" and min(inputs.shape[1:3]) < 16:
      raise ValueError(
          "Conv4 with variant='maxpool' needs images of at least 16x16 pixels (four "
          f"2x2 max-pools), got shape {tuple(inputs.shape)}.")
    stride = 2 if self.variant == "strided" else 1
    x = inputs.astype(jnp.float32)
    for i in range(4):
      conv = _Conv3x3(x.shape[-1], self.hidden, stride, self.conv_impl, add_bias=self.norm != "batch",
                      name=f"conv_{i}")
      norm = None if self.norm == "none" else _Norm(
          self.hidden, self.norm, self.num_groups or math.gcd(32, self.hidden), self.epsilon, name=f"norm_{i}")
      if self.norm == "batch" and self.conv_impl == "patches" and x.shape[-1] < _MIN_CHANNELS_FOR_ROWS:
        x = _conv_batch_norm(x, conv.kernel, norm.scale, norm.bias, stride, self.epsilon)
      else:
        x = conv(x)
        x = x if norm is None else norm(x)
      x = nn.relu(x)
      if self.variant == "maxpool":
        x = max_pool(x)
    if self.variant == "strided":
      x = x.mean(axis=(1, 2))
      head_init: Any = nn.initializers.normal(stddev=1.0)  # OmniglotCNN
    else:
      x = x.reshape(x.shape[0], -1)
      head_init = nn.initializers.xavier_uniform()  # CNN4
    if self.num_outputs is None:
      return x
    return nn.Dense(self.num_outputs, kernel_init=head_init, name="head")(x)
