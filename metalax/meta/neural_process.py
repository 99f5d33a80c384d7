"""Neural processes: a network maps a context set to a predictive distribution over functions.

In the probabilistic view of meta-learning, adapting to a task is inferring
its posterior from the support set (the *context*); a neural process amortises
that inference in one forward pass and predicts a Gaussian per target point.

* :func:`cnp`: conditional NP (Garnelo et al. 2018a): a deterministic
  representation ``r = mean_i h(x_i, y_i)`` of the context, decoded at each
  target ``x`` to ``N(mu(r, x), sigma(r, x)^2)``; trained by the targets'
  log-likelihood.
* :func:`latent_np`: latent-variable NP (Garnelo et al. 2018b): a global latent
  ``z`` with ``q(z | set) = N(mu(s), diag sigma(s)^2)``, ``s = mean_i g(x_i,
  y_i)``, decoded with ``x``; trained on the ELBO in which the context posterior
  ``q(z | C)`` plays the prior of the target posterior ``q(z | T)``:

      log p(y_T | x_T, C) >= E_{q(z | T)} [sum_t log p(y_t | x_t, z)] - KL(q(z | T) || q(z | C)),

  divided by the number of targets ``|T|``.
* :func:`anp`: attentive NP (Kim et al. 2019): both paths, with multihead
  self-attention over the context in each encoder and, in the deterministic
  path, multihead cross-attention from each target to the context instead of
  the mean, so every target gets its own representation ``r*(x)``.

The architecture is :class:`NeuralProcess` (a linen module whose fields select
the variant) or any :class:`NPModel` of pure functions. The learners are
:class:`~metalax.meta.MetaLearner` s for regression episodes: support (context)
and query inputs ``[n, input_dim]``, labels ``[n, output_dim]`` floats.
``adapt`` encodes the context; ``predict`` returns a :class:`Gaussian` (mean and
scale per target point). During training the target set is the context and the
query points together (``context_in_target=True``, as in both papers and
DeepMind's reference code), so the model also learns to fit its context.

Randomness follows :mod:`metalax.meta`'s key contract: with a ``key``, latent
samples are drawn from it; without one, every latent variable is set to its
mean (deterministic, like dropout turned off). Train latent models with a key.

The query metrics ``aux`` are ``"loss"`` (the objective), ``"nll"`` (the mean
predictive negative log-likelihood of a query point, for latent models
``-log mean_s p(y | x, z_s)`` with ``z_s ~ q(z | C)``, ``num_samples`` samples),
``"mse"`` (of the predictive mean) and, for latent models, ``"kl"``.
"""

from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from metalax.meta.base import Aux, MetaLearner, MetaParams, TaskParams
from metalax.metrics.calibration import gaussian_nll
from metalax.types import Batch, Episode, Params, is_classification

ATTENTIONS = ("mean", "multihead")
"""How the deterministic path aggregates the context: the mean, or multihead cross-attention."""


class Gaussian(NamedTuple):
  """A predictive distribution with independent Gaussian components.

  Attributes:
    mean: ``[..., n, output_dim]``.
    scale: ``[..., n, output_dim]`` standard deviations (> 0).
  """

  mean: jax.Array
  scale: jax.Array


class NPModel(NamedTuple):
  """The pure functions of a neural process's networks.

  Attributes:
    encode: ``encode(params, inputs [n, dx], labels [n, dy]) -> representation``
      (any pytree): the deterministic path's summary of a context, or ``None``
      for a model with no deterministic path.
    latent: ``latent(params, inputs [n, dx], labels [n, dy]) -> (mean [dz],
      scale [dz])``: the latent encoder ``q(z | set)``, or ``None`` for a model
      with no latent variable (a conditional NP).
    decode: ``decode(params, representation, z [dz] or None, target_inputs [m,
      dx]) -> (mean [m, dy], scale [m, dy])``.
  """

  encode: Callable[[Params, jax.Array, jax.Array], Any] | None
  latent: Callable[[Params, jax.Array, jax.Array], tuple[jax.Array, jax.Array]] | None
  decode: Callable[[Params, Any, jax.Array | None, jax.Array], tuple[jax.Array, jax.Array]]


