"""Metric-based few-shot learners: a trained embedding and a closed-form rule on it.

:func:`protonet` (class means), :func:`matching_net` (attention over the support
set), :func:`nearest_neighbour` (nearest support examples of each class) and
:func:`r2d2` (ridge regression solved in closed form) adapt to a task with no
inner steps: ``adapt(meta_params, support)`` embeds the support set with
``embed_fn`` and computes a small task state from it, and ``predict(task_params,
inputs)`` returns logits ``[n, num_ways]``. Their ``adapt`` takes no
``num_steps``: :func:`metalax.meta.evaluate` is called without one. Given a
PRNG key (a stochastic ``embed_fn``), ``adapt`` and ``predict`` pass it on as
``embed_fn(params, inputs, key=key)``.

Every learner takes ``embed_fn(params, inputs [n, ...]) -> embeddings [n, d]``
and a static ``num_ways``: class statistics come from a one-hot matrix
``[n_support, num_ways]``, so shapes never depend on the labels' values.
Labels must be int class indices in ``[0, num_ways)``, and every class must
have support examples: an episode of another number of ways is a mistake.
A learner's ``adapt`` (so its ``loss``) checks this when the support labels
are concrete, its ``validate`` checks whole episodes, and :func:`metalax.meta.batch_loss`,
:func:`~metalax.meta.episode_loss`, :func:`~metalax.meta.train_step` and
:func:`~metalax.meta.evaluate` call it (``ValueError``) whenever the episodes
are concrete arrays. Under ``jit`` the values are unknown: a label outside the
range is then silently dropped by the one-hot encoding, and a class with no
support example gets the logit ``-inf`` (:func:`matching_net`,
:func:`nearest_neighbour`) or a prototype at the origin (:func:`protonet`);
episodes from :func:`metalax.episodes.sample_episodes` always have
``num_shots`` examples of every class.

The meta-parameters are ``{"params": params}``, plus the learned scalars that
a learner documents (``"log_temperature"``; ``"scale"`` and ``"bias"`` for
:func:`r2d2`), all trained by the outer optimizer.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from metalax import losses
from metalax.meta.base import MetaLearner, MetaParams, TaskParams, query_loss
from metalax.meta.inner import check_positive
from metalax.types import ApplyFn, Batch, Params, apply_model, is_classification

EmbedFn = ApplyFn
"""``embed_fn(params, inputs [n, ...]) -> embeddings [n, d]``: an ``apply_fn`` whose outputs are embeddings."""

DISTANCES = ("squared_euclidean", "cosine")
"""The distances a metric learner accepts."""


def protonet(embed_fn: EmbedFn, *, num_ways: int, distance: str = "squared_euclidean",
             temperature: float = 1.0, learn_temperature: bool = False) -> MetaLearner:
  """Prototypical Networks: classify by the nearest class mean of the support embeddings.

  ``adapt`` computes the prototypes ``c_k = mean{embed(x) : (x, k) in support}``
  (a one-hot matmul, ``[num_ways, d]``); ``predict`` returns

  * ``logits[q, k] = -||embed(x_q) - c_k||^2 / temperature`` for
    ``distance="squared_euclidean"``: the paper's choice (its Section 2.7 shows
    that with a Bregman divergence such as this one the class mean is the right
    prototype, and the model is then a linear classifier in the embedding);
  * ``logits[q, k] = cos(embed(x_q), c_k) / temperature`` for
    ``distance="cosine"`` (a cosine classifier on the prototypes). Cosine
    logits lie in ``[-1, 1] / temperature``, so temperature 1 gives soft
    predictions and a weak training signal: use ``temperature`` around 0.1
    (a scale of 10) or ``learn_temperature=True``.

  Args:
    embed_fn: ``embed_fn(params, inputs [n, ...]) -> embeddings [n, d]``.
    num_ways: classes per episode, a static int >= 2.
    distance: ``"squared_euclidean"`` or ``"cosine"``.
    temperature: divides the logits (> 0); the initial value when learned.
    learn_temperature: learn ``log(temperature)`` as ``meta_params["log_temperature"]``.

  Returns:
    A :class:`~metalax.meta.MetaLearner` with meta-parameters ``{"params":
    params}`` (plus ``"log_temperature"``), task parameters ``{"params",
    "prototypes" [num_ways, d], "temperature"}``, logits ``[n, num_ways]`` and
    the cross-entropy query loss.

  Raises:
    ValueError: if ``num_ways`` is not an int >= 2, ``distance`` is unknown or
      ``temperature`` is not positive; when adapting, if the support labels are
      not ``[n]`` ints or the embeddings are not ``[n, d]``; from the generic
      functions on concrete episodes (``validate``), if labels lie outside
      ``[0, num_ways)`` or a support set lacks a class.

  Example:
    >>> model = metalax.models.MLP(features=(64,), num_outputs=32)
    >>> learner = metalax.meta.protonet(metalax.models.from_linen(model), num_ways=5)
    >>> meta_params = learner.init(model.init(key, images[:1])["params"])
    >>> step = jax.jit(metalax.meta.train_step(learner, optax.adam(1e-3)))

  References:
    Snell, Swersky & Zemel, Prototypical Networks for Few-shot Learning, NeurIPS 2017.
  """
  num_ways = _check_num_ways(num_ways)
  _check_distance(distance)
  init, get_temperature = _temperature(temperature, learn_temperature)

  def adapt(meta_params: MetaParams, support: Batch, key: jax.Array | None = None) -> TaskParams:
    params = meta_params["params"]
    embeddings, one_hot = _embed_support(embed_fn, params, support, num_ways, "protonet", key)
    counts = jnp.sum(one_hot, axis=0)
    prototypes = (one_hot.T @ embeddings) / jnp.maximum(counts, 1)[:, None]
    return {"params": params, "prototypes": prototypes,
            "temperature": get_temperature(meta_params)}

  def predict(task_params: TaskParams, inputs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    embeddings = _embed(embed_fn, task_params["params"], inputs, "protonet", key)
    _check_dim(embeddings, task_params["prototypes"], "protonet")
    return _similarity(embeddings, task_params["prototypes"], distance) / task_params["temperature"]

  return MetaLearner(init=init, adapt=adapt, predict=predict,
                     loss=query_loss(adapt, predict, losses.cross_entropy),
                     validate=_validator(num_ways, "protonet"))


def matching_net(embed_fn: EmbedFn, *, num_ways: int, temperature: float = 1.0,
                 learn_temperature: bool = False) -> MetaLearner:
  """Matching Networks without full-context embeddings: attention over the support set.

  With ``f = g = embed_fn`` and ``s_i = cos(f(x_q), g(x_i)) / temperature``
  for every support example ``(x_i, y_i)``, the attention is
  ``a_i = softmax_i(s_i)`` and the predicted distribution is the
  attention-weighted sum of the one-hot support labels,
  ``p(k | x_q) = sum_{i: y_i = k} a_i``. ``predict`` returns its logarithm,
  computed stably as ``logsumexp_{i: y_i = k} s_i - logsumexp_i s_i`` (each
  row's ``exp`` sums to one), so ``cross_entropy`` is the paper's
  ``-log p(y | x, S)``.

  This is equation (1) and (2) of the paper with the cosine kernel it uses, but
  with the same embedding for queries and support and no full-context
  embeddings (the paper's bidirectional LSTM ``g`` over the support set and
  attention LSTM ``f`` are left out, as in most later comparisons). The paper's
  softmax has no temperature (``temperature=1``, the default); since cosines lie
  in ``[-1, 1]`` that bounds how peaked the attention can be, and a smaller or
  learned temperature often trains faster.

  Args:
    embed_fn: ``embed_fn(params, inputs [n, ...]) -> embeddings [n, d]``.
    num_ways: classes per episode, a static int >= 2.
    temperature: divides the cosine similarities (> 0); the initial value when learned.
    learn_temperature: learn ``log(temperature)`` as ``meta_params["log_temperature"]``.

  Returns:
    A :class:`~metalax.meta.MetaLearner` with meta-parameters ``{"params":
    params}`` (plus ``"log_temperature"``), task parameters ``{"params",
    "support_embeddings" [n_support, d] (unit norm), "support_one_hot"
    [n_support, num_ways], "temperature"}``, log-probabilities ``[n, num_ways]``
    as logits and the cross-entropy query loss.

  Raises:
    ValueError: as :func:`protonet`.

  Example:
    >>> learner = metalax.meta.matching_net(embed_fn, num_ways=5, learn_temperature=True)
    >>> metrics = jax.jit(metalax.meta.evaluate(learner))(learner.init(params), episodes)

  References:
    Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, Matching Networks for
    One Shot Learning, NeurIPS 2016.
  """
  num_ways = _check_num_ways(num_ways)
  init, get_temperature = _temperature(temperature, learn_temperature)

  def adapt(meta_params: MetaParams, support: Batch, key: jax.Array | None = None) -> TaskParams:
    params = meta_params["params"]
    embeddings, one_hot = _embed_support(embed_fn, params, support, num_ways, "matching_net", key)
    return {"params": params, "support_embeddings": _unit(embeddings), "support_one_hot": one_hot,
            "temperature": get_temperature(meta_params)}

  def predict(task_params: TaskParams, inputs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    embeddings = _embed(embed_fn, task_params["params"], inputs, "matching_net", key)
    _check_dim(embeddings, task_params["support_embeddings"], "matching_net")
    scores = _unit(embeddings) @ task_params["support_embeddings"].T / task_params["temperature"]
    in_class = task_params["support_one_hot"].T[None] > 0                 # [1, num_ways, n_support]
    per_class = _masked_logsumexp(scores[:, None, :], in_class)          # [n, num_ways]
    return per_class - jax.nn.logsumexp(scores, axis=-1, keepdims=True)

  return MetaLearner(init=init, adapt=adapt, predict=predict,
                     loss=query_loss(adapt, predict, losses.cross_entropy),
                     validate=_validator(num_ways, "matching_net"))


def nearest_neighbour(embed_fn: EmbedFn, *, num_ways: int, k: int = 1,
                      distance: str = "squared_euclidean", temperature: float = 1.0,
                      learn_temperature: bool = False) -> MetaLearner:
  """Non-parametric k-nearest-neighbour classification of the embeddings.

  The logit of class ``c`` is the mean similarity of the query to its ``k``
  nearest support examples of class ``c`` (all of them if the class has fewer),
  divided by ``temperature``; the similarity is minus the squared Euclidean
  distance or the cosine similarity. So

  * with ``k=1`` the arg-max is exactly the 1-nearest-neighbour rule and the
    logit is minus the distance to the nearest example of each class;
  * with ``k>1`` it is the local-mean k-NN rule (Mitani & Hamamoto, 2006): the
    class whose ``k`` nearest examples are closest on average. This is not the
    majority vote among the ``k`` nearest examples overall: vote counts are
    piecewise constant (zero gradient) and tie often, while these logits are
    differentiable almost everywhere (through the selected neighbours), so the
    embedding can be trained with the cross-entropy as for :func:`protonet`.
    With ``k`` at least the number of shots, every class uses all its examples
    and the logit is the mean similarity to the class (for squared Euclidean
    distance, minus the prototype distance up to a per-class constant).

  ``temperature`` changes the loss, not the predictions (no effect on accuracy).

  Args:
    embed_fn: ``embed_fn(params, inputs [n, ...]) -> embeddings [n, d]``.
    num_ways: classes per episode, a static int >= 2.
    k: neighbours per class, a static int >= 1.
    distance: ``"squared_euclidean"`` or ``"cosine"``.
    temperature: divides the logits (> 0); the initial value when learned.
    learn_temperature: learn ``log(temperature)`` as ``meta_params["log_temperature"]``.

  Returns:
    A :class:`~metalax.meta.MetaLearner` with meta-parameters ``{"params":
    params}`` (plus ``"log_temperature"``), task parameters ``{"params",
    "support_embeddings" [n_support, d], "support_one_hot" [n_support,
    num_ways], "temperature"}``, logits ``[n, num_ways]`` and the cross-entropy
    query loss.

  Raises:
    ValueError: as :func:`protonet`, or if ``k`` is not an int >= 1.

  Example:
    >>> learner = metalax.meta.nearest_neighbour(embed_fn, num_ways=5, k=1)
    >>> accuracy = metalax.meta.evaluate(learner)(learner.init(params), episodes)["accuracy"]

  References:
    Cover & Hart, Nearest Neighbor Pattern Classification, IEEE Trans.
    Information Theory, 1967; Mitani & Hamamoto, A local mean-based
    nonparametric classifier, Pattern Recognition Letters, 2006.
  """
  num_ways = _check_num_ways(num_ways)
  _check_distance(distance)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k (neighbours per class) must be a static int >= 1, got {k!r}.")
  k = int(k)
  init, get_temperature = _temperature(temperature, learn_temperature)

  def adapt(meta_params: MetaParams, support: Batch, key: jax.Array | None = None) -> TaskParams:
    params = meta_params["params"]
    embeddings, one_hot = _embed_support(embed_fn, params, support, num_ways, "nearest_neighbour", key)
    return {"params": params, "support_embeddings": embeddings, "support_one_hot": one_hot,
            "temperature": get_temperature(meta_params)}

  def predict(task_params: TaskParams, inputs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    embeddings = _embed(embed_fn, task_params["params"], inputs, "nearest_neighbour", key)
    support_embeddings = task_params["support_embeddings"]
    _check_dim(embeddings, support_embeddings, "nearest_neighbour")
    similarity = _similarity(embeddings, support_embeddings, distance)    # [n, n_support]
    in_class = task_params["support_one_hot"].T[None] > 0                  # [1, num_ways, n_support]
    masked = jnp.where(in_class, similarity[:, None, :], -jnp.inf)         # [n, num_ways, n_support]
    nearest = jax.lax.top_k(masked, min(k, support_embeddings.shape[0]))[0]
    found = jnp.isfinite(nearest)
    count = jnp.sum(found, axis=-1)
    mean = jnp.sum(jnp.where(found, nearest, 0.0), axis=-1) / jnp.maximum(count, 1)
    return jnp.where(count > 0, mean, -jnp.inf) / task_params["temperature"]

  return MetaLearner(init=init, adapt=adapt, predict=predict,
                     loss=query_loss(adapt, predict, losses.cross_entropy),
                     validate=_validator(num_ways, "nearest_neighbour"))


def r2d2(embed_fn: EmbedFn, *, num_ways: int, reg: float = 50.0, scale: float = 10.0,
         learn_scale: bool = True) -> MetaLearner:
  """R2-D2: a ridge-regression head solved in closed form on every support set.

  With ``n`` support embeddings ``Z [n, d]``, ``X = [Z, 1] / sqrt(n)`` (a
  constant feature for the regression's intercept) and one-hot targets
  ``Y = onehot(labels) / sqrt(n)``, ``adapt`` solves

      W = argmin ||X W - Y||^2 + reg ||W||^2 = X^T (X X^T + reg I_n)^{-1} Y,

  the Woodbury (dual) form, an ``n x n`` solve, when ``n <= d + 1``, and the
  primal ``(X^T X + reg I_{d+1})^{-1} X^T Y`` otherwise; both are
  differentiated through (``jax.scipy.linalg.solve`` with a positive definite
  matrix). Equivalently ``(Z1^T Z1 + n reg I) W = Z1^T onehot`` with ``Z1 =
  [Z, 1]``: the ``1 / sqrt(n)`` scaling of the official implementation makes
  ``reg`` the weight of the penalty against the *mean* squared error, whatever
  the number of shots. ``predict`` returns ``scale * ([Z_q, 1] W) + bias``:
  regression outputs are not calibrated for a softmax, so the paper learns the
  scale ``alpha`` and bias ``beta`` (a bias shared by all classes leaves the
  softmax and its cross-entropy unchanged, so its gradient is zero; it is kept
  as in the paper).

  Defaults: the official code (``bertinetto/r2d2``) fixes ``lambda = 50``
  (``learn_lambda: False``) and initialises ``beta`` to 0 and ``alpha`` to 10
  for Omniglot and to 1e-4 for miniImageNet and CIFAR-FS (tuned to its wide
  backbone); MetaOptNet's R2-D2 head also uses ``lambda = 50``, with a learned
  scale initialised to 1. Here ``reg=50`` and ``scale=10``: the ridge outputs
  approximate one-hot targets (values around ``[0, 1]``, smaller when ``reg``
  dominates), so a scale near 10 gives a usable softmax from the first step.

  Args:
    embed_fn: ``embed_fn(params, inputs [n, ...]) -> embeddings [n, d]``.
    num_ways: classes per episode, a static int >= 2.
    reg: the ridge penalty ``lambda`` (> 0), fixed.
    scale: the logits' scale ``alpha`` (> 0): its initial value when
      ``learn_scale``, else fixed (with no bias).
    learn_scale: learn ``alpha`` and ``beta`` as ``meta_params["scale"]`` and
      ``meta_params["bias"]`` (scalars, initialised to ``scale`` and 0).

  Returns:
    A :class:`~metalax.meta.MetaLearner` with meta-parameters ``{"params":
    params, "scale", "bias"}`` (``{"params": params}`` when not
    ``learn_scale``), task parameters ``{"params", "ridge_weights" [d + 1,
    num_ways] (last row: intercepts), "scale", "bias"}``, logits ``[n,
    num_ways]`` and the cross-entropy query loss.

  Raises:
    ValueError: as :func:`protonet`, or if ``reg`` or ``scale`` is not positive.

  Example:
    >>> learner = metalax.meta.r2d2(embed_fn, num_ways=5)
    >>> meta_params = learner.init(params)   # {"params", "scale", "bias"}
    >>> step = jax.jit(metalax.meta.train_step(learner, optax.adam(5e-3)))

  References:
    Bertinetto, Henriques, Torr & Vedaldi, Meta-learning with differentiable
    closed-form solvers, ICLR 2019.
  """
  num_ways = _check_num_ways(num_ways)
  check_positive("reg", reg)
  check_positive("scale", scale)

  def init(params: Params) -> MetaParams:
    if not learn_scale:
      return {"params": params}
    return {"params": params, "scale": jnp.asarray(scale, jnp.float32),
            "bias": jnp.zeros((), jnp.float32)}

  def adapt(meta_params: MetaParams, support: Batch, key: jax.Array | None = None) -> TaskParams:
    params = meta_params["params"]
    embeddings, one_hot = _embed_support(embed_fn, params, support, num_ways, "r2d2", key)
    n, d = embeddings.shape
    inputs = _with_ones(embeddings) / np.sqrt(n)
    targets = one_hot / np.sqrt(n)
    if n <= d + 1:
      gram = inputs @ inputs.T + reg * jnp.eye(n, dtype=inputs.dtype)
      weights = inputs.T @ jax.scipy.linalg.solve(gram, targets, assume_a="pos")
    else:
      gram = inputs.T @ inputs + reg * jnp.eye(d + 1, dtype=inputs.dtype)
      weights = jax.scipy.linalg.solve(gram, inputs.T @ targets, assume_a="pos")
    if learn_scale:
      alpha, beta = meta_params["scale"], meta_params["bias"]
    else:
      alpha, beta = jnp.asarray(scale, inputs.dtype), jnp.zeros((), inputs.dtype)
    return {"params": params, "ridge_weights": weights, "scale": alpha, "bias": beta}

  def predict(task_params: TaskParams, inputs: jax.Array, key: jax.Array | None = None) -> jax.Array:
    embeddings = _embed(embed_fn, task_params["params"], inputs, "r2d2", key)
    weights = task_params["ridge_weights"]
    if embeddings.shape[1] + 1 != weights.shape[0]:
      raise ValueError(
          f"r2d2: the query embeddings have dimension {embeddings.shape[1]}, but the ridge "
          f"weights were fitted on dimension {weights.shape[0] - 1}.")
    return task_params["scale"] * (_with_ones(embeddings) @ weights) + task_params["bias"]

  return MetaLearner(init=init, adapt=adapt, predict=predict,
                     loss=query_loss(adapt, predict, losses.cross_entropy),
                     validate=_validator(num_ways, "r2d2"))


# Shared pieces (also used by metalax.meta.blackbox).


def _check_num_ways(num_ways: Any) -> int:
  if isinstance(num_ways, bool) or not isinstance(num_ways, (int, np.integer)) or num_ways < 2:
    raise ValueError(f"num_ways must be a static int >= 2, got {num_ways!r}.")
  return int(num_ways)


def _validator(num_ways: int, who: str):
  """``validate(episodes [B])``: labels in ``[0, num_ways)`` and all ``num_ways`` classes in every support set."""

  def validate(episodes) -> None:
    for name in ("support", "query"):
      labels = getattr(episodes, name).labels
      if labels.ndim != 2 or not is_classification(labels) or not labels.size:
        return   # the shapes are checked (and reported) when tracing
      _check_label_range(np.asarray(labels), num_ways, who, name)
    _check_all_classes(np.asarray(episodes.support.labels), num_ways, who)

  return validate


def _check_label_range(labels: np.ndarray, num_ways: int, who: str, name: str) -> None:
  if labels.min() < 0 or labels.max() >= num_ways:
    raise ValueError(
        f"{who}(num_ways={num_ways}): {name} labels must lie in [0, {num_ways}), got labels "
        f"from {labels.min()} to {labels.max()}.")


def _check_all_classes(support_labels: np.ndarray, num_ways: int, who: str) -> None:
  """Every row of ``support_labels [B, n]`` holds all ``num_ways`` classes."""
  for index, labels in enumerate(support_labels):
    present = np.unique(labels)
    if len(present) != num_ways:
      raise ValueError(
          f"{who}(num_ways={num_ways}): the support set of episode {index} has "
          f"{len(present)} classes {present.tolist()}; every support set needs examples of all "
          f"{num_ways} classes (a {len(present)}-way episode needs num_ways={len(present)}).")


def _check_distance(distance: Any) -> None:
  if distance not in DISTANCES:
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}.")


def _temperature(temperature: float, learn: bool):
  """``(init, get)``: the meta-parameters' initialiser and the temperature they hold."""
  check_positive("temperature", temperature)

  def init(params: Params) -> MetaParams:
    if not learn:
      return {"params": params}
    return {"params": params, "log_temperature": jnp.asarray(np.log(temperature), jnp.float32)}

  def get(meta_params: MetaParams) -> jax.Array:
    if learn:
      return jnp.exp(meta_params["log_temperature"])
    return jnp.asarray(temperature, jnp.float32)

  return init, get


def _embed(embed_fn: EmbedFn, params: Params, inputs: jax.Array, who: str,
           key: jax.Array | None = None) -> jax.Array:
  embeddings = apply_model(embed_fn, params, inputs, key)
  if getattr(embeddings, "ndim", None) != 2 or embeddings.shape[0] != inputs.shape[0]:
    raise ValueError(
        f"{who}: embed_fn must map inputs [n, ...] to embeddings [n, d]; inputs of shape "
        f"{tuple(inputs.shape)} gave {getattr(embeddings, 'shape', type(embeddings).__name__)}.")
  return embeddings


def _embed_support(embed_fn: EmbedFn, params: Params, support: Batch, num_ways: int,
                   who: str, key: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Support embeddings ``[n, d]`` and one-hot labels ``[n, num_ways]`` (embedding dtype)."""
  labels = support.labels
  if labels.ndim != 1 or not is_classification(labels):
    raise ValueError(
        f"{who}: support labels must be [n] int class indices in [0, {num_ways}), got shape "
        f"{tuple(labels.shape)} and dtype {labels.dtype}.")
  if labels.size and not isinstance(labels, jax.core.Tracer):  # concrete: the values can be checked
    _check_label_range(np.asarray(labels), num_ways, who, "support")
    _check_all_classes(np.asarray(labels)[None], num_ways, who)
  embeddings = _embed(embed_fn, params, support.inputs, who, key)
  return embeddings, jax.nn.one_hot(labels, num_ways, dtype=embeddings.dtype)


def _check_dim(embeddings: jax.Array, reference: jax.Array, who: str) -> None:
  if embeddings.shape[1] != reference.shape[1]:
    raise ValueError(
        f"{who}: the query embeddings have dimension {embeddings.shape[1]}, but the support "
        f"embeddings have dimension {reference.shape[1]}.")


def _unit(x: jax.Array, eps: float = 1e-8) -> jax.Array:
  """Rows scaled to unit norm (rows shorter than ``eps`` are divided by ``eps``)."""
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _similarity(queries: jax.Array, keys: jax.Array, distance: str) -> jax.Array:
  """``[n, m]``: minus the squared Euclidean distance, or the cosine similarity."""
  if distance == "cosine":
    return _unit(queries) @ _unit(keys).T
  squared = (jnp.sum(queries * queries, axis=-1)[:, None] - 2 * queries @ keys.T
             + jnp.sum(keys * keys, axis=-1)[None, :])
  return -squared


def _masked_logsumexp(x: jax.Array, mask: jax.Array) -> jax.Array:
  """``logsumexp`` over the last axis of the entries where ``mask``; ``-inf`` if none.

  The ``where`` keeps gradients finite when a row is fully masked.
  """
  masked = jnp.where(mask, x, -jnp.inf)
  top = jax.lax.stop_gradient(jnp.max(masked, axis=-1, keepdims=True))
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  total = jnp.sum(jnp.where(mask, jnp.exp(masked - top), 0.0), axis=-1)
  safe = jnp.where(total > 0, total, 1.0)
  return jnp.where(total > 0, jnp.log(safe) + top[..., 0], -jnp.inf)


def _with_ones(x: jax.Array) -> jax.Array:
  return jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=-1)
