"""Black-box meta-learning: a network that reads the labelled support set and predicts.

In the "mechanistic" (or black-box adaptation) view of meta-learning, learning a
task is one forward pass: a sequence model takes the support set as
``(embedding, label)`` pairs together with a query and outputs the query's
prediction, and meta-training is ordinary training of that network across
episodes. :func:`blackbox` builds such a :class:`~metalax.meta.MetaLearner`
from any ``model_fn``; :class:`EpisodeTransformer` is a small built-in linen
transformer encoder for it.
"""

import inspect
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from metalax import losses
from metalax.meta.base import MetaLearner, MetaParams, TaskParams, query_loss, split_key
from metalax.meta.metric import EmbedFn, _check_num_ways, _embed, _validator
from metalax.types import Batch, Params, is_classification

ModelFn = Callable[..., jax.Array]
"""``model_fn(params, support_embeddings [n_support, d], support_labels [n_support],
query_embeddings [n, d]) -> logits [n, num_ways]``; a stochastic one also takes a
keyword PRNG key ``key=`` (see :data:`metalax.types.ApplyFn`)."""


class EpisodeTransformer(nn.Module):
  """A transformer encoder that reads a labelled support set and classifies queries.

  Tokens are ``Dense(model_dim)`` of ``[embedding, onehot(label)]`` for the
  support examples and ``[embedding, 0]`` (a zero label vector) for the
  queries; ``num_layers`` pre-LayerNorm blocks (multi-head self-attention,
  then a GELU MLP, each with a residual connection) follow, then a final
  LayerNorm and ``Dense(num_ways)`` on the query tokens.

  Attention is masked so that support tokens attend to the support tokens
  only and each query token to the support tokens and itself: every query is
  classified independently of the other queries (as if processed alone, but in
  one pass), and the support representation never sees a query. There is no
  positional encoding, so the logits do not depend on the order of the support
  rows. No dropout, no normalisation statistics: only ``params``.

  Attributes:
    num_ways: classes per episode (width of the one-hot labels and the logits).
    num_layers: transformer blocks.
    num_heads: attention heads (must divide ``model_dim``).
    model_dim: token width.
    hidden_dim: width of each block's MLP.

  Called as ``module.apply({"params": p}, support_embeddings [n_support, d],
  support_labels [n_support] int, query_embeddings [n, d])``, it returns
  logits ``[n, num_ways]``.

  Example:
    >>> model = EpisodeTransformer(num_ways=5)
    >>> d = 64
    >>> model_params = model.init(key, jnp.zeros((1, d)), jnp.zeros((1,), jnp.int32),
    ...                           jnp.zeros((1, d)))["params"]
  """

  num_ways: int
  num_layers: int = 2
  num_heads: int = 4
  model_dim: int = 64
  hidden_dim: int = 128

  @nn.compact
  def __call__(self, support_embeddings: jax.Array, support_labels: jax.Array,
               query_embeddings: jax.Array) -> jax.Array:
    num_support, num_queries = support_embeddings.shape[0], query_embeddings.shape[0]
    dtype = support_embeddings.dtype
    support_tokens = jnp.concatenate(
        [support_embeddings, jax.nn.one_hot(support_labels, self.num_ways, dtype=dtype)], axis=-1)
    query_tokens = jnp.concatenate(
        [query_embeddings, jnp.zeros((num_queries, self.num_ways), query_embeddings.dtype)], axis=-1)
    x = nn.Dense(self.model_dim, name="tokens")(jnp.concatenate([support_tokens, query_tokens]))
    length = num_support + num_queries
    is_support = jnp.arange(length) < num_support
    mask = is_support[None, :] | jnp.eye(length, dtype=bool)   # [query token, key token]
    for _ in range(self.num_layers):
      y = nn.LayerNorm()(x)
      x = x + nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=self.model_dim,
                                              out_features=self.model_dim)(y, y, mask=mask[None])
      y = nn.LayerNorm()(x)
      y = nn.Dense(self.model_dim)(nn.gelu(nn.Dense(self.hidden_dim)(y)))
      x = x + y
    x = nn.LayerNorm()(x[num_support:])
    return nn.Dense(self.num_ways, name="head")(x)


