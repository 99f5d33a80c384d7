"""Conv-4: the four-block convolutional backbone of the few-shot literature."""

import flax.linen as nn
import jax
import jax.numpy as jnp

VARIANTS = ("strided", "maxpool")
NORMS = ("batch", "layer", "group", "none")


class BatchStatNorm(nn.Module):
  """Normalises with the statistics of the current batch (over ``[n, H, W]``); learned scale and bias.

  This is batch normalisation as MAML uses it: no running averages, so it is
  a pure function of the batch and safe inside inner loops.
  """

  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
    mean = jnp.mean(x, axis=(0, 1, 2))
    variance = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
    return (x - mean) * jax.lax.rsqrt(variance + self.epsilon) * scale + bias


class Conv4(nn.Module):
  """Four blocks of 3x3 convolution, normalisation and ReLU, then an optional linear head.

  Attributes:
    num_outputs: ``None`` returns the flattened embedding ``[n, d]`` (for
      metric learners); an int adds a ``Dense`` named ``"head"`` giving logits
      ``[n, num_outputs]``.
    hidden: channels of every convolution.
    variant: ``"strided"``: 3x3 convolutions with stride 2 and padding 1, then
      the mean over the spatial positions (the MAML paper's Omniglot network,
      whose code takes ``reduce_mean(hidden4, [1, 2])``; learn2learn's
      ``OmniglotCNN``): on 28x28 inputs the maps are 14, 7, 4, 2 and ``d =
      hidden``. ``"maxpool"``: stride-1 convolutions with padding 1, each
      followed by a 2x2 max-pool, then flattened (ProtoNets; learn2learn's
      ``CNN4(max_pool=True, embedding_size=hidden)``): on 28x28 the maps are
      14, 7, 3, 1 and ``d = hidden``. With ``hidden=64`` and 5 outputs both
      have 112,261 parameters, as learn2learn's.
    norm: ``"batch"`` (batch statistics, no running averages), ``"layer"``,
      ``"group"`` (32 groups or fewer) or ``"none"``.

  Inputs are ``[n, H, W, C]`` float32.
  """

  num_outputs: int | None = None
  hidden: int = 64
  variant: str = "strided"
  norm: str = "batch"

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    if self.variant not in VARIANTS:
      raise ValueError(f"Conv4.variant must be one of {VARIANTS}, got {self.variant!r}.")
    if self.norm not in NORMS:
      raise ValueError(f"Conv4.norm must be one of {NORMS}, got {self.norm!r}.")
    if inputs.ndim != 4:
      raise ValueError(f"Conv4 expects inputs [n, H, W, C], got shape {tuple(inputs.shape)}.")
    x = inputs
    stride = 2 if self.variant == "strided" else 1
    for _ in range(4):
      x = nn.Conv(self.hidden, (3, 3), strides=stride, padding=1)(x)
      if self.norm == "batch":
        x = BatchStatNorm()(x)
      elif self.norm == "layer":
        x = nn.LayerNorm()(x)
      elif self.norm == "group":
        x = nn.GroupNorm(num_groups=min(32, self.hidden))(x)
      x = nn.relu(x)
      if self.variant == "maxpool":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    if self.variant == "strided":
      x = jnp.mean(x, axis=(1, 2))
    x = x.reshape(x.shape[0], -1)
    if self.num_outputs is None:
      return x
    return nn.Dense(self.num_outputs, name="head")(x)
