"""SNAIL: a sequence model over the labelled support set, for classification and regression.

A black-box learner in the mechanistic view: the support set becomes a
sequence of ``[embedding(x_i), label_i]`` tokens, each query is appended as
``[embedding(x), 0]``, and a stack of temporal-convolution blocks (causal,
dilated, gated, densely connected) and causal soft-attention blocks reads the
sequence; the output at the query's position is its prediction (Mishra et al.
2018). Each query gets its own sequence (support then that query), so
queries never see one another, as in the paper.

Labels are encoded as one-hot vectors (classification, ``num_ways`` given) or
used as they are (regression, ``output_dim`` given); the outputs are logits
``[n, num_ways]`` with the cross-entropy, or predictions ``[n, output_dim]``
with the squared error.
"""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from metalax import losses
from metalax.meta.base import MetaLearner, MetaParams, TaskParams, query_loss
from metalax.meta.metric import EmbedFn, _check_num_ways, _embed
from metalax.types import Batch, Params, is_classification


class _DenseBlock(nn.Module):
  """Causal dilated convolution (kernel 2) with a gated activation, concatenated to its input."""

  dilation: int
  filters: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    def causal(name):
      conv = nn.Conv(self.filters, kernel_size=(2,), kernel_dilation=(self.dilation,),
                     padding=((self.dilation, 0),), name=name)
      return conv(x[None])[0]

    return jnp.concatenate([x, jnp.tanh(causal("filter")) * jax.nn.sigmoid(causal("gate"))], axis=-1)


class _AttentionBlock(nn.Module):
  """Causal single-head soft attention, its read concatenated to the input."""

  key_size: int
  value_size: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    keys, queries = nn.Dense(self.key_size)(x), nn.Dense(self.key_size)(x)
    values = nn.Dense(self.value_size)(x)
    scores = queries @ keys.T / math.sqrt(self.key_size)
    causal = jnp.tril(jnp.ones(scores.shape, bool))
    weights = jax.nn.softmax(jnp.where(causal, scores, -jnp.inf), axis=-1)
    return jnp.concatenate([x, weights @ values], axis=-1)


class SNAIL(nn.Module):
  """The SNAIL network: attention and TC blocks alternating, then a dense output per position.

  The default is the paper's Omniglot architecture: attention (key 64, value
  32), TC(T, 128), attention (256, 128), TC(T, 128), attention (512, 256),
  then a 1 x 1 convolution (a dense layer) to ``num_outputs``; a TC block has
  ``ceil(log2 T)`` dense blocks with dilations 1, 2, 4, ....

  Attributes:
    num_outputs: outputs per position.
    sequence_length: ``T``, the longest sequence (support size + 1).
    filters: filters of every dense block.
    attention: ``(key_size, value_size)`` of each attention block; a TC block
      sits between consecutive ones.

  Called on ``tokens [T', d]`` with ``T' <= T``, returns ``[T', num_outputs]``.
  """

  num_outputs: int
  sequence_length: int
  filters: int = 128
  attention: Sequence[tuple[int, int]] = ((64, 32), (256, 128), (512, 256))

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    num_dense = max(1, math.ceil(math.log2(self.sequence_length)))
    x = tokens
    for i, (key_size, value_size) in enumerate(self.attention):
      if i:
        for j in range(num_dense):
          x = _DenseBlock(2 ** j, self.filters)(x)
      x = _AttentionBlock(key_size, value_size)(x)
    return nn.Dense(self.num_outputs, name="head")(x)


