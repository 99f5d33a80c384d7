"""Autoencoders: any encoder module, an MLP decoder, and the objective of plain, denoising and sparse variants.

``Autoencoder(encoder, decoder)`` is a linen module whose params are
``{"encoder": ..., "decoder": ...}``: ``params["encoder"]`` is exactly the
encoder's own parameter tree, so after training it loads as the backbone of a
few-shot learner or a fine-tuning run (``Conv4(None)`` as the encoder gives
the embedding of :func:`metalax.meta.protonet`).

The variants are arguments, not classes:

* plain: ``autoencoder_loss(apply_fn)``;
* denoising (Vincent et al. 2008): ``noise_std > 0`` (Gaussian) or
  ``mask_probability > 0`` (masking noise) corrupts the input, the target
  stays clean;
* sparse: ``l1_weight`` (L1 on the code) and/or ``sparsity_weight`` with
  ``sparsity_target`` (KL to a target mean activation, for codes in ``[0,
  1]``: use ``code_activation="sigmoid"``);
* low-capacity decoder: ``Decoder(features=())`` is a single linear layer, so
  the code must carry the information in a linearly decodable form.
"""

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from metalax import losses

CODE_ACTIVATIONS = ("identity", "sigmoid", "relu", "tanh")


class Decoder(nn.Module):
  """MLP decoder from codes ``[n, k]`` to pixel logits ``[n, *image_shape]``.

  Attributes:
    image_shape: ``(H, W, C)`` of the reconstructions.
    features: hidden widths; ``()`` is the low-capacity (linear) decoder.
    activation: after each hidden layer.

  Params: ``Dense_0 .. Dense_{L-1}`` and ``output`` (``kernel [width, H * W * C]``).
  """

  image_shape: Sequence[int] = (28, 28, 1)
  features: Sequence[int] = (256, 512)
  activation: Callable[[jax.Array], jax.Array] = nn.relu

  @nn.compact
  def __call__(self, codes: jax.Array) -> jax.Array:
    x = codes
    for width in self.features:
      x = self.activation(nn.Dense(width)(x))
    x = nn.Dense(math.prod(self.image_shape), name="output")(x)
    return x.reshape((codes.shape[0], *self.image_shape))