def blackbox(embed_fn: EmbedFn, model_fn: ModelFn | nn.Module | None = None, *, num_ways: int,
             embedding_dim: int | None = None, seed: int = 0) -> MetaLearner:
  """A black-box meta-learner: ``model_fn`` maps the support set and a query to logits.

  ``adapt`` only embeds the support set (there is no inner loop, so no
  ``num_steps``); ``predict`` embeds the queries and runs ``model_fn`` on
  ``(support embeddings, support labels, query embeddings)``. The embedding
  and the model are trained together by the outer optimizer on the query
  cross-entropy, e.g. with :func:`metalax.meta.train_step`.

  The meta-parameters are ``{"params": {"embed": embed_params, "model":
  model_params}}``. ``init`` takes either that inner dict, or, when the model
  is a linen module (the default :class:`EpisodeTransformer` included) and
  ``embedding_dim`` is given, the embedding's parameters alone: the module's
  parameters are then initialised from ``jax.random.key(seed)`` for
  embeddings of width ``embedding_dim``, so that
  ``learner.init(backbone_params)`` works as for the metric learners.

  Args:
    embed_fn: ``embed_fn(params, inputs [n, ...]) -> embeddings [n, d]``.
    model_fn: ``model_fn(params, support_embeddings [n_support, d],
      support_labels [n_support] int, query_embeddings [n, d]) -> logits [n,
      num_ways]``, or a linen module called that way (applied as
      ``module.apply({"params": params}, ...)``); default
      ``EpisodeTransformer(num_ways=num_ways)``. When the learner is given a
      PRNG key, ``embed_fn`` is called as ``embed_fn(params, inputs,
      key=key)``, and ``model_fn`` gets a keyword ``key=`` too if it takes
      one (a ``key`` parameter or ``**kwargs``; a linen module gets it as its
      ``"dropout"`` rng).
    num_ways: classes per episode, a static int >= 2.
    embedding_dim: the width ``d`` of the embeddings, needed only to
      initialise a module's parameters in ``init``.
    seed: the seed of that initialisation.

  Returns:
    A :class:`~metalax.meta.MetaLearner` with the meta-parameters above, task
    parameters ``{"params", "support_embeddings" [n_support, d],
    "support_labels" [n_support]}``, logits ``[n, num_ways]`` and the query
    cross-entropy loss.

  Raises:
    ValueError: if ``num_ways`` is not an int >= 2, ``model_fn`` is not
      callable or is an :class:`EpisodeTransformer` with another ``num_ways``,
      or ``embedding_dim`` is not a positive int; if ``init`` gets parameters
      it cannot complete (no ``"embed"`` and ``"model"`` entries, and no module
      with ``embedding_dim`` to initialise); when adapting or predicting, if
      the support labels are not ``[n]`` ints, the embeddings are not ``[n,
      d]`` or the logits are not ``[n, num_ways]``; from the generic functions
      on concrete episodes, as :func:`~metalax.meta.protonet`.

  Example:
    >>> embedder = metalax.models.MLP(features=(64,), num_outputs=32)
    >>> learner = metalax.meta.blackbox(metalax.models.from_linen(embedder), num_ways=5,
    ...                                 embedding_dim=32)
    >>> meta_params = learner.init(embedder.init(key, images[:1])["params"])
    >>> # or, with any model: learner.init({"embed": embed_params, "model": model_params})

  References:
    Santoro et al., Meta-Learning with Memory-Augmented Neural Networks, ICML
    2016; Mishra, Rohaninejad, Chen & Abbeel, A Simple Neural Attentive
    Meta-Learner, ICLR 2018; Kirsch, Harrison, Sohl-Dickstein & Metz,
    General-Purpose In-Context Learning by Meta-Learning Transformers, 2022.
  """
  num_ways = _check_num_ways(num_ways)
  if embedding_dim is not None and (isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int)
                                    or embedding_dim < 1):
    raise ValueError(f"blackbox: embedding_dim must be a positive int, got {embedding_dim!r}.")
  if model_fn is None:
    model_fn = EpisodeTransformer(num_ways=num_ways)
  module = None
  if isinstance(model_fn, nn.Module):
    if isinstance(model_fn, EpisodeTransformer) and model_fn.num_ways != num_ways:
      raise ValueError(
          f"blackbox: num_ways={num_ways}, but the EpisodeTransformer has "
          f"num_ways={model_fn.num_ways}.")
    module = model_fn

    def model_fn(params, support_embeddings, support_labels, query_embeddings, key=None):
      rngs = None if key is None else {"dropout": key}
      return module.apply({"params": params}, support_embeddings, support_labels, query_embeddings,
                          rngs=rngs)
  elif not callable(model_fn):
    raise ValueError(f"blackbox: model_fn must be callable or a linen module, got "
                     f"{type(model_fn).__name__}.")
  model_takes_key = _takes_key(model_fn)

  def init(params: Params) -> MetaParams:
    if hasattr(params, "keys") and set(params.keys()) == {"embed", "model"}:
      return {"params": params}
    if module is None or embedding_dim is None:
      got = sorted(params.keys()) if hasattr(params, "keys") else type(params).__name__
      raise ValueError(
          "blackbox: init expects {'embed': embed_params, 'model': model_params}, or the embedding's "
          f"parameters alone when the model is a linen module and embedding_dim is given; got {got}.")
    dummy = jnp.zeros((1, embedding_dim), jnp.float32)
    model_params = jax.jit(module.init)(jax.random.key(seed), dummy, jnp.zeros((1,), jnp.int32),
                                        dummy)["params"]
    return {"params": {"embed": params, "model": model_params}}

  def adapt(meta_params: MetaParams, support: Batch, key: jax.Array | None = None) -> TaskParams:
    params = meta_params["params"]
    labels = support.labels
    if labels.ndim != 1 or not is_classification(labels):
      raise ValueError(
          f"blackbox: support labels must be [n] int class indices in [0, {num_ways}), got "
          f"shape {tuple(labels.shape)} and dtype {labels.dtype}.")
    embeddings = _embed(embed_fn, params["embed"], support.inputs, "blackbox", key)
    return {"params": params, "support_embeddings": embeddings, "support_labels": labels}

  def predict(task_params: TaskParams, inputs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    params = task_params["params"]
    embed_key, model_key = split_key(key)
    embeddings = _embed(embed_fn, params["embed"], inputs, "blackbox", embed_key)
    model_args = (params["model"], task_params["support_embeddings"], task_params["support_labels"],
                  embeddings)
    if model_key is None or not model_takes_key:
      logits = model_fn(*model_args)
    else:
      logits = model_fn(*model_args, key=model_key)
    if getattr(logits, "shape", None) != (inputs.shape[0], num_ways):
      raise ValueError(
          f"blackbox: model_fn must return logits [n, num_ways] = {(inputs.shape[0], num_ways)}, "
          f"got {getattr(logits, 'shape', type(logits).__name__)}.")
    return logits

  return MetaLearner(init=init, adapt=adapt, predict=predict,
                     loss=query_loss(adapt, predict, losses.cross_entropy),
                     validate=_validator(num_ways, "blackbox"))


def _takes_key(fn) -> bool:
  """Whether ``fn`` accepts a keyword ``key`` (a ``key`` parameter or ``**kwargs``)."""
  try:
    parameters = inspect.signature(fn).parameters.values()
  except (TypeError, ValueError):   # no signature: assume it does not
    return False
  return any(p.name == "key" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