def gaussian_kl(mean_q: jax.Array, scale_q: jax.Array, mean_p: jax.Array, scale_p: jax.Array) -> jax.Array:
  """``KL(N(mean_q, diag scale_q^2) || N(mean_p, diag scale_p^2))``, summed over the last axis.

  ``sum_i log(s_p / s_q) + (s_q^2 + (m_q - m_p)^2) / (2 s_p^2) - 1 / 2``.

  Args:
    mean_q, scale_q, mean_p, scale_p: ``[..., d]`` (broadcastable).

  Returns:
    ``[...]``, in nats.
  """
  ratio = jnp.square(scale_q / scale_p)
  return 0.5 * jnp.sum(ratio + jnp.square((mean_q - mean_p) / scale_p) - 1.0 - jnp.log(ratio), axis=-1)


class _MLP(nn.Module):
  """Dense layers of the given widths with ReLU between them (none after the last)."""

  features: tuple[int, ...]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.features):
      x = nn.Dense(width)(x)
      if i < len(self.features) - 1:
        x = nn.relu(x)
    return x


class _SelfAttention(nn.Module):
  """``num_layers`` blocks ``x <- LayerNorm(x + MultiHeadAttention(x, x, x))`` over a set."""

  num_heads: int
  num_layers: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    width = x.shape[-1]
    for _ in range(self.num_layers):
      attended = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=width,
                                                 out_features=width)(x, x)
      x = nn.LayerNorm()(x + attended)
    return x


