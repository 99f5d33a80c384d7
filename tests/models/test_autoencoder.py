"""Autoencoder module and objective: shapes, parameter layout, variants, and that it learns."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metalax import losses
from metalax import models

KEY = jax.random.key(0)
IMAGES = (jax.random.uniform(KEY, (8, 16, 16, 1)) > 0.7).astype(jnp.float32)


def make(decoder_features=(32,), code_activation="identity", encoder=None):
  encoder = encoder or models.Conv4(None, hidden=8)
  model = models.Autoencoder(encoder, models.Decoder((16, 16, 1), decoder_features),
                             code_activation=code_activation)
  params = jax.jit(model.init)(KEY, IMAGES[:2])["params"]
  return model, params


def test_shapes_and_encoder_params_are_the_encoders_own():
  model, params = make()
  logits, codes = jax.jit(model.apply)({"params": params}, IMAGES)
  assert logits.shape == IMAGES.shape and codes.shape == (8, 8)
  encoder = models.Conv4(None, hidden=8)
  np.testing.assert_allclose(jax.jit(encoder.apply)({"params": params["encoder"]}, IMAGES), codes, rtol=1e-6)
  _, linear = make(decoder_features=())
  assert set(linear["decoder"]) == {"output"}          # the low-capacity decoder is one linear map
  sigmoid_model = models.Autoencoder(encoder, models.Decoder((16, 16, 1), (32,)), code_activation="sigmoid")
  _, sigmoid_codes = jax.jit(sigmoid_model.apply)({"params": params}, IMAGES)
  np.testing.assert_allclose(sigmoid_codes, jax.nn.sigmoid(codes), rtol=1e-6)
  coded = models.Autoencoder(encoder, models.Decoder((16, 16, 1), (32,)), code_dim=5, code_activation="sigmoid")
  coded_params = jax.jit(coded.init)(KEY, IMAGES[:2])["params"]
  assert coded_params["code"]["kernel"].shape == (8, 5)
  _, five = jax.jit(coded.apply)({"params": coded_params}, IMAGES)
  features = jax.jit(encoder.apply)({"params": coded_params["encoder"]}, IMAGES)
  np.testing.assert_allclose(five, jax.nn.sigmoid(features @ coded_params["code"]["kernel"]
                                                  + coded_params["code"]["bias"]), rtol=1e-5)


def test_objective_variants():
  model, params = make(code_activation="sigmoid")
  apply_fn = models.from_linen(model)
  plain = models.autoencoder_loss(apply_fn)
  value, metrics = plain(params, KEY, IMAGES)
  logits, codes = apply_fn(params, IMAGES)
  np.testing.assert_allclose(value, jnp.mean(losses.bernoulli_reconstruction(logits, IMAGES)), rtol=1e-6)
  assert metrics["per_example"].shape == (8,)
  sparse = models.autoencoder_loss(apply_fn, l1_weight=0.5, sparsity_weight=2.0, sparsity_target=0.1)
  value_sparse, metrics = sparse(params, KEY, IMAGES)
  expected = (jnp.mean(losses.bernoulli_reconstruction(logits, IMAGES)) + 0.5 * jnp.mean(losses.l1_sparsity(codes))
              + 2.0 * jnp.sum(losses.kl_sparsity(codes, 0.1)))
  np.testing.assert_allclose(value_sparse, expected, rtol=1e-5)
  denoising = models.autoencoder_loss(apply_fn, noise_std=0.3, mask_probability=0.2)
  a, _ = denoising(params, KEY, IMAGES)
  b, _ = denoising(params, jax.random.key(1), IMAGES)
  assert float(a) != float(b) and float(a) != float(value)   # the corruption depends on the key
  gaussian = models.autoencoder_loss(apply_fn, reconstruction="gaussian")
  np.testing.assert_allclose(gaussian(params, KEY, IMAGES)[0],
                             jnp.mean((jax.nn.sigmoid(logits) - IMAGES) ** 2), rtol=1e-5)


@pytest.mark.parametrize("options", [{}, {"noise_std": 0.2, "sparsity_weight": 0.1}])
def test_training_reduces_reconstruction(options):
  model, params = make(code_activation="sigmoid" if options.get("sparsity_weight") else "identity",
                       encoder=models.MLP(features=(64,), num_outputs=16))
  objective = models.autoencoder_loss(models.from_linen(model), **options)
  optimizer = optax.adam(3e-3)

  @jax.jit
  def step(state, key):
    params, opt_state = state
    (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params, key, IMAGES)
    updates, opt_state = optimizer.update(grads, opt_state)
    return (optax.apply_updates(params, updates), opt_state), metrics["reconstruction"]

  (_, _), history = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(KEY, 100))
  assert np.all(np.isfinite(history))
  assert float(history[-10:].mean()) < 0.85 * float(history[0])


def test_errors():
  with pytest.raises(ValueError, match="code_activation"):
    models.Autoencoder(models.MLP(), models.Decoder(), code_activation="softmax")
  with pytest.raises(ValueError, match="code_dim"):
    models.Autoencoder(models.MLP(), models.Decoder(), code_dim="sigmoid")
  with pytest.raises(ValueError, match="reconstruction"):
    models.autoencoder_loss(lambda p, x: x, reconstruction="l1")
