"""VERSA: amortisation against a NumPy transcription, the predictive against Monte Carlo over weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax import meta
from metalax.types import Batch, Episode

NUM_WAYS, DIM, INPUT_DIM = 3, 4, 6


def embed(params, inputs):
  return jnp.tanh(inputs @ params["w"])


def setup():
  learner = meta.versa(embed, num_ways=NUM_WAYS, embedding_dim=DIM, hidden_dim=5, num_samples=7)
  meta_params = learner.init({"w": jax.random.normal(jax.random.key(0), (INPUT_DIM, DIM))})
  rng = np.random.default_rng(0)
  support = Batch(jnp.asarray(rng.normal(size=(6, INPUT_DIM)), jnp.float32), jnp.array([0, 1, 2, 2, 1, 0]))
  query = Batch(jnp.asarray(rng.normal(size=(5, INPUT_DIM)), jnp.float32), jnp.array([0, 2, 1, 1, 0]))
  return learner, meta_params, Episode(support, query)


def numpy_block(params, x):
  elu = lambda v: np.where(v > 0, v, np.exp(v) - 1)
  for i, layer in enumerate(("Dense_0", "Dense_1", "Dense_2")):
    x = x @ np.asarray(params[layer]["kernel"], np.float64) + np.asarray(params[layer]["bias"], np.float64)
    if i < 2:
      x = elu(x)
  return x


def test_amortisation_matches_numpy_transcription():
  learner, meta_params, episode = setup()
  task_params = learner.adapt(meta_params, episode.support)
  features = np.tanh(np.asarray(episode.support.inputs, np.float64) @ np.asarray(meta_params["params"]["embed"]["w"]))
  labels = np.asarray(episode.support.labels)
  class_means = np.stack([features[labels == k].mean(0) for k in range(NUM_WAYS)])
  amortisation = meta_params["params"]["amortisation"]
  np.testing.assert_allclose(task_params["weight_mean"], numpy_block(amortisation["weight_mean"], class_means).T,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(task_params["weight_log_variance"],
                             numpy_block(amortisation["weight_log_variance"], class_means).T, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(task_params["bias_mean"], numpy_block(amortisation["bias_mean"], class_means)[:, 0],
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(task_params["bias_log_variance"],
                             numpy_block(amortisation["bias_log_variance"], class_means)[:, 0], rtol=1e-4, atol=1e-5)
  # The class order of the support rows does not matter; a class's head depends on its own examples only.
  permuted = Batch(episode.support.inputs[::-1], episode.support.labels[::-1])
  np.testing.assert_allclose(learner.adapt(meta_params, permuted)["weight_mean"], task_params["weight_mean"],
                             rtol=1e-5, atol=1e-6)


def test_predictive_matches_monte_carlo_over_head_weights_and_loss_is_its_log():
  learner, meta_params, episode = setup()
  task_params = learner.adapt(meta_params, episode.support)
  features = np.asarray(embed(meta_params["params"]["embed"], episode.query.inputs), np.float64)
  # Independent reference: sample the weights and biases themselves (no local reparameterisation).
  rng = np.random.default_rng(1)
  num = 100000
  w_mean, w_var = np.asarray(task_params["weight_mean"]), np.exp(np.asarray(task_params["weight_log_variance"]))
  b_mean, b_var = np.asarray(task_params["bias_mean"]), np.exp(np.asarray(task_params["bias_log_variance"]))
  weights = w_mean + np.sqrt(w_var) * rng.normal(size=(num,) + w_mean.shape)
  biases = b_mean + np.sqrt(b_var) * rng.normal(size=(num,) + b_mean.shape)
  logits = np.einsum("nd,sdk->snk", features, weights) + biases[:, None, :]
  probabilities = np.exp(logits - logits.max(-1, keepdims=True))
  expected = (probabilities / probabilities.sum(-1, keepdims=True)).mean(0)

  predict = jax.jit(learner.predict, static_argnames="num_samples")
  got = np.exp(predict(task_params, episode.query.inputs, key=jax.random.key(2), num_samples=num))
  np.testing.assert_allclose(got, expected, atol=0.01)
  np.testing.assert_allclose(got.sum(-1), 1, rtol=1e-5)
  # The loss is minus the mean log predictive probability of the query labels, with the same samples.
  objective, aux = learner.loss(meta_params, episode, key=jax.random.key(3))
  log_predictive = learner.predict(task_params, episode.query.inputs, key=jax.random.key(3))
  np.testing.assert_allclose(objective, -np.mean(np.asarray(log_predictive)[np.arange(5), episode.query.labels]),
                             rtol=1e-5)
  assert set(aux) == {"loss", "accuracy"}
  # Without a key: the plug-in softmax of the mean logits.
  mean_logits = features @ w_mean + b_mean
  plug_in = np.exp(mean_logits) / np.exp(mean_logits).sum(-1, keepdims=True)
  np.testing.assert_allclose(np.exp(learner.predict(task_params, episode.query.inputs)), plug_in, rtol=1e-4)


def test_batch_loss_gradients_and_errors():
  learner, meta_params, episode = setup()
  episodes = jax.tree.map(lambda x: jnp.stack([x, x[::-1]]), episode)
  (objective, aux), grads = jax.jit(jax.value_and_grad(meta.batch_loss(learner), has_aux=True))(
      meta_params, episodes, jax.random.key(4))
  assert np.isfinite(objective) and 0 <= float(aux["accuracy"]) <= 1
  for part in ("embed", "amortisation"):
    leaves = jax.tree.leaves(grads["params"][part])
    assert all(np.all(np.isfinite(g)) for g in leaves) and any(np.any(g != 0) for g in leaves)
  with pytest.raises(ValueError, match="embedding's parameters alone"):
    meta.versa(embed, num_ways=3).init({"w": jnp.zeros((2, 2))})
  with pytest.raises(ValueError, match="num_samples"):
    meta.versa(embed, num_ways=3, num_samples=0)
  with pytest.raises(ValueError, match="support labels"):
    learner.adapt(meta_params, Batch(episode.support.inputs, episode.support.inputs[:, 0]))
