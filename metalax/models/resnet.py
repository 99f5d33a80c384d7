"""ResNet-12: the residual backbone of TADAM, MetaOptNet and FEAT, with DropBlock.

The network follows MetaOptNet's ``models/ResNet12_embedding.py`` and FEAT's
``model/networks/res12.py`` (the same code; both read from their GitHub
repositories, kjunelee/MetaOptNet and Sha-Lab/FEAT):

* four residual blocks with ``channels = (64, 160, 320, 640)``. A block maps
  ``[n, h, w, c_in]`` to ``[n, h // 2, w // 2, c_out]``: three ``3x3``
  convolutions (padding 1, stride 1, no bias), each followed by batch
  normalisation, with ``LeakyReLU(0.1)`` after the first two; a shortcut of a
  ``1x1`` convolution (no bias) and batch normalisation; the sum, a
  ``LeakyReLU(0.1)``, and a ``2x2`` max-pool of stride 2 (odd sizes floored:
  84 -> 42 -> 21 -> 10 -> 5; 32 -> 16 -> 8 -> 4 -> 2; 28 -> 14 -> 7 -> 3 -> 1).
* regularisation after each block's pool, when ``drop_rate > 0``: dropout of
  rate ``drop_rate`` after the first two blocks and DropBlock (Ghiasi et al.
  2018) with ``dropblock_size`` after the last two. MetaOptNet trains with
  ``drop_rate=0.1`` and ``dropblock_size=5`` (miniImageNet, tieredImageNet) or
  ``2`` (CIFAR-FS, FC100); FEAT with ``0.1`` and ``5``.
* initialisation: convolution kernels ``kaiming_normal(mode="fan_out",
  nonlinearity="leaky_relu")`` (PyTorch's gain ``sqrt(2)``, standard deviation
  ``sqrt(2 / (c_out * k * k))``), normalisation scale 1 and bias 0.
* 12,424,320 parameters with the default channels (the "12.4M" usually quoted
  for ResNet-12), none in the optional head.

Differences from those implementations, all deliberate:

* Normalisation uses the statistics of the current batch at every call, never
  running averages (as metalax's Conv-4 and MAML do), so the module has
  ``params`` only and can run inside inner loops; ``norm`` also offers layer,
  group or no normalisation (with no normalisation the convolutions get a
  bias).
* The embedding is the global average over the last feature map
  (``channels[-1]`` features, 640 by default), as FEAT's ``avg_pool=True``
  (``AvgPool2d(5)`` on the 5x5 map of 84x84 inputs, so the same function
  there, and defined for other input sizes); ``pooling="flatten"`` gives
  MetaOptNet's ``avg_pool=False`` embedding (``640 * 5 * 5 = 16,000`` features
  for 84x84 inputs).
* DropBlock's keep rate: MetaOptNet lowers it linearly from 1 to ``1 -
  drop_rate`` over its first 40,000 forward calls (a counter in each block;
  two calls, support and query, per training batch, plus every validation
  call), then keeps it. Here the rate is constant unless
  ``dropblock_schedule_steps`` is set, in which case the caller passes the
  training ``step`` and the DropBlock rate is ``drop_rate * min(step /
  dropblock_schedule_steps, 1)`` (MetaOptNet: ``dropblock_schedule_steps=40000``
  in forward calls, about 20,000 training steps). Dropout in the first two
  blocks is constant, as in MetaOptNet.
* When a feature map is smaller than ``dropblock_size`` (e.g. the 3x3 and 1x1
  maps of 28x28 inputs) the block is clipped to the map, as Ghiasi et al.
  suggest; MetaOptNet would fail there. Seeds are drawn only where a whole
  block fits, and the mask is rescaled by ``size / kept`` over the whole batch,
  as in MetaOptNet; ``gamma = rate / b^2 * h w / ((h - b + 1)(w - b + 1))``
  (MetaOptNet's formula, written for non-square maps).
* Optional ``num_outputs``: a ``Dense`` layer named ``"head"`` on the
  embedding (flax's default initialisation), as in :class:`Conv4`, so gradient
  learners (MAML, ANIL's head) get logits and metric learners embeddings.

Randomness is a flax ``"dropout"`` PRNG stream: ``model.apply(variables, x,
rngs={"dropout": key})`` draws the masks; without that stream (or with
``deterministic=True``) dropout and DropBlock are off and the network is a
deterministic function of its inputs.

The convolutions share :mod:`metalax.models.conv`'s implementations
(``conv_impl="patches"``: matrix products of image patches, fast for per-task
parameters on CPU; ``"xla"``: ``lax.conv_general_dilated``).

References:
  Oreshkin, Rodriguez, Lacoste. TADAM: Task dependent adaptive metric for
  improved few-shot learning. NeurIPS 2018.
  Lee, Maji, Ravichandran, Soatto. Meta-Learning with Differentiable Convex
  Optimization (MetaOptNet). CVPR 2019.
  Ye, Hu, Zhan, Sha. Few-Shot Learning via Embedding Adaptation with
  Set-to-Set Functions (FEAT). CVPR 2020.
  Ghiasi, Lin, Le. DropBlock: A regularization method for convolutional
  networks. NeurIPS 2018.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from metalax.models.conv import _MIN_CHANNELS_FOR_ROWS
from metalax.models.conv import CONV_IMPLS
from metalax.models.conv import NORMS
from metalax.models.conv import _conv_batch_norm
from metalax.models.conv import _conv_patches
from metalax.models.conv import _conv_xla
from metalax.models.conv import _standardize
from metalax.models.conv import max_pool

POOLINGS = ("average", "flatten")
METAOPTNET_CHANNELS = (64, 160, 320, 640)

# PyTorch's kaiming_normal_(mode="fan_out", nonlinearity="leaky_relu") with its default a=0: gain sqrt(2).
_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def dropblock_gamma(drop_rate: float | jax.Array, height: int, width: int, block_size: int) -> jax.Array:
  """The seed probability of DropBlock on an ``[h, w]`` map (block clipped to the map).

  ``gamma = drop_rate / b^2 * (h w) / ((h - b + 1) (w - b + 1))`` with ``b =
  min(block_size, h, w)``: MetaOptNet's formula, which Ghiasi et al. derive
  so that about ``drop_rate`` of the map is dropped when blocks rarely
  overlap. Clipped to ``[0, 1]``.
  """
  block = min(block_size, height, width)
  gamma = drop_rate / block ** 2 * (height * width) / ((height - block + 1) * (width - block + 1))
  return jnp.clip(gamma, 0.0, 1.0)


def dropblock_rate(drop_rate: float, step: int | jax.Array, schedule_steps: int | None) -> jax.Array:
  """DropBlock's rate at ``step``: ``drop_rate * min(step / schedule_steps, 1)``; ``drop_rate`` if no schedule.

  MetaOptNet's keep rate ``max(1 - drop_rate * t / 40000, 1 - drop_rate)``
  after ``t`` forward calls is this with ``schedule_steps=40000`` and ``step=t``.
  """
  if schedule_steps is None:
    return jnp.asarray(drop_rate, jnp.float32)
  return drop_rate * jnp.minimum(jnp.asarray(step, jnp.float32) / schedule_steps, 1.0)


def dropblock_mask(key: jax.Array, shape: tuple[int, int, int, int], drop_rate: float | jax.Array,
                   block_size: int) -> jax.Array:
  """A DropBlock keep mask: 0 on dropped ``b x b`` blocks, 1 elsewhere.

  Seeds are Bernoulli(``gamma``) (see :func:`dropblock_gamma`) at the
  ``(h - b + 1) x (w - b + 1)`` positions where a whole block fits, independently
  per example and channel; a seed at ``(i, j)`` drops rows ``i .. i + b - 1``
  and columns ``j .. j + b - 1``, with ``b = min(block_size, h, w)``.

  Args:
    key: a PRNG key.
    shape: ``(n, h, w, c)``.
    drop_rate: the target fraction to drop, in ``[0, 1]`` (may be traced).
    block_size: the static block side ``b`` (at least 1).

  Returns:
    ``[n, h, w, c]`` float32 of zeros and ones.
  """
  n, h, w, c = shape
  block = min(block_size, h, w)
  gamma = dropblock_gamma(drop_rate, h, w, block_size)
  seeds = jax.random.bernoulli(key, gamma, (n, h - block + 1, w - block + 1, c)).astype(jnp.float32)
  # Position (y, x) is dropped if a seed lies in [y - b + 1, y] x [x - b + 1, x].
  dropped = lax.reduce_window(seeds, 0.0, lax.max, (1, block, block, 1), (1, 1, 1, 1),
                              ((0, 0), (block - 1, block - 1), (block - 1, block - 1), (0, 0)))
  return 1.0 - dropped


def dropblock(key: jax.Array, x: jax.Array, drop_rate: float | jax.Array, block_size: int) -> jax.Array:
  """DropBlock: ``x * mask * (mask.size / mask.sum())`` with :func:`dropblock_mask`.

  The rescaling uses the kept fraction of the whole ``[n, h, w, c]`` batch, as
  MetaOptNet does (when every position is dropped the output is 0).

  Args:
    key: a PRNG key.
    x: ``[n, h, w, c]`` feature maps.
    drop_rate: fraction to drop, in ``[0, 1]``.
    block_size: block side (static).

  Returns:
    ``[n, h, w, c]``.

  References:
    Ghiasi, Lin, Le. DropBlock: A regularization method for convolutional
    networks. NeurIPS 2018.
  """
  mask = dropblock_mask(key, x.shape, drop_rate, block_size)
  return x * mask.astype(x.dtype) * (mask.size / jnp.maximum(mask.sum(), 1.0)).astype(x.dtype)


def _dropout(key: jax.Array, x: jax.Array, drop_rate: float) -> jax.Array:
  keep = jax.random.bernoulli(key, 1.0 - drop_rate, x.shape)
  return jnp.where(keep, x / (1.0 - drop_rate), 0.0).astype(x.dtype)


class _Conv(nn.Module):
  """A ``size x size`` convolution (padding ``size // 2``, stride 1); params ``kernel``, and ``bias`` if asked.

  ``kernel`` is ``[3, 3, c, o]`` for ``size=3`` and ``[c, o]`` for ``size=1``.
  """

  in_features: int
  features: int
  size: int
  use_bias: bool
  conv_impl: str

  def setup(self) -> None:
    shape = (3, 3) if self.size == 3 else ()
    self.kernel = self.param("kernel", _kernel_init, shape + (self.in_features, self.features))
    if self.use_bias:
      self.bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.size == 1:
      y = jnp.dot(x, self.kernel)
    elif self.conv_impl == "patches":
      y = _conv_patches(x, self.kernel, 1)
    else:
      y = _conv_xla(x, self.kernel, 1)
    return y + self.bias if self.use_bias else y


class _Norm(nn.Module):
  """Batch (the current batch's statistics), layer or group normalisation; ``scale`` 1 and ``bias`` 0 at init."""

  features: int
  kind: str
  num_groups: int
  epsilon: float

  def setup(self) -> None:
    self.scale = self.param("scale", nn.initializers.ones_init(), (self.features,))
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


def _check_norm(who: str, norm: str, num_groups: int | None, channels: tuple[int, ...]) -> None:
  if norm not in NORMS:
    raise ValueError(f"{who} norm must be one of {NORMS}, got {norm!r}.")
  if num_groups is not None and (num_groups < 1 or any(c % num_groups for c in channels)):
    raise ValueError(f"{who} num_groups must be a positive divisor of every channel count {channels}, "
                     f"got num_groups={num_groups}.")


class ResidualBlock(nn.Module):
  """One ResNet-12 block: three conv-norm layers, a 1x1 shortcut, LeakyReLU and a 2x2 max-pool.

  ``y = max_pool(a(N2(C2(a(N1(C1(a(N0(C0(x))))))))) + Ns(Cs(x))))`` with ``a``
  the LeakyReLU of slope ``negative_slope``, ``C0 .. C2`` 3x3 convolutions
  (padding 1, stride 1), ``Cs`` a 1x1 convolution, ``N`` the normalisation
  (see :class:`ResNet12`), and the last ``a`` applied to the sum.

  Attributes:
    features: output channels.
    norm: ``"batch"``, ``"layer"``, ``"group"`` or ``"none"``.
    num_groups: groups for ``norm="group"``; ``None``: ``gcd(32, features)``.
    epsilon: added to the variance.
    negative_slope: LeakyReLU's slope for negative inputs.
    conv_impl: ``"patches"`` or ``"xla"`` (see :mod:`metalax.models.conv`).

  Params: ``conv_0 .. conv_2`` (``kernel [3, 3, c, features]``) and
  ``shortcut_conv`` (``kernel [c, features]``), each with ``bias
  [features]`` when ``norm="none"``; ``norm_0 .. norm_2`` and ``shortcut_norm``
  (``scale [features]``, ``bias [features]``; absent when ``norm="none"``).

  Inputs ``[n, h, w, c]``; outputs ``[n, h // 2, w // 2, features]``.
  """

  features: int
  norm: str = "batch"
  num_groups: int | None = None
  epsilon: float = 1e-5
  negative_slope: float = 0.1
  conv_impl: str = "patches"

  def __post_init__(self) -> None:
    _check_norm("ResidualBlock", self.norm, self.num_groups, (self.features,))
    if self.conv_impl not in CONV_IMPLS:
      raise ValueError(f"ResidualBlock conv_impl must be one of {CONV_IMPLS}, got {self.conv_impl!r}.")
    super().__post_init__()

  def _layer(self, x: jax.Array, size: int, conv_name: str, norm_name: str) -> jax.Array:
    c = x.shape[-1]
    conv = _Conv(c, self.features, size, self.norm == "none", self.conv_impl, name=conv_name)
    if self.norm == "none":
      return conv(x)
    norm = _Norm(self.features, self.norm, self.num_groups or math.gcd(32, self.features), self.epsilon,
                 name=norm_name)
    if size == 3 and self.norm == "batch" and self.conv_impl == "patches" and c < _MIN_CHANNELS_FOR_ROWS:
      return _conv_batch_norm(x, conv.kernel, norm.scale, norm.bias, 1, self.epsilon)
    return norm(conv(x))

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    activation = lambda y: nn.leaky_relu(y, self.negative_slope)
    y = x
    for i in range(3):
      y = self._layer(y, 3, f"conv_{i}", f"norm_{i}")
      if i < 2:
        y = activation(y)
    y = y + self._layer(x, 1, "shortcut_conv", "shortcut_norm")
    return max_pool(activation(y))


class ResNet12(nn.Module):
  """ResNet-12 (MetaOptNet, FEAT): four residual blocks, optional dropout/DropBlock, average pool, optional head.

  ``ResNet12()`` is the 640-feature embedding of MetaOptNet and FEAT (see the
  module docstring for the exact definition and the differences);
  ``ResNet12(num_outputs=5)`` adds a 5-way linear head for gradient-based
  learners; ``ResNet12(drop_rate=0.1, dropblock_size=5)`` regularises as
  MetaOptNet does on miniImageNet.

  Attributes:
    num_outputs: width of the final ``Dense`` layer named ``"head"`` (logits);
      ``None`` returns the embedding.
    channels: output channels of the four blocks.
    norm: ``"batch"``: normalise each channel with the mean and (biased)
      variance of the current batch, never running averages; ``"layer"``:
      each example over all its features; ``"group"``: each example over
      groups of channels; ``"none"`` (the convolutions then have a bias).
      All but ``"none"`` learn a per-channel scale and bias.
    num_groups: groups for ``norm="group"``, a divisor of every channel count;
      ``None``: ``gcd(32, c)`` per block.
    epsilon: added to the variance.
    negative_slope: LeakyReLU's slope (0.1).
    drop_rate: dropout rate after blocks 1-2 and DropBlock rate after blocks
      3-4 (MetaOptNet and FEAT: 0.1); 0 disables both.
    dropblock_size: DropBlock's block side (MetaOptNet: 5 for 84x84 images,
      2 for 32x32), clipped to the feature map.
    dropblock_schedule_steps: ``None``: a constant DropBlock rate; an int
      ``S``: the rate rises linearly, ``drop_rate * min(step / S, 1)``, with
      the ``step`` passed at each call (MetaOptNet's schedule; ``S=40000``
      forward calls there).
    pooling: ``"average"``: the embedding is the mean over the last map's
      spatial axes (``channels[-1]`` features, FEAT); ``"flatten"``: the
      flattened last map (MetaOptNet's ``avg_pool=False``).
    conv_impl: ``"patches"`` or ``"xla"`` (see :mod:`metalax.models.conv`).

  Params: ``block_0 .. block_3`` (each a :class:`ResidualBlock`) and ``head``
  (``kernel [d, num_outputs]``, ``bias [num_outputs]``).

  Call: ``model.apply(variables, inputs, deterministic=None, step=None,
  rngs=None)``. Inputs are ``[n, h, w, c]`` images with ``h, w >= 16``;
  outputs ``[n, num_outputs]`` logits, or ``[n, d]`` embeddings. Dropout and
  DropBlock draw from the ``"dropout"`` PRNG stream (``rngs={"dropout":
  key}``); ``deterministic=None`` means on exactly when that stream is given,
  ``True`` turns them off, ``False`` requires the stream.

  Example:
    >>> model = ResNet12(num_outputs=5, drop_rate=0.1)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((2, 84, 84, 3)))
    >>> model.apply(variables, images).shape  # deterministic: no "dropout" key
    (10, 5)
    >>> model.apply(variables, images, rngs={"dropout": jax.random.key(1)}).shape
    (10, 5)

  Raises:
    ValueError: for an unknown ``norm``, ``pooling`` or ``conv_impl``, not four
      positive ``channels``, a bad ``num_groups``, ``drop_rate`` outside
      ``[0, 1)``, ``dropblock_size < 1``, inputs that are not ``[n, h, w, c]``
      or smaller than 16x16, ``deterministic=False`` without a ``"dropout"``
      key, or a missing ``step`` when ``dropblock_schedule_steps`` is set and
      the network is stochastic.

  References:
    Lee et al., Meta-Learning with Differentiable Convex Optimization, CVPR 2019.
    Ye et al., Few-Shot Learning via Embedding Adaptation with Set-to-Set Functions, CVPR 2020.
    Ghiasi, Lin, Le, DropBlock, NeurIPS 2018.
  """

  num_outputs: int | None = None
  channels: tuple[int, ...] = METAOPTNET_CHANNELS
  norm: str = "batch"
  num_groups: int | None = None
  epsilon: float = 1e-5
  negative_slope: float = 0.1
  drop_rate: float = 0.0
  dropblock_size: int = 5
  dropblock_schedule_steps: int | None = None
  pooling: str = "average"
  conv_impl: str = "patches"

  def __post_init__(self) -> None:
    channels = tuple(self.channels)
    if len(channels) != 4 or any(not isinstance(c, int) or c < 1 for c in channels):
      raise ValueError(f"ResNet12 channels must be four positive ints, got {self.channels!r}.")
    _check_norm("ResNet12", self.norm, self.num_groups, channels)
    for name, allowed in (("pooling", POOLINGS), ("conv_impl", CONV_IMPLS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"ResNet12 {name} must be one of {allowed}, got {getattr(self, name)!r}.")
    if not 0 <= self.drop_rate < 1:
      raise ValueError(f"ResNet12 drop_rate must be in [0, 1), got {self.drop_rate}.")
    if self.dropblock_size < 1:
      raise ValueError(f"ResNet12 dropblock_size must be >= 1, got {self.dropblock_size}.")
    if self.dropblock_schedule_steps is not None and self.dropblock_schedule_steps < 1:
      raise ValueError(
          f"ResNet12 dropblock_schedule_steps must be None or >= 1, got {self.dropblock_schedule_steps}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, inputs: jax.Array, deterministic: bool | None = None,
               step: int | jax.Array | None = None) -> jax.Array:
    if inputs.ndim != 4:
      raise ValueError(f"ResNet12 expects images of shape [n, h, w, c], got shape {tuple(inputs.shape)}.")
    if min(inputs.shape[1:3]) < 16:
      raise ValueError(
          f"ResNet12 needs images of at least 16x16 pixels (four 2x2 max-pools), got shape {tuple(inputs.shape)}.")
    has_key = self.has_rng("dropout")
    if deterministic is None:
      deterministic = not has_key
    if not deterministic and self.drop_rate > 0 and not has_key:
      raise ValueError('ResNet12 with deterministic=False needs a PRNG key: apply(..., rngs={"dropout": key}).')
    stochastic = not deterministic and self.drop_rate > 0
    if stochastic and self.dropblock_schedule_steps is not None and step is None:
      raise ValueError(
          f"ResNet12 has dropblock_schedule_steps={self.dropblock_schedule_steps}: pass the training step, "
          "apply(..., step=step), or use deterministic=True.")
    x = inputs.astype(jnp.float32)
    for i, features in enumerate(self.channels):
      x = ResidualBlock(features, self.norm, self.num_groups, self.epsilon, self.negative_slope, self.conv_impl,
                        name=f"block_{i}")(x)
      if not stochastic:
        continue
      key = self.make_rng("dropout")
      if i < 2:
        x = _dropout(key, x, self.drop_rate)
      else:
        rate = dropblock_rate(self.drop_rate, step, self.dropblock_schedule_steps)
        x = dropblock(key, x, rate, self.dropblock_size)
    x = x.mean(axis=(1, 2)) if self.pooling == "average" else x.reshape(x.shape[0], -1)
    if self.num_outputs is None:
      return x
    return nn.Dense(self.num_outputs, name="head")(x)