class Autoencoder(nn.Module):
  """``encoder`` then ``decoder``; returns ``(logits [n, H, W, C], codes [n, k])``.

  Attributes:
    encoder: a module mapping images ``[n, H, W, C]`` to ``[n, k]`` (e.g. ``Conv4(None)`` or an ``MLP``).
    decoder: a module mapping codes ``[n, k]`` to pixel logits (e.g. :class:`Decoder`).
    code_dim: if set, a linear layer ``"code"`` maps the encoder's output to
      ``code_dim`` features before the activation. Needed for a sigmoid code
      on an encoder whose outputs are non-negative (``Conv4`` ends with a
      ReLU, so ``sigmoid`` of its output is at least 1/2 and cannot meet a
      small sparsity target).
    code_activation: applied to form the code: one of
      :data:`CODE_ACTIVATIONS` (``"sigmoid"`` for the KL sparsity penalty).
      The encoder checkpoint is the part before the code layer and activation.

  Example:
    >>> model = Autoencoder(Conv4(None, hidden=32), Decoder((28, 28, 1)))
    >>> params = model.init(key, jnp.zeros((2, 28, 28, 1)))["params"]
    >>> logits, codes = model.apply({"params": params}, images)
    >>> encoder_params = params["encoder"]          # Conv4(None, hidden=32)'s own tree
  """

  encoder: nn.Module
  decoder: nn.Module
  code_dim: int | None = None
  code_activation: str = "identity"

  def __post_init__(self) -> None:
    if self.code_activation not in CODE_ACTIVATIONS:
      raise ValueError(f"code_activation must be one of {CODE_ACTIVATIONS}, got {self.code_activation!r}.")
    if self.code_dim is not None and (isinstance(self.code_dim, bool) or not isinstance(self.code_dim, int)
                                      or self.code_dim < 1):
      raise ValueError(f"code_dim must be None or an int >= 1, got {self.code_dim!r}.")
    super().__post_init__()

  @nn.compact
  def encode(self, inputs: jax.Array) -> jax.Array:
    features = self.encoder(inputs)
    if features.ndim != 2:
      raise ValueError(f"the encoder must return [n, k] codes, got shape {tuple(features.shape)}.")
    if self.code_dim is not None:
      features = nn.Dense(self.code_dim, name="code")(features)
    if self.code_activation == "identity":
      return features
    return getattr(nn, self.code_activation)(features)

  @nn.compact
  def __call__(self, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    codes = self.encode(inputs)
    return self.decoder(codes), codes


def autoencoder_loss(apply_fn: Callable[[Any, jax.Array], tuple[jax.Array, jax.Array]], *,
                     reconstruction: str = "bernoulli", noise_std: float = 0.0, mask_probability: float = 0.0,
                     l1_weight: float = 0.0, sparsity_target: float = 0.05, sparsity_weight: float = 0.0):
  """The training objective of a (denoising, sparse) autoencoder.

  Args:
    apply_fn: ``apply_fn(params, images) -> (logits, codes)``, e.g.
      ``from_linen(Autoencoder(...))``.
    reconstruction: ``"bernoulli"`` (:func:`metalax.losses.bernoulli_reconstruction`
      on logits; targets in ``[0, 1]``) or ``"gaussian"`` (squared error of
      ``sigmoid(logits)``).
    noise_std: Gaussian input noise (denoising); clipped to ``[0, 1]``.
    mask_probability: probability of zeroing each input pixel (masking noise).
    l1_weight: weight of :func:`metalax.losses.l1_sparsity` of the codes.
    sparsity_target: ``rho`` of :func:`metalax.losses.kl_sparsity`.
    sparsity_weight: weight of the summed KL sparsity penalty.

  Returns:
    ``loss(params, key, images [n, H, W, C]) -> (scalar, metrics)`` with
    ``metrics = {"loss", "reconstruction", "per_example" [n] (reconstruction
    per example), "codes" [n, k]}``; ``key`` draws the corruption (unused
    without one).

  Raises:
    ValueError: for an unknown reconstruction or a negative weight.

  References:
    Vincent, Larochelle, Bengio & Manzagol, Extracting and Composing Robust
    Features with Denoising Autoencoders, ICML 2008. Ng, Sparse autoencoder, 2011.
  """
  if reconstruction not in ("bernoulli", "gaussian"):
    raise ValueError(f"reconstruction must be 'bernoulli' or 'gaussian', got {reconstruction!r}.")
  if min(noise_std, mask_probability, l1_weight, sparsity_weight) < 0 or mask_probability >= 1:
    raise ValueError("noise_std, l1_weight and sparsity_weight must be >= 0 and mask_probability in [0, 1).")

  def loss(params, key, images):
    inputs = images
    noise_key, mask_key = jax.random.split(key)
    if noise_std > 0:
      inputs = jnp.clip(inputs + noise_std * jax.random.normal(noise_key, inputs.shape), 0.0, 1.0)
    if mask_probability > 0:
      inputs = jnp.where(jax.random.bernoulli(mask_key, mask_probability, inputs.shape), 0.0, inputs)
    logits, codes = apply_fn(params, inputs)
    if reconstruction == "bernoulli":
      per_example = losses.bernoulli_reconstruction(logits, images)
    else:
      per_example = losses.gaussian_reconstruction(jax.nn.sigmoid(logits), images)
    total = jnp.mean(per_example)
    metrics = {"reconstruction": total}
    if l1_weight > 0:
      metrics["l1"] = jnp.mean(losses.l1_sparsity(codes))
      total = total + l1_weight * metrics["l1"]
    if sparsity_weight > 0:
      metrics["kl_sparsity"] = jnp.sum(losses.kl_sparsity(codes, sparsity_target))
      total = total + sparsity_weight * metrics["kl_sparsity"]
    return total, {"loss": total, **metrics, "per_example": per_example, "codes": codes}

  return loss