class NeuralProcess(nn.Module):
  """The networks of the conditional, latent and attentive neural processes.

  * Deterministic path (``deterministic_path=True``): ``h_i = MLP([x_i, y_i])``
    (``num_encoder_layers`` layers of width ``hidden_dim``), then
    ``self_attention_layers`` multihead self-attention blocks over the
    context; aggregated by the mean (``attention="mean"``) or by multihead
    cross-attention (``attention="multihead"``) with queries ``MLP(x*)`` and
    keys ``MLP(x_i)`` (one two-layer MLP shared by both) and values ``h_i``.
  * Latent path (``latent_dim`` not None): ``g_i = MLP([x_i, y_i])``, the
    same self-attention blocks, ``s = mean_i g_i``, then
    ``ReLU(Dense((hidden_dim + latent_dim) // 2))`` and two heads: the mean
    and ``scale = 0.1 + 0.9 sigmoid(.)`` of ``q(z | set)``.
  * Decoder: ``MLP([r*, z, x*])`` with ``num_decoder_layers`` layers, the last
    of width ``2 output_dim``: the mean and ``scale = min_scale + (1 -
    min_scale) softplus(.)``.

  These follow DeepMind's reference implementation of the CNP, NP and ANP
  (``deepmind/neural-processes``: encoders ``[128] * 4``, decoder ``[128] * 2 +
  [2]``, 128 latents, the scale bounds 0.1 + 0.9 ...; keys and queries through
  a ``[128, 128]`` MLP); the self-attention blocks (residual connection and
  layer normalisation, as in Vaswani et al. 2017) are those of the ANP paper's
  encoders. ``__call__(context_inputs, context_labels, target_inputs)`` is the
  deterministic forward pass (``z`` at the mean of ``q(z | C)``) and returns
  ``(mean, scale)``; use it to initialise the parameters.

  Attributes:
    output_dim: ``dy``.
    hidden_dim: width of every hidden layer and of the representation ``r``.
    num_encoder_layers: layers of each encoder MLP.
    num_decoder_layers: layers of the decoder MLP (>= 1).
    latent_dim: width of ``z``; None for no latent path.
    deterministic_path: whether ``r`` is computed.
    attention: ``"mean"`` or ``"multihead"`` (cross-attention).
    self_attention_layers: self-attention blocks in each encoder (0 for none).
    num_heads: heads of every attention (dividing ``hidden_dim``).
    min_scale: lower bound of the predicted scale.
  """

  output_dim: int = 1
  hidden_dim: int = 128
  num_encoder_layers: int = 4
  num_decoder_layers: int = 3
  latent_dim: int | None = 128
  deterministic_path: bool = True
  attention: str = "mean"
  self_attention_layers: int = 0
  num_heads: int = 8
  min_scale: float = 0.1

  def setup(self):
    width = self.hidden_dim
    encoder = (width,) * self.num_encoder_layers
    if self.deterministic_path:
      self.deterministic_encoder = _MLP(encoder)
      if self.self_attention_layers:
        self.deterministic_self_attention = _SelfAttention(self.num_heads, self.self_attention_layers)
      if self.attention == "multihead":
        self.attention_embedding = _MLP((width, width))
        self.cross_attention = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, qkv_features=width, out_features=width, use_bias=False)
    if self.latent_dim:
      self.latent_encoder = _MLP(encoder)
      if self.self_attention_layers:
        self.latent_self_attention = _SelfAttention(self.num_heads, self.self_attention_layers)
      self.latent_hidden = nn.Dense((width + self.latent_dim) // 2)
      self.latent_mean = nn.Dense(self.latent_dim)
      self.latent_log_scale = nn.Dense(self.latent_dim)
    self.decoder = _MLP((width,) * (self.num_decoder_layers - 1) + (2 * self.output_dim,))

  def encode(self, inputs: jax.Array, labels: jax.Array) -> dict[str, jax.Array]:
    """The deterministic path's context state: ``{"representation": [d]}`` or ``{"keys", "values"}``."""
    hidden = self.deterministic_encoder(jnp.concatenate([inputs, labels], axis=-1))
    if self.self_attention_layers:
      hidden = self.deterministic_self_attention(hidden)
    if self.attention == "mean":
      return {"representation": jnp.mean(hidden, axis=0)}
    return {"keys": self.attention_embedding(inputs), "values": hidden}

  def latent(self, inputs: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(mean [latent_dim], scale [latent_dim])`` of ``q(z | set)``."""
    hidden = self.latent_encoder(jnp.concatenate([inputs, labels], axis=-1))
    if self.self_attention_layers:
      hidden = self.latent_self_attention(hidden)
    hidden = nn.relu(self.latent_hidden(jnp.mean(hidden, axis=0)))
    return self.latent_mean(hidden), 0.1 + 0.9 * jax.nn.sigmoid(self.latent_log_scale(hidden))

  def decode(self, state: dict[str, jax.Array] | None, z: jax.Array | None,
             target_inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(mean, scale)`` ``[m, output_dim]`` at ``target_inputs [m, dx]``."""
    num_targets = target_inputs.shape[0]
    parts = []
    if self.deterministic_path:
      if self.attention == "mean":
        parts.append(jnp.broadcast_to(state["representation"], (num_targets, self.hidden_dim)))
      else:
        queries = self.attention_embedding(target_inputs)
        parts.append(self.cross_attention(queries, state["keys"], state["values"]))
    if self.latent_dim:
      parts.append(jnp.broadcast_to(z, (num_targets, self.latent_dim)))
    hidden = self.decoder(jnp.concatenate(parts + [target_inputs], axis=-1))
    mean, raw_scale = jnp.split(hidden, 2, axis=-1)
    return mean, self.min_scale + (1.0 - self.min_scale) * jax.nn.softplus(raw_scale)

  def __call__(self, context_inputs: jax.Array, context_labels: jax.Array,
               target_inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
    state = self.encode(context_inputs, context_labels) if self.deterministic_path else None
    z = self.latent(context_inputs, context_labels)[0] if self.latent_dim else None
    return self.decode(state, z, target_inputs)


def np_model(module: NeuralProcess) -> NPModel:
  """The :class:`NPModel` of a :class:`NeuralProcess` module (``module.apply`` of its methods)."""
  if not isinstance(module, NeuralProcess):
    raise ValueError(f"np_model expects a NeuralProcess module, got {type(module).__name__}.")
  _check_module(module)

  def method(name):
    return lambda params, *args: module.apply({"params": params}, *args, method=name)

  return NPModel(encode=method("encode") if module.deterministic_path else None,
                 latent=method("latent") if module.latent_dim else None,
                 decode=method("decode"))


def neural_process(model: NPModel | NeuralProcess, *, num_samples: int = 1, context_in_target: bool = True,
                   input_dim: int = 1, seed: int = 0) -> MetaLearner:
  """A neural process as a :class:`~metalax.meta.MetaLearner`.

  ``adapt(meta_params, support, key=None)`` encodes the context: task
  parameters ``{"params", "representation"}`` (the deterministic path's state,
  None without one) and, with a latent path, ``"latent_mean"``,
  ``"latent_scale"`` of ``q(z | C)``. ``predict(task_params, inputs, key=None)``
  decodes a :class:`Gaussian` ``[n, output_dim]``: with a key, for one ``z ~
  q(z | C)``; without, at its mean. The predictive of a latent model is the
  mixture over ``z``: draw several predictions with different keys (or use the
  ``"nll"`` metric of ``loss``).

  ``loss(meta_params, episode, key=None, num_samples=None)`` returns the
  negative ELBO per target point (latent models) or the targets' mean negative
  log-likelihood (conditional NP) and the metrics described in
  :mod:`metalax.meta.neural_process`. ``num_samples`` (static) overrides the
  number of latent samples of the ELBO and of the ``"nll"`` estimate, e.g.
  more at evaluation.

  Args:
    model: a :class:`NeuralProcess` module, or an :class:`NPModel` of functions.
    num_samples: latent samples per episode (the papers use 1).
    context_in_target: train on targets = context + query (the papers'
      choice); False: on the query points only.
    input_dim: ``dx``, used only to initialise a module's parameters.
    seed: seed of that initialisation.

  Returns:
    A :class:`~metalax.meta.MetaLearner`. ``init(params)`` takes the model's
    parameters, or None to initialise a module's from ``jax.random.key(seed)``.

  Raises:
    ValueError: if ``model`` or a count is invalid; when adapting or
      predicting, if inputs are not ``[n, dx]`` or labels not ``[n, dy]`` floats.

  Example:
    >>> learner = metalax.meta.anp()
    >>> meta_params = learner.init(None)
    >>> step = jax.jit(metalax.meta.train_step(learner, optax.adam(1e-4)))
    >>> meta_params, opt_state, metrics = step(meta_params, opt_state, episodes, key)

  References:
    Garnelo et al., Conditional Neural Processes, ICML 2018; Garnelo et al.,
    Neural Processes, ICML workshop 2018; Kim et al., Attentive Neural
    Processes, ICLR 2019.
  """
  module = model if isinstance(model, NeuralProcess) else None
  if module is not None:
    model = np_model(module)
  elif not isinstance(model, NPModel):
    raise ValueError(f"neural_process: model must be a NeuralProcess module or an NPModel, got "
                     f"{type(model).__name__}.")
  if model.encode is None and model.latent is None:
    raise ValueError("neural_process: the model has neither a deterministic nor a latent path.")
  default_samples = _check_count("num_samples", num_samples)
  _check_count("input_dim", input_dim)
  latent = model.latent is not None

  def init(params: Params) -> MetaParams:
    if params is not None:
      return {"params": params}
    if module is None:
      raise ValueError("neural_process: init(None) initialises a NeuralProcess module; with an NPModel, "
                       "pass its parameters.")
    inputs = jnp.zeros((2, input_dim), jnp.float32)
    labels = jnp.zeros((2, module.output_dim), jnp.float32)
    return {"params": jax.jit(module.init)(jax.random.key(seed), inputs, labels, inputs)["params"]}

  def adapt(meta_params: MetaParams, support: Batch, key: jax.Array | None = None) -> TaskParams:
    del key  # encoding the context is deterministic
    _check_set(support.inputs, support.labels, "support")
    params = meta_params["params"]
    task_params = {"params": params, "representation": None}
    if model.encode is not None:
      task_params["representation"] = model.encode(params, support.inputs, support.labels)
    if latent:
      task_params["latent_mean"], task_params["latent_scale"] = model.latent(
          params, support.inputs, support.labels)
    return task_params

  def decode_samples(task_params, z, inputs):
    """Decoded Gaussians ``[S, n, dy]`` for latents ``z [S, dz]`` (or ``[1]`` Nones)."""
    decode = lambda z: model.decode(task_params["params"], task_params["representation"], z, inputs)
    if z is None:
      mean, scale = decode(None)
      return Gaussian(mean[None], scale[None])
    return Gaussian(*jax.vmap(decode)(z))

  def predict(task_params: TaskParams, inputs: jax.Array, key: jax.Array | None = None) -> Gaussian:
    _check_inputs(inputs, "inputs")
    z = None
    if latent:
      z = _latent_samples(key, task_params["latent_mean"], task_params["latent_scale"], 1)
    prediction = decode_samples(task_params, z, inputs)
    return Gaussian(prediction.mean[0], prediction.scale[0])

  def loss(meta_params: MetaParams, episode: Episode, key: jax.Array | None = None,
           num_samples: int = default_samples) -> tuple[jax.Array, Aux]:
    _check_count("num_samples", num_samples)
    support, query = episode.support, episode.query
    _check_set(query.inputs, query.labels, "query")
    task_params = adapt(meta_params, support)
    if context_in_target:
      targets = Batch(jnp.concatenate([support.inputs, query.inputs]),
                      jnp.concatenate([support.labels, query.labels]))
    else:
      targets = query
    posterior_key, prior_key = (None, None) if key is None else jax.random.split(key)
    aux = {}
    if latent:
      params = meta_params["params"]
      posterior_mean, posterior_scale = model.latent(params, targets.inputs, targets.labels)
      z = _latent_samples(posterior_key, posterior_mean, posterior_scale, num_samples)
      kl = gaussian_kl(posterior_mean, posterior_scale, task_params["latent_mean"], task_params["latent_scale"])
      aux["kl"] = kl
      prior_z = _latent_samples(prior_key, task_params["latent_mean"], task_params["latent_scale"], num_samples)
      query_prediction = decode_samples(task_params, prior_z, query.inputs)
    else:
      z, kl = None, 0.0
    prediction = decode_samples(task_params, z, targets.inputs)
    log_likelihood = -jax.vmap(gaussian_nll, in_axes=(0, 0, None))(
        prediction.mean, prediction.scale, targets.labels)                        # [S, |T|]
    num_targets = targets.inputs.shape[0]
    objective = (kl - jnp.mean(jnp.sum(log_likelihood, axis=-1))) / num_targets
    if not latent:
      query_prediction = decode_samples(task_params, None, query.inputs)
    per_point = -jax.vmap(gaussian_nll, in_axes=(0, 0, None))(
        query_prediction.mean, query_prediction.scale, query.labels)              # [S, n]
    num_query_samples = per_point.shape[0]
    aux["nll"] = -jnp.mean(jax.nn.logsumexp(per_point, axis=0) - np.log(num_query_samples))
    mixture_mean = jnp.mean(query_prediction.mean, axis=0)
    aux["mse"] = jnp.mean(jnp.square(mixture_mean - query.labels))
    aux["loss"] = objective
    return objective, aux

  return MetaLearner(init=init, adapt=adapt, predict=predict, loss=loss)


def cnp(*, input_dim: int = 1, output_dim: int = 1, hidden_dim: int = 128, num_encoder_layers: int = 4,
        num_decoder_layers: int = 3, context_in_target: bool = True, seed: int = 0) -> MetaLearner:
  """Conditional neural process: the mean of encoded context pairs, decoded at each target.

  Trained by the targets' Gaussian log-likelihood (no latent variable, no key
  needed). Defaults from DeepMind's CNP code (encoder ``[128] * 4``, decoder
  ``[128] * 2 + [2 dy]``, scale ``0.1 + 0.9 softplus``). Arguments as
  :class:`NeuralProcess` and :func:`neural_process`.

  Example:
    >>> learner = metalax.meta.cnp()
    >>> loss, aux = metalax.meta.batch_loss(learner)(learner.init(None), episodes)

  References:
    Garnelo, Rosenbaum, Maddison, Ramalho, Saxton, Shanahan, Teh, Rezende &
    Eslami, Conditional Neural Processes, ICML 2018.
  """
  module = NeuralProcess(output_dim=output_dim, hidden_dim=hidden_dim, num_encoder_layers=num_encoder_layers,
                         num_decoder_layers=num_decoder_layers, latent_dim=None)
  return neural_process(module, context_in_target=context_in_target, input_dim=input_dim, seed=seed)


def latent_np(*, input_dim: int = 1, output_dim: int = 1, hidden_dim: int = 128, latent_dim: int = 128,
              num_encoder_layers: int = 4, num_decoder_layers: int = 3, deterministic_path: bool = False,
              num_samples: int = 1, context_in_target: bool = True, seed: int = 0) -> MetaLearner:
  """Latent-variable neural process, trained on the ELBO with ``q(z | C)`` as the prior.

  With ``deterministic_path=False`` (default) the decoder sees ``z`` and ``x``
  only, as in Garnelo et al. 2018b; ``True`` adds the mean-aggregated
  deterministic path (the "NP" baseline of Kim et al. 2019 and of DeepMind's
  ANP notebook). Arguments as :class:`NeuralProcess` and :func:`neural_process`.

  References:
    Garnelo, Schwarz, Rosenbaum, Viola, Rezende, Eslami & Teh, Neural
    Processes, ICML workshop on Theoretical Foundations and Applications of
    Deep Generative Models, 2018.
  """
  module = NeuralProcess(output_dim=output_dim, hidden_dim=hidden_dim, num_encoder_layers=num_encoder_layers,
                         num_decoder_layers=num_decoder_layers, latent_dim=latent_dim,
                         deterministic_path=deterministic_path)
  return neural_process(module, num_samples=num_samples, context_in_target=context_in_target,
                        input_dim=input_dim, seed=seed)


def anp(*, input_dim: int = 1, output_dim: int = 1, hidden_dim: int = 128, latent_dim: int = 128,
        num_encoder_layers: int = 4, num_decoder_layers: int = 3, num_heads: int = 8,
        self_attention_layers: int = 2, num_samples: int = 1, context_in_target: bool = True,
        seed: int = 0) -> MetaLearner:
  """Attentive neural process: self-attention in both encoders, multihead cross-attention to the context.

  Arguments as :class:`NeuralProcess` and :func:`neural_process`
  (``self_attention_layers=0`` gives the ANP of DeepMind's notebook, which
  has cross-attention only).

  References:
    Kim, Mnih, Schwarz, Garnelo, Eslami, Rosenbaum, Vinyals & Teh, Attentive
    Neural Processes, ICLR 2019.
  """
  module = NeuralProcess(output_dim=output_dim, hidden_dim=hidden_dim, num_encoder_layers=num_encoder_layers,
                         num_decoder_layers=num_decoder_layers, latent_dim=latent_dim, deterministic_path=True,
                         attention="multihead", self_attention_layers=self_attention_layers,
                         num_heads=num_heads)
  return neural_process(module, num_samples=num_samples, context_in_target=context_in_target,
                        input_dim=input_dim, seed=seed)


def _latent_samples(key: jax.Array | None, mean: jax.Array, scale: jax.Array, num_samples: int) -> jax.Array:
  """``[num_samples, dz]`` reparameterised samples, or ``[1, dz]`` at the mean without a key."""
  if key is None:
    return mean[None]
  return mean + scale * jax.random.normal(key, (num_samples,) + mean.shape, mean.dtype)


def _check_module(module: NeuralProcess) -> None:
  if module.attention not in ATTENTIONS:
    raise ValueError(f"NeuralProcess.attention must be one of {ATTENTIONS}, got {module.attention!r}.")
  for name in ("output_dim", "hidden_dim", "num_encoder_layers", "num_decoder_layers", "num_heads"):
    _check_count(f"NeuralProcess.{name}", getattr(module, name))
  if module.latent_dim is not None:
    _check_count("NeuralProcess.latent_dim", module.latent_dim)
  if module.hidden_dim % module.num_heads and (module.attention == "multihead" or module.self_attention_layers):
    raise ValueError(f"NeuralProcess: num_heads={module.num_heads} must divide hidden_dim={module.hidden_dim}.")
  if not module.deterministic_path and not module.latent_dim:
    raise ValueError("NeuralProcess: needs a deterministic path or a latent_dim (got neither).")


def _check_count(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
  return int(value)


def _check_inputs(inputs: jax.Array, name: str) -> None:
  if getattr(inputs, "ndim", None) != 2:
    raise ValueError(f"neural process: {name} must be [n, input_dim], got shape "
                     f"{getattr(inputs, 'shape', type(inputs).__name__)}.")


def _check_set(inputs: jax.Array, labels: jax.Array, name: str) -> None:
  _check_inputs(inputs, f"{name}.inputs")
  if labels.ndim != 2 or labels.shape[0] != inputs.shape[0] or is_classification(labels):
    raise ValueError(f"neural process: {name}.labels must be [n, output_dim] floats with n = "
                     f"{inputs.shape[0]}, got shape {tuple(labels.shape)} and dtype {labels.dtype}.")
