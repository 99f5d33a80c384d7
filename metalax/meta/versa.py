"""VERSA: amortised posterior inference over a linear classification head, Monte Carlo predictive.

A shared feature extractor embeds the support set; for each class ``k`` an
amortisation network maps the mean of that class's support embeddings,
``nu_k = mean{embed(x) : (x, k) in support}``, to a Gaussian over the class's
head parameters, ``q(w_k, b_k | nu_k) = N(mu_w(nu_k), diag sigma_w^2(nu_k)) x
N(mu_b(nu_k), sigma_b^2(nu_k))``, the same network for every class (so any
number of ways works). A query's logits ``u = f(x)^T W + b`` are then Gaussian
too, with mean ``f^T mu_W + mu_b`` and variance ``(f^2)^T sigma_W^2 + sigma_b^2``
(the local reparameterisation trick), and the predictive is the Monte Carlo
average over ``L`` logit samples,

    p(y | x, S) ~= (1 / L) sum_l softmax(u_l)_y,

trained by its log (Gordon et al. 2019, Eq. 4): the per-query loss is
``-(logsumexp_l log softmax(u_l)_y - log L)``, averaged over the queries.

Randomness follows :mod:`metalax.meta`'s key contract: with a ``key`` the
logits are sampled; without one they sit at their means (the plug-in
prediction ``softmax(f^T mu_W + mu_b)``, deterministic). Train with a key.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metalax import losses
from metalax.meta.base import Aux, MetaLearner, MetaParams, TaskParams
from metalax.meta.metric import EmbedFn, _check_num_ways, _embed, _embed_support
from metalax.types import Batch, Episode, Params


class _InferenceBlock(nn.Module):
  """Three dense layers, ELU between them (the reference code's ``inference_block``)."""

  hidden_dim: int
  num_outputs: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.elu(nn.Dense(self.hidden_dim)(x))
    x = nn.elu(nn.Dense(self.hidden_dim)(x))
    return nn.Dense(self.num_outputs)(x)


class VersaAmortisation(nn.Module):
  """VERSA's amortisation network: class embedding means -> the Gaussian over each class's head.

  Four separate three-layer networks (``Dense(hidden_dim)``, ELU,
  ``Dense(hidden_dim)``, ELU, ``Dense(out)``) give the weight means ``[d]``,
  the weight log-variances ``[d]``, the bias mean and the bias log-variance
  of a class from its mean embedding, as in the reference implementation
  (``Gordonjo/versa``, ``inference.py``).

  Attributes:
    hidden_dim: width of the hidden layers (the reference uses ``d_theta``,
      the embedding width, 256 on Omniglot).

  Called on ``class_means [num_ways, d]``, returns ``{"weight_mean" [d,
  num_ways], "weight_log_variance" [d, num_ways], "bias_mean" [num_ways],
  "bias_log_variance" [num_ways]}``.
  """

  hidden_dim: int = 256

  @nn.compact
  def __call__(self, class_means: jax.Array) -> dict[str, jax.Array]:
    d = class_means.shape[-1]
    return {
        "weight_mean": _InferenceBlock(self.hidden_dim, d, name="weight_mean")(class_means).T,
        "weight_log_variance": _InferenceBlock(self.hidden_dim, d, name="weight_log_variance")(class_means).T,
        "bias_mean": _InferenceBlock(self.hidden_dim, 1, name="bias_mean")(class_means)[:, 0],
        "bias_log_variance": _InferenceBlock(self.hidden_dim, 1, name="bias_log_variance")(class_means)[:, 0],
    }


def versa(embed_fn: EmbedFn, *, num_ways: int, embedding_dim: int | None = None, hidden_dim: int | None = None,
          num_samples: int = 10, seed: int = 0) -> MetaLearner:
  """VERSA: an amortisation network infers each class's linear-head posterior from its support embeddings.

  The meta-parameters are ``{"params": {"embed": embed_params,
  "amortisation": amortisation_params}}``. ``init`` takes that inner dict, or
  the embedding's parameters alone when ``embedding_dim`` is given: the
  :class:`VersaAmortisation` network is then initialised from
  ``jax.random.key(seed)`` for embeddings of width ``embedding_dim``.

  ``adapt(meta_params, support, key=None)`` returns task parameters
  ``{"params", "weight_mean" [d, num_ways], "weight_log_variance",
  "bias_mean" [num_ways], "bias_log_variance"}`` (deterministic).
  ``predict(task_params, inputs, key=None, num_samples=None)`` returns the log
  predictive probabilities ``[n, num_ways]``: ``log mean_l softmax(u_l)``
  over ``num_samples`` logit samples with a key, ``log_softmax`` of the mean
  logits without. ``loss(meta_params, episode, key=None, num_samples=None)``
  is the mean negative log predictive probability of the query labels, with
  ``aux`` ``{"loss", "accuracy"}`` (accuracy of the predictive's arg-max).

  Defaults of the reference implementation (``Gordonjo/versa``,
  ``run_classifier.py``) for Omniglot: Conv-4 features flattened to ``d_theta
  = 256`` (64 channels, 2 x 2 after four 'same' poolings of 28 x 28), batch
  norm and dropout (keep 0.9) in the feature extractor, ``L = 10`` samples,
  16 tasks per batch, Adam at 1e-4, 15 queries per class while training and
  ``num_shots`` per class at test, 80,000 iterations for 5-way (100,000 for
  20-way 1-shot, 60,000 for 20-way 5-shot), 600 test tasks, characters
  split 1100 / 100 / rest with rotations as new classes. The reference
  reports accuracy from the arg-max of ``logsumexp_l u_l`` (the raw logits);
  here it is the arg-max of the predictive probabilities.

  Args:
    embed_fn: ``embed_fn(params, inputs [n, ...]) -> embeddings [n, d]``.
    num_ways: classes per episode, a static int >= 2.
    embedding_dim: the width ``d`` of the embeddings, needed only to
      initialise the amortisation network in ``init``.
    hidden_dim: hidden width of the amortisation network (default ``d``).
    num_samples: ``L``, logit samples per query (static; ``predict`` and
      ``loss`` take a ``num_samples=`` override).
    seed: seed of the amortisation network's initialisation.

  Returns:
    A :class:`~metalax.meta.MetaLearner`.

  Raises:
    ValueError: if ``num_ways``, ``embedding_dim``, ``hidden_dim`` or
      ``num_samples`` is not a valid int; if ``init`` gets parameters it cannot
      complete; when adapting, if the support labels are not ``[n]`` ints or
      the embeddings not ``[n, d]``.

  Example:
    >>> learner = metalax.meta.versa(embed_fn, num_ways=5, embedding_dim=256)
    >>> meta_params = learner.init(conv4_params)
    >>> step = jax.jit(metalax.meta.train_step(learner, optax.adam(1e-4)))
    >>> meta_params, opt_state, metrics = step(meta_params, opt_state, episodes, key)

  References:
    Gordon, Bronskill, Bauer, Nowozin & Turner, Meta-Learning Probabilistic
    Inference for Prediction, ICLR 2019.
  """
  num_ways = _check_num_ways(num_ways)
  for name, value in (("embedding_dim", embedding_dim), ("hidden_dim", hidden_dim)):
    if value is not None:
      _check_count(f"versa: {name}", value)
  default_samples = _check_count("versa: num_samples", num_samples)

  def module_for(d: int) -> VersaAmortisation:
    return VersaAmortisation(hidden_dim=hidden_dim or d)

  def init(params: Params) -> MetaParams:
    if hasattr(params, "keys") and set(params.keys()) == {"embed", "amortisation"}:
      return {"params": params}
    if embedding_dim is None:
      got = sorted(params.keys()) if hasattr(params, "keys") else type(params).__name__
      raise ValueError("versa: init expects {'embed': embed_params, 'amortisation': amortisation_params}, or "
                       f"the embedding's parameters alone when embedding_dim is given; got {got}.")
    dummy = jnp.zeros((num_ways, embedding_dim), jnp.float32)
    amortisation = jax.jit(module_for(embedding_dim).init)(jax.random.key(seed), dummy)["params"]
    return {"params": {"embed": params, "amortisation": amortisation}}

  def adapt(meta_params: MetaParams, support: Batch, key: jax.Array | None = None) -> TaskParams:
    del key  # inference is amortised: deterministic
    params = meta_params["params"]
    embeddings, one_hot = _embed_support(embed_fn, params["embed"], support, num_ways, "versa")
    class_means = (one_hot.T @ embeddings) / jnp.maximum(jnp.sum(one_hot, axis=0), 1)[:, None]
    head = module_for(embeddings.shape[1]).apply({"params": params["amortisation"]}, class_means)
    return {"params": params, **head}

  def predict(task_params: TaskParams, inputs: jax.Array, key: jax.Array | None = None,
              num_samples: int = default_samples) -> jax.Array:
    _check_count("versa: num_samples", num_samples)
    return jax.nn.logsumexp(_log_probabilities(task_params, inputs, key, num_samples), axis=0) - np.log(
        num_samples if key is not None else 1)

  def loss(meta_params: MetaParams, episode: Episode, key: jax.Array | None = None,
           num_samples: int = default_samples) -> tuple[jax.Array, Aux]:
    _check_count("versa: num_samples", num_samples)
    task_params = adapt(meta_params, episode.support)
    log_predictive = predict(task_params, episode.query.inputs, key, num_samples)
    aux = {"loss": jnp.mean(losses.cross_entropy(log_predictive, episode.query.labels)),
           "accuracy": jnp.mean(losses.accuracy(log_predictive, episode.query.labels))}
    return aux["loss"], aux

  def _log_probabilities(task_params, inputs, key, num_samples):
    """``[L, n, num_ways]`` log-softmax of sampled logits (``[1, ...]`` at the mean without a key)."""
    features = _embed(embed_fn, task_params["params"]["embed"], inputs, "versa")
    weight_mean = task_params["weight_mean"]
    if features.shape[1] != weight_mean.shape[0]:
      raise ValueError(f"versa: the query embeddings have dimension {features.shape[1]}, but the head was "
                       f"inferred for dimension {weight_mean.shape[0]}.")
    logits_mean = features @ weight_mean + task_params["bias_mean"]
    if key is None:
      return jax.nn.log_softmax(logits_mean)[None]
    logits_variance = (jnp.square(features) @ jnp.exp(task_params["weight_log_variance"])
                       + jnp.exp(task_params["bias_log_variance"]))
    noise = jax.random.normal(key, (num_samples,) + logits_mean.shape, logits_mean.dtype)
    return jax.nn.log_softmax(logits_mean + jnp.sqrt(logits_variance) * noise)

  return MetaLearner(init=init, adapt=adapt, predict=predict, loss=loss)


def _check_count(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
  return int(value)
