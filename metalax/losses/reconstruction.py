r"""Reconstruction and sparsity losses for autoencoders.

Reconstruction losses return per-example values ``[n]``, the mean over the
target dimensions (pixels), as :func:`metalax.losses.squared_error`; multiply
by the number of pixels for the per-image sums of the VAE literature. The
sparsity penalties of sparse autoencoders act on the codes ``[n, k]``.
"""

import jax
import jax.numpy as jnp
import optax


def _flat(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1)


def _check_same(outputs: jax.Array, targets: jax.Array, names: str) -> None:
  if outputs.shape != targets.shape or outputs.ndim < 1:
    raise ValueError(f"{names} must have the same shape [n, ...], got {tuple(outputs.shape)} and "
                     f"{tuple(targets.shape)}.")


def bernoulli_reconstruction(logits: jax.Array, targets: jax.Array) -> jax.Array:
  r"""Binary cross-entropy of pixel logits against targets in ``[0, 1]``, per example.

  :math:`\ell = \frac{1}{D}\sum_j \mathrm{softplus}(z_j) - t_j z_j`, the negative
  log-likelihood of independent Bernoulli pixels (grey targets are allowed).
  Its minimum over the logits is the targets' entropy, 0 for binary targets.

  Args:
    logits: ``[n, *shape]`` decoder outputs before the sigmoid.
    targets: ``[n, *shape]`` in ``[0, 1]``.

  Returns:
    Per-example losses ``[n]``.

  Raises:
    ValueError: if the shapes differ.
  """
  _check_same(logits, targets, "logits and targets")
  return jnp.mean(_flat(optax.sigmoid_binary_cross_entropy(logits, targets)), axis=-1)


def gaussian_reconstruction(outputs: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean squared error over the target dimensions, per example (a Gaussian likelihood up to constants).

  Args:
    outputs: ``[n, *shape]``.
    targets: ``[n, *shape]``.

  Returns:
    Per-example losses ``[n]``.

  Raises:
    ValueError: if the shapes differ.
  """
  _check_same(outputs, targets, "outputs and targets")
  return jnp.mean(_flat(jnp.square(outputs - targets)), axis=-1)


def l1_sparsity(codes: jax.Array) -> jax.Array:
  """Mean absolute code activation per example: the L1 penalty of a sparse autoencoder.

  Args:
    codes: ``[n, k]``.

  Returns:
    ``[n]``.
  """
  if codes.ndim != 2:
    raise ValueError(f"codes must have shape [n, k], got {tuple(codes.shape)}.")
  return jnp.mean(jnp.abs(codes), axis=-1)


def kl_sparsity(codes: jax.Array, target: float = 0.05, eps: float = 1e-6) -> jax.Array:
  r"""KL sparsity penalty of each code unit: :math:`\mathrm{KL}(\rho \,\|\, \hat\rho_k)`.

  :math:`\hat\rho_k` is unit ``k``'s mean activation over the batch, so the
  penalty belongs to the batch, not to an example:

  .. math::
    \rho \log\frac{\rho}{\hat\rho_k} + (1 - \rho) \log\frac{1 - \rho}{1 - \hat\rho_k}.

  Sum it over the units (Ng's sparse autoencoder notes) and add it with a weight.

  Args:
    codes: ``[n, k]`` activations in ``[0, 1]`` (e.g. after a sigmoid).
    target: the desired mean activation ``rho`` in ``(0, 1)``.
    eps: keeps ``rho_hat`` inside ``(0, 1)``.

  Returns:
    ``[k]`` non-negative penalties, 0 where ``rho_hat == rho``.

  Raises:
    ValueError: if ``codes`` is not ``[n, k]`` or ``target`` is outside ``(0, 1)``.

  References:
    Ng, Sparse autoencoder, CS294A lecture notes, Stanford, 2011.
  """
  if codes.ndim != 2:
    raise ValueError(f"codes must have shape [n, k], got {tuple(codes.shape)}.")
  if not 0 < target < 1:
    raise ValueError(f"target must be in (0, 1), got {target}.")
  rho_hat = jnp.clip(jnp.mean(codes, axis=0), eps, 1 - eps)
  return target * jnp.log(target / rho_hat) + (1 - target) * jnp.log((1 - target) / (1 - rho_hat))
