"""Neural processes: the KL and ELBO terms against closed forms, a linear-Gaussian task, shapes, jit/vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import metalax
from metalax import meta
from metalax.meta.neural_process import NPModel, gaussian_kl, neural_process
from metalax.types import Batch, Episode

PRIOR_SCALE, NOISE = 1.5, 0.3


def test_gaussian_kl_matches_formula_and_monte_carlo():
  rng = np.random.default_rng(0)
  mq, mp = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
  sq, sp = rng.uniform(0.3, 2, size=(3, 4)), rng.uniform(0.3, 2, size=(3, 4))
  expected = np.sum(np.log(sp / sq) + (sq ** 2 + (mq - mp) ** 2) / (2 * sp ** 2) - 0.5, axis=-1)
  np.testing.assert_allclose(gaussian_kl(mq, sq, mp, sp), expected, rtol=1e-5)
  np.testing.assert_allclose(gaussian_kl(mq, sq, mq, sq), 0, atol=1e-6)
  # KL = E_q[log q - log p], estimated from samples of q.
  z = mq[0] + sq[0] * rng.normal(size=(200000, 4))
  log_ratio = (-np.log(sq[0]) - 0.5 * ((z - mq[0]) / sq[0]) ** 2) - (-np.log(sp[0]) - 0.5 * ((z - mp[0]) / sp[0]) ** 2)
  assert abs(log_ratio.sum(-1).mean() - expected[0]) < 0.03


# A linear-Gaussian task: y = z x + eps, z ~ N(0, PRIOR_SCALE^2), eps ~ N(0, NOISE^2). Its latent
# "encoder" is the exact posterior of z given a set, its decoder the likelihood.

def exact_posterior(params, inputs, labels):
  precision = 1 / PRIOR_SCALE ** 2 + jnp.sum(inputs ** 2) / NOISE ** 2
  mean = jnp.sum(inputs * labels) / NOISE ** 2 / precision
  return mean[None] + 0 * params["offset"], jnp.sqrt(1 / precision)[None]


def linear_decoder(params, representation, z, inputs):
  return inputs * z + params["offset"], jnp.full_like(inputs, NOISE)


def np_normal_logpdf(y, mean, var):
  return -0.5 * np.log(2 * np.pi * var) - 0.5 * (y - mean) ** 2 / var


def linear_gaussian_episode():
  rng = np.random.default_rng(1)
  z = rng.normal() * PRIOR_SCALE
  x = rng.uniform(-2, 2, size=(9, 1))
  y = z * x + NOISE * rng.normal(size=(9, 1))
  return Episode(Batch(jnp.asarray(x[:4], jnp.float32), jnp.asarray(y[:4], jnp.float32)),
                 Batch(jnp.asarray(x[4:], jnp.float32), jnp.asarray(y[4:], jnp.float32)))


def numpy_posterior(x, y):
  precision = 1 / PRIOR_SCALE ** 2 + np.sum(x ** 2) / NOISE ** 2
  return np.sum(x * y) / NOISE ** 2 / precision, 1 / precision


def test_elbo_terms_and_exact_posterior_predictive_on_a_linear_gaussian_task():
  episode = linear_gaussian_episode()
  model = NPModel(encode=None, latent=exact_posterior, decode=linear_decoder)
  learner = neural_process(model, num_samples=1)
  meta_params = learner.init({"offset": jnp.zeros(())})
  xc, yc = (np.asarray(a, np.float64) for a in (episode.support.inputs, episode.support.labels))
  xq, yq = (np.asarray(a, np.float64) for a in (episode.query.inputs, episode.query.labels))
  xt, yt = np.concatenate([xc, xq]), np.concatenate([yc, yq])
  mean_c, var_c = numpy_posterior(xc, yc)
  mean_t, var_t = numpy_posterior(xt, yt)
  kl = np.log(np.sqrt(var_c / var_t)) + (var_t + (mean_t - mean_c) ** 2) / (2 * var_c) - 0.5
  # E_{q(z|T)} log p(y_T | z) for a linear decoder: the log-likelihood at the mean minus x^2 var / (2 noise^2).
  expected_reconstruction = np.sum(np_normal_logpdf(yt, mean_t * xt, NOISE ** 2) - xt ** 2 * var_t / (2 * NOISE ** 2))
  expected_objective = (kl - expected_reconstruction) / len(xt)
  # The exact posterior predictive of the query points given the context.
  expected_nll = -np.mean(np_normal_logpdf(yq, mean_c * xq, xq ** 2 * var_c + NOISE ** 2))

  loss = jax.jit(learner.loss, static_argnames="num_samples")
  objective, aux = loss(meta_params, episode, key=jax.random.key(0), num_samples=20000)
  np.testing.assert_allclose(aux["kl"], kl, rtol=1e-4)
  np.testing.assert_allclose(objective, expected_objective, atol=0.004)  # Monte Carlo error ~0.001
  np.testing.assert_allclose(aux["nll"], expected_nll, atol=0.004)
  # Without a key z sits at the posterior mean: the plug-in reconstruction, exactly.
  objective, aux = loss(meta_params, episode)
  plug_in = np.sum(np_normal_logpdf(yt, mean_t * xt, NOISE ** 2))
  np.testing.assert_allclose(objective, (kl - plug_in) / len(xt), rtol=1e-4)
  # The ELBO bounds the exact log-likelihood of the targets under the prior q(z | C).
  covariance = var_c * xt @ xt.T + NOISE ** 2 * np.eye(len(xt))
  _, logdet = np.linalg.slogdet(2 * np.pi * covariance)
  residual = yt - mean_c * xt
  exact = -0.5 * logdet - 0.5 * float((residual.T @ np.linalg.solve(covariance, residual))[0, 0])
  assert -expected_objective * len(xt) <= exact
  # predict: one z per key from q(z | C); their mixture has the exact predictive moments.
  task_params = learner.adapt(meta_params, episode.support)
  keys = jax.random.split(jax.random.key(1), 20000)
  samples = jax.jit(jax.vmap(lambda k: learner.predict(task_params, episode.query.inputs, key=k)))(keys)
  mixture_mean = np.mean(samples.mean, 0)
  mixture_var = np.mean(samples.scale ** 2 + samples.mean ** 2, 0) - mixture_mean ** 2
  np.testing.assert_allclose(mixture_mean, mean_c * xq, atol=0.03)
  np.testing.assert_allclose(mixture_var, xq ** 2 * var_c + NOISE ** 2, rtol=0.05)


def tiny(constructor, **kwargs):
  return constructor(hidden_dim=8, num_encoder_layers=2, num_decoder_layers=2, **kwargs)


def first(tree):
  return jax.tree.map(lambda x: x[0], tree)


def gp_like_episodes(num_tasks):
  """Smooth random functions made in NumPy (no compilation): 5 context and 6 target points each."""
  rng = np.random.default_rng(0)
  x = rng.uniform(-2, 2, size=(num_tasks, 11, 1))
  y = np.sin(rng.uniform(1, 3, size=(num_tasks, 1, 1)) * x) + 0.1 * rng.normal(size=x.shape)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  return Episode(Batch(x[:, :5], y[:, :5]), Batch(x[:, 5:], y[:, 5:]))


def test_cnp_objective_is_the_targets_nll_and_latent_np_uses_its_key():
  cnp, latent = tiny(meta.cnp), tiny(meta.latent_np, latent_dim=4)
  cnp_params, latent_params = cnp.init(None), latent.init(None)
  episode = first(gp_like_episodes(1))
  inputs = jnp.concatenate([episode.support.inputs, episode.query.inputs])
  labels = jnp.concatenate([episode.support.labels, episode.query.labels])

  @jax.jit
  def run(cnp_params, latent_params, episode):
    key = jax.random.key(1)
    objective, aux = cnp.loss(cnp_params, episode, key=key)
    targets = cnp.predict(cnp.adapt(cnp_params, episode.support), inputs)
    reversed_support = jax.tree.map(lambda x: x[::-1], episode.support)
    shuffled = cnp.predict(cnp.adapt(cnp_params, reversed_support), inputs)
    latent_results = latent.loss(latent_params, episode, key=key), latent.loss(latent_params, episode)
    return objective, aux, targets, shuffled, cnp.loss(cnp_params, episode)[0], latent_results

  objective, aux, targets, shuffled, unkeyed, latent_results = run(cnp_params, latent_params, episode)
  assert set(aux) == {"loss", "nll", "mse"}
  assert targets.mean.shape == targets.scale.shape == (11, 1) and float(jnp.min(targets.scale)) >= 0.1
  # No latent variable: the key changes nothing; the objective is the targets' mean NLL.
  np.testing.assert_allclose(unkeyed, objective, rtol=1e-6)
  np.testing.assert_allclose(objective, jnp.mean(metalax.metrics.gaussian_nll(*targets, labels)), rtol=1e-5)
  np.testing.assert_allclose(aux["nll"], jnp.mean(metalax.metrics.gaussian_nll(
      targets.mean[5:], targets.scale[5:], labels[5:])), rtol=1e-5)
  np.testing.assert_allclose(shuffled.mean, targets.mean, rtol=1e-4, atol=1e-5)
  # The latent NP samples z from its key; without one z sits at the posterior mean.
  (keyed, latent_aux), (plain, _) = latent_results
  assert set(latent_aux) == {"loss", "nll", "mse", "kl"} and float(latent_aux["kl"]) >= 0
  assert np.isfinite(keyed) and abs(float(keyed) - float(plain)) > 1e-6


def test_anp_gradients_shapes_and_the_context_is_a_set():
  learner = tiny(meta.anp, latent_dim=4, num_heads=2, self_attention_layers=1)
  meta_params = learner.init(None)
  episodes = gp_like_episodes(2)

  @jax.jit
  def run(meta_params, episodes, key):
    (objective, aux), grads = jax.value_and_grad(meta.batch_loss(learner), has_aux=True)(
        meta_params, episodes, key)
    support = first(episodes.support)
    prediction = learner.predict(learner.adapt(meta_params, support), episodes.query.inputs[0])
    shuffled = learner.adapt(meta_params, jax.tree.map(lambda x: x[::-1], support))
    return objective, grads, prediction, learner.predict(shuffled, episodes.query.inputs[0])

  objective, grads, prediction, shuffled = run(meta_params, episodes, jax.random.key(3))
  assert np.isfinite(objective)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert all(np.any(g != 0) for g in jax.tree.leaves(grads["params"]["cross_attention"]))
  assert prediction.mean.shape == prediction.scale.shape == (6, 1)
  # Self- and cross-attention have no positional encoding: the context's order does not matter.
  np.testing.assert_allclose(shuffled.mean, prediction.mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(shuffled.scale, prediction.scale, rtol=1e-4, atol=1e-5)


def test_errors():
  with pytest.raises(ValueError, match="num_heads"):
    meta.anp(hidden_dim=6, num_heads=4)
  with pytest.raises(ValueError, match="NeuralProcess module or an NPModel"):
    meta.neural_process(lambda p, x: x)
  learner = tiny(meta.cnp)
  meta_params = learner.init(None)
  with pytest.raises(ValueError, match=r"support.labels must be \[n, output_dim\] floats"):
    learner.adapt(meta_params, Batch(jnp.zeros((3, 1)), jnp.zeros((3,), jnp.int32)))
  with pytest.raises(ValueError, match="inputs must be"):
    learner.predict(learner.adapt(meta_params, Batch(jnp.zeros((3, 1)), jnp.zeros((3, 1)))), jnp.zeros(3))
