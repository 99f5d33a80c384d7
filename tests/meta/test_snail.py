"""SNAIL: causality of the network, one sequence per query, regression and classification."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metalax
from metalax import meta
from metalax.meta.snail import SNAIL
from metalax.types import Batch, Episode

SMALL = dict(filters=4, attention=((4, 3), (4, 3)))


def test_network_is_causal():
  module = SNAIL(num_outputs=2, sequence_length=6, **SMALL)
  tokens = jax.random.normal(jax.random.key(0), (6, 3))
  params = module.init(jax.random.key(1), tokens)["params"]

  @jax.jit
  def run(params, tokens):
    changed = tokens.at[4:].set(7.0)
    return module.apply({"params": params}, tokens), module.apply({"params": params}, changed)

  outputs, changed = run(params, tokens)
  np.testing.assert_allclose(outputs[:4], changed[:4], rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(outputs[4:] - changed[4:])).max() > 1e-4


def test_regression_and_classification_learners():
  regression = meta.snail(output_dim=1, num_support=5, embedding_dim=1, **SMALL)
  classifier = meta.snail(lambda p, x: x @ p["w"], num_ways=3, num_support=6, embedding_dim=2, **SMALL)
  regression_params = regression.init(None)
  classifier_params = classifier.init({"w": jnp.ones((4, 2)) * 0.3})
  sine = jax.tree.map(lambda x: x[0], metalax.data.sample_sinusoid(jax.random.key(0), 1, 5, 4))
  rng = np.random.default_rng(0)
  images = Episode(Batch(jnp.asarray(rng.normal(size=(6, 4)), jnp.float32), jnp.array([0, 1, 2, 0, 1, 2])),
                   Batch(jnp.asarray(rng.normal(size=(3, 4)), jnp.float32), jnp.array([2, 0, 1])))

  @jax.jit
  def run(regression_params, classifier_params):
    (loss, aux), grads = jax.value_and_grad(regression.loss, has_aux=True)(regression_params, sine)
    task_params = regression.adapt(regression_params, sine.support)
    together = regression.predict(task_params, sine.query.inputs)
    alone = regression.predict(task_params, sine.query.inputs[2:3])
    logits = classifier.predict(classifier.adapt(classifier_params, images.support), images.query.inputs)
    return loss, grads, together, alone, logits, classifier.loss(classifier_params, images)[1]

  loss, grads, together, alone, logits, classifier_aux = run(regression_params, classifier_params)
  np.testing.assert_allclose(loss, jnp.mean(jnp.square(together - sine.query.labels)), rtol=1e-5)
  # Each query is read with the support set alone: the other queries change nothing.
  np.testing.assert_allclose(alone, together[2:3], rtol=1e-5, atol=1e-6)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert logits.shape == (3, 3) and set(classifier_aux) == {"loss", "accuracy"}
  with pytest.raises(ValueError, match="exactly one of"):
    meta.snail(num_ways=3, output_dim=1, num_support=5)
  with pytest.raises(ValueError, match="built for 5 support"):
    regression.adapt(regression_params, Batch(jnp.zeros((6, 1)), jnp.zeros((6, 1))))
  with pytest.raises(ValueError, match=r"\[n\] int class"):
    classifier.adapt(classifier_params, Batch(jnp.zeros((6, 4)), jnp.zeros((6, 1))))