def snail(embed_fn: EmbedFn | None = None, *, num_ways: int | None = None, output_dim: int | None = None,
          num_support: int, embedding_dim: int | None = None, filters: int = 128,
          attention: Sequence[tuple[int, int]] = ((64, 32), (256, 128), (512, 256)), seed: int = 0) -> MetaLearner:
  """A SNAIL learner for classification (``num_ways``) or regression (``output_dim``).

  The meta-parameters are ``{"params": {"embed": embed_params, "model":
  snail_params}}`` (``embed`` is ``{}`` without ``embed_fn``). ``init`` takes
  that inner dict, or the embedding's parameters alone (``{}`` or None without
  ``embed_fn``) when ``embedding_dim`` is known: the :class:`SNAIL` network is
  then initialised from ``jax.random.key(seed)``. ``adapt`` only embeds the
  support set (no ``num_steps``, no randomness); ``predict`` runs the network
  once per query.

  Args:
    embed_fn: ``embed_fn(params, inputs [n, ...]) -> embeddings [n, d]``; None:
      the inputs themselves, flattened (regression on raw ``x``).
    num_ways: classes per episode (classification), or None.
    output_dim: target width (regression), or None; exactly one of the two.
    num_support: the support-set size the network is built for (its sequences
      are ``num_support + 1`` long; smaller support sets work too).
    embedding_dim: ``d`` (the flattened input width without ``embed_fn``),
      needed to initialise the network in ``init``.
    filters, attention: as :class:`SNAIL`.
    seed: seed of the network's initialisation.

  Returns:
    A :class:`~metalax.meta.MetaLearner` with logits ``[n, num_ways]`` and the
    cross-entropy, or outputs ``[n, output_dim]`` and the squared error.

  Raises:
    ValueError: if both or neither of ``num_ways`` and ``output_dim`` are
      given, a count is invalid, ``init`` cannot complete the parameters, or
      (when adapting) the labels do not match the task type.

  Example:
    >>> learner = metalax.meta.snail(num_ways=None, output_dim=1, num_support=10, embedding_dim=1)
    >>> meta_params = learner.init(None)
    >>> step = jax.jit(metalax.meta.train_step(learner, optax.adam(1e-3)))

  References:
    Mishra, Rohaninejad, Chen & Abbeel, A Simple Neural Attentive Meta-Learner, ICLR 2018.
  """
  if (num_ways is None) == (output_dim is None):
    raise ValueError(f"snail: give exactly one of num_ways (classification) or output_dim (regression), got "
                     f"num_ways={num_ways!r}, output_dim={output_dim!r}.")
  classification = num_ways is not None
  if classification:
    num_ways = _check_num_ways(num_ways)
  for name, value in (("output_dim", output_dim), ("num_support", num_support), ("embedding_dim", embedding_dim),
                      ("filters", filters)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      raise ValueError(f"snail: {name} must be an int >= 1, got {value!r}.")
  label_dim = num_ways if classification else output_dim
  module = SNAIL(num_outputs=label_dim, sequence_length=num_support + 1, filters=filters,
                 attention=tuple(tuple(a) for a in attention))

  def embed(params: Params, inputs: jax.Array) -> jax.Array:
    if embed_fn is None:
      return inputs.reshape(inputs.shape[0], -1)
    return _embed(embed_fn, params, inputs, "snail")

  def init(params: Params) -> MetaParams:
    if hasattr(params, "keys") and set(params.keys()) == {"embed", "model"}:
      return {"params": params}
    if embedding_dim is None:
      got = sorted(params.keys()) if hasattr(params, "keys") else type(params).__name__
      raise ValueError("snail: init expects {'embed': ..., 'model': ...}, or the embedding's parameters alone "
                       f"when embedding_dim is given; got {got}.")
    tokens = jnp.zeros((num_support + 1, embedding_dim + label_dim), jnp.float32)
    model = jax.jit(module.init)(jax.random.key(seed), tokens)["params"]
    return {"params": {"embed": {} if params is None else params, "model": model}}

  def encode_labels(labels: jax.Array, dtype: Any) -> jax.Array:
    if classification:
      if labels.ndim != 1 or not is_classification(labels):
        raise ValueError(f"snail: support labels must be [n] int class indices in [0, {num_ways}), got shape "
                         f"{tuple(labels.shape)} and dtype {labels.dtype}.")
      return jax.nn.one_hot(labels, num_ways, dtype=dtype)
    if labels.ndim != 2 or labels.shape[1] != output_dim or is_classification(labels):
      raise ValueError(f"snail: support labels must be [n, {output_dim}] floats, got shape {tuple(labels.shape)} "
                       f"and dtype {labels.dtype}.")
    return labels.astype(dtype)

  def adapt(meta_params: MetaParams, support: Batch, key: jax.Array | None = None) -> TaskParams:
    del key
    params = meta_params["params"]
    if support.inputs.shape[0] > num_support:
      raise ValueError(f"snail: the network was built for {num_support} support examples, got "
                       f"{support.inputs.shape[0]}.")
    embeddings = embed(params["embed"], support.inputs)
    tokens = jnp.concatenate([embeddings, encode_labels(support.labels, embeddings.dtype)], axis=-1)
    return {"params": params, "support_tokens": tokens}

  def predict(task_params: TaskParams, inputs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    del key
    params, support_tokens = task_params["params"], task_params["support_tokens"]
    embeddings = embed(params["embed"], inputs)
    queries = jnp.concatenate([embeddings, jnp.zeros((inputs.shape[0], label_dim), embeddings.dtype)], axis=-1)
    if queries.shape[1] != support_tokens.shape[1]:
      raise ValueError(f"snail: query tokens have width {queries.shape[1]}, support tokens "
                       f"{support_tokens.shape[1]}.")

    def one(query):
      sequence = jnp.concatenate([support_tokens, query[None]])
      return module.apply({"params": params["model"]}, sequence)[-1]

    return jax.vmap(one)(queries)

  loss_fn = losses.cross_entropy if classification else losses.squared_error
  return MetaLearner(init=init, adapt=adapt, predict=predict, loss=query_loss(adapt, predict, loss_fn))
