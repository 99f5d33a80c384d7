r"""Metric-learning and contrastive losses on embeddings, and collapse diagnostics.

Every loss takes plain arrays and returns per-example values (per anchor, per
pair or per triplet, as each docstring says); the caller reduces. Embeddings
are ``[n, d]`` float arrays; labels are ``[n]`` ints (any values: only
equality matters). Distances are one of :data:`DISTANCES`:

* ``"euclidean"``: :math:`\|x - y\|_2` (its gradient at ``x == y`` is taken as
  zero, never NaN);
* ``"squared_euclidean"``: :math:`\|x - y\|_2^2`;
* ``"cosine"``: :math:`1 - \cos(x, y)`, in ``[0, 2]``.

Normalisation: the losses with a ``distance`` argument (the triplet and pair
losses) take the embeddings as given: pass ``l2_normalize(embeddings)`` for
losses on the unit sphere. The softmax losses :func:`info_nce`,
:func:`nt_xent` and :func:`supcon_loss` L2-normalise by default
(``normalize=True``, cosine similarities, as their papers); pass
``normalize=False`` for raw dot products.

In-batch losses that average over a variable number of terms per anchor
(:func:`triplet_loss`) return per-anchor *shares* of the batch loss: their
mean is the mean over the batch's selected terms, so ``jnp.mean`` gives the
published reduction whatever the number of positives of each anchor.

Moving from pytorch-metric-learning (PML, 2.x; defaults read from its source
``src/pytorch_metric_learning/losses/*.py``). PML losses L2-normalise the
embeddings first (its ``LpDistance(normalize_embeddings=True)`` and
``CosineSimilarity`` defaults) and reduce with a *reducer*: ``AvgNonZeroReducer``
(the mean over the terms that are > 0) for ``TripletMarginLoss``,
``ContrastiveLoss`` and ``SupConLoss``, ``MeanReducer`` for ``NTXentLoss``.
With ``z = l2_normalize(embeddings)``:

=================================================  ===========================================================
PML                                                metalax
=================================================  ===========================================================
``TripletMarginLoss()`` (margin 0.05, all          ``jnp.mean(triplet_loss(z, labels, margin=0.05))``
triplets, Euclidean, AvgNonZero)                   (or ``mean_nonzero(*all_triplet_losses(z, labels, margin=0.05))``)
``ContrastiveLoss()`` (pos_margin 0, neg_margin    ``l, pos, neg = all_pair_losses(z, labels, power=1)``;
1, Euclidean, AvgNonZero on positive and           ``mean_nonzero(l, pos) + mean_nonzero(l, neg)``
negative pairs separately, summed)
``NTXentLoss()`` (temperature 0.07, cosine,        ``jnp.mean(nt_xent(z, temperature=0.07))`` for 2N views with
one term per positive pair, mean)                  labels ``[0..N-1, 0..N-1]`` (one positive per anchor)
``SupConLoss()`` (temperature 0.1, cosine,         ``mean_nonzero(supcon_loss(z, labels, temperature=0.1))``
AvgNonZero over anchors)
=================================================  ===========================================================

metalax's own defaults follow the papers instead: margin 0.2 for the triplet
loss (FaceNet), ``power=2`` (squared hinge) for the pair loss (Hadsell et al.),
temperature 0.5 for NT-Xent (SimCLR's CIFAR-10 setting) and 0.1 for SupCon.
The triplet loss mines all triplets and averages over those with a positive
loss by default (PML's convention, Hermans et al.'s "BA≠0"). PML's miners
(``BatchHardMiner``, ``TripletMarginMiner``, ``MultiSimilarityMiner``) are in
:mod:`metalax.losses.miners`, with their own table.
"""

import jax
import jax.numpy as jnp

DISTANCES = ("euclidean", "squared_euclidean", "cosine")
"""Distances accepted by the losses of this module."""

MININGS = ("all", "batch_hard", "semi_hard")
"""Triplet mining strategies accepted by :func:`triplet_loss`."""

_EPS = 1e-12


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """``x / max(||x||, sqrt(eps))`` along ``axis`` (zero vectors stay zero, gradients stay finite)."""
  squared = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(squared, eps))


def _check_embeddings(embeddings: jax.Array, name: str = "embeddings") -> None:
  if getattr(embeddings, "ndim", None) != 2:
    raise ValueError(f"{name} must have shape [n, d], got {getattr(embeddings, 'shape', None)}.")


def _check_labels(embeddings: jax.Array, labels: jax.Array) -> None:
  _check_embeddings(embeddings)
  if getattr(labels, "shape", None) != embeddings.shape[:1]:
    raise ValueError(f"labels must have shape [n] = [{embeddings.shape[0]}] to match embeddings "
                     f"{tuple(embeddings.shape)}, got {getattr(labels, 'shape', None)}.")


def _check_distance(distance: str) -> None:
  if distance not in DISTANCES:
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}.")


def _safe_sqrt(x: jax.Array) -> jax.Array:
  """``sqrt(x)`` for ``x >= 0`` with a zero (not infinite) gradient at 0."""
  positive = x > _EPS
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def pairwise_distances(x: jax.Array, y: jax.Array | None = None, distance: str = "euclidean") -> jax.Array:
  """All distances between the rows of ``x`` and ``y``.

  Args:
    x: ``[n, d]``.
    y: ``[m, d]``; ``None`` for ``x`` itself (the diagonal is then exactly 0).
    distance: one of :data:`DISTANCES`.

  Returns:
    ``[n, m]`` distances.

  Raises:
    ValueError: for an unknown distance or inputs that are not ``[n, d]`` and ``[m, d]``.
  """
  _check_distance(distance)
  _check_embeddings(x, "x")
  same = y is None
  y = x if same else y
  _check_embeddings(y, "y")
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"x and y must have the same dimension d, got {tuple(x.shape)} and {tuple(y.shape)}.")
  if distance == "cosine":
    result = 1.0 - l2_normalize(x) @ l2_normalize(y).T
  else:
    squared = (jnp.sum(jnp.square(x), -1)[:, None] + jnp.sum(jnp.square(y), -1)[None, :] - 2.0 * x @ y.T)
    squared = jnp.maximum(squared, 0.0)
    result = squared if distance == "squared_euclidean" else _safe_sqrt(squared)
  if same:
    result = jnp.where(jnp.eye(x.shape[0], dtype=bool), 0.0, result)
  return result


def _rowwise_distance(x: jax.Array, y: jax.Array, distance: str) -> jax.Array:
  if distance == "cosine":
    return 1.0 - jnp.sum(l2_normalize(x) * l2_normalize(y), axis=-1)
  squared = jnp.sum(jnp.square(x - y), axis=-1)
  return squared if distance == "squared_euclidean" else _safe_sqrt(squared)


def mean_nonzero(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """PML's ``AvgNonZeroReducer``: the mean of the entries > 0 (within ``mask``); 0 if there are none.

  Args:
    values: any shape.
    mask: optional boolean array broadcastable to ``values``; entries outside it are ignored.

  Returns:
    A scalar.
  """
  keep = values > 0
  if mask is not None:
    keep = keep & mask
  count = jnp.sum(keep)
  return jnp.sum(jnp.where(keep, values, 0.0)) / jnp.maximum(count, 1)


def triplet_margin_loss(anchors: jax.Array, positives: jax.Array, negatives: jax.Array, *,
                        margin: float = 0.2, distance: str = "euclidean") -> jax.Array:
  r"""Triplet loss of explicit triplets: :math:`\max(0, d(a, p) - d(a, n) + \text{margin})`.

  Args:
    anchors: ``[n, d]``.
    positives: ``[n, d]``, same class as the anchors.
    negatives: ``[n, d]``, another class.
    margin: the required gap between negative and positive distances.
    distance: one of :data:`DISTANCES`.

  Returns:
    Per-triplet losses ``[n]``.

  Raises:
    ValueError: if the shapes differ or are not ``[n, d]``, or the distance is unknown.

  References:
    Schroff, Kalenichenko & Philbin, FaceNet: A Unified Embedding for Face
    Recognition and Clustering, CVPR 2015.
  """
  _check_distance(distance)
  for name, value in (("anchors", anchors), ("positives", positives), ("negatives", negatives)):
    _check_embeddings(value, name)
  if not anchors.shape == positives.shape == negatives.shape:
    raise ValueError(f"anchors, positives and negatives must have the same shape [n, d], got "
                     f"{tuple(anchors.shape)}, {tuple(positives.shape)} and {tuple(negatives.shape)}.")
  return jax.nn.relu(_rowwise_distance(anchors, positives, distance)
                     - _rowwise_distance(anchors, negatives, distance) + margin)


def _label_masks(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``positive [n, n]`` (same label, not the same row) and ``negative [n, n]`` (other label)."""
  same = labels[:, None] == labels[None, :]
  return same & ~jnp.eye(labels.shape[0], dtype=bool), ~same


def all_triplet_losses(embeddings: jax.Array, labels: jax.Array, *, margin: float = 0.2,
                       distance: str = "euclidean") -> tuple[jax.Array, jax.Array]:
  """The triplet loss of every ``(anchor, positive, negative)`` of a batch, and which triplets are valid.

  Args:
    embeddings: ``[n, d]``.
    labels: ``[n]``.
    margin: as in :func:`triplet_margin_loss`.
    distance: one of :data:`DISTANCES`.

  Returns:
    ``(losses [n, n, n], valid [n, n, n])``: ``losses[a, p, m] = max(0, d(a, p)
    - d(a, m) + margin)``, and ``valid`` is true where ``p != a`` has ``a``'s
    label and ``m`` another label. ``mean_nonzero(losses, valid)`` is PML's
    ``TripletMarginLoss`` with ``AvgNonZeroReducer``. The output is O(n^3):
    for large batches use :func:`triplet_loss`, O(n^2) in memory.

  Raises:
    ValueError: for shapes that are not ``[n, d]`` and ``[n]``, or an unknown distance.
  """
  _check_labels(embeddings, labels)
  distances = pairwise_distances(embeddings, distance=distance)
  positive, negative = _label_masks(labels)
  losses = jax.nn.relu(distances[:, :, None] - distances[:, None, :] + margin)
  valid = positive[:, :, None] & negative[:, None, :]
  return jnp.where(valid, losses, 0.0), valid


def _check_positive(value, name: str) -> None:
  """Raise for a concrete ``value <= 0``; a traced value (e.g. a learnable temperature under ``jit``) passes."""
  try:
    concrete = float(value)
  except TypeError:  # a tracer (jax.errors.ConcretizationTypeError is a TypeError) or a non-scalar array
    return
  if not concrete > 0:
    raise ValueError(f"{name} must be > 0, got {value}.")


def _sorted_negatives(distances: jax.Array, negative: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Each anchor's negative distances ascending, their prefix sums and their count.

  Returns ``(ordered [n, n], prefix [n, n + 1], count [n])``: ``ordered[a]``
  holds ``a``'s ``count[a]`` negative distances ascending, then ``+inf``;
  ``prefix[a, k]`` is the sum of the first ``k`` of them. Everything a triplet
  loss needs from the negatives of an anchor, in O(n^2) memory.
  """
  ordered = jnp.sort(jnp.where(negative, distances, jnp.inf), axis=1)
  finite = jnp.where(jnp.isfinite(ordered), ordered, 0.0)
  prefix = jnp.concatenate([jnp.zeros_like(finite[:, :1]), jnp.cumsum(finite, axis=1)], axis=1)
  return ordered, prefix, jnp.sum(negative, axis=1)


def _rank(ordered: jax.Array, values: jax.Array, side: str) -> jax.Array:
  """``searchsorted`` of ``values[a, :]`` in the sorted row ``ordered[a, :]``, for every row ``a``."""
  return jax.vmap(lambda row, v: jnp.searchsorted(row, v, side=side))(ordered, values)


def triplet_loss(embeddings: jax.Array, labels: jax.Array, *, margin: float = 0.2, distance: str = "euclidean",
                 mining: str = "all", nonzero: bool = True,
                 margin_range: tuple[float, float] | None = None) -> jax.Array:
  r"""Triplet loss with the triplets mined from the labels of a batch, as per-anchor shares of the batch loss.

  With ``d`` the distance matrix, ``P(a)`` the other examples of ``a``'s class,
  ``N(a)`` the examples of other classes and :math:`\ell_{apn} = [d_{ap} -
  d_{an} + m]_+`, ``mining`` selects the triplets:

  * ``"all"``: every ``(a, p, n)`` with ``p in P(a)``, ``n in N(a)`` (batch-all;
    Weinberger & Saul, Hermans et al.), optionally only those whose margin
    :math:`d_{an} - d_{ap}` lies in ``margin_range = (low, high]`` (PML's
    ``TripletMarginMiner``, see :func:`metalax.losses.miners.triplet_margin_miner`);
  * ``"batch_hard"``: one per anchor, :math:`[\max_{p} d_{ap} - \min_{n} d_{an}
    + m]_+`, the hardest positive and the hardest negative (Hermans et al.
    2017, and PML's ``BatchHardMiner``);
  * ``"semi_hard"``: one per ``(a, p)``, the closest negative farther than ``p``
    (:math:`d_{an} > d_{ap}`), or the farthest negative if none is (FaceNet's
    rule, as in TensorFlow Addons' ``TripletSemiHardLoss``).

  The batch loss is the mean of the selected triplets' losses over the
  selected triplets with a positive loss (``nonzero=True``: PML's
  ``AvgNonZeroReducer``, Hermans et al.'s "BA≠0"; a mean that does not fade as
  most triplets become easy) or over all selected triplets (``nonzero=False``:
  the batch-all mean; TensorFlow Addons' reduction with ``"semi_hard"``;
  Hermans et al.'s with ``"batch_hard"``). Anchor ``a`` returns its share
  :math:`n \sum_{\text{its triplets}} \ell_{apn} / T` (``T`` the count above,
  at least 1), so that ``jnp.mean`` of the result is that batch loss exactly,
  whatever the number of positives of each anchor. Anchors with no positive
  or no negative select no triplet and return 0. Memory is O(n^2) for every
  mining (sorted negative distances and their prefix sums; no ``[n, n, n]``
  tensor), values and gradients those of the explicit triplets.

  Args:
    embeddings: ``[n, d]``.
    labels: ``[n]``.
    margin: the required gap between negative and positive distances.
    distance: one of :data:`DISTANCES`.
    mining: one of :data:`MININGS`.
    nonzero: average over the selected triplets with a positive loss only.
    margin_range: ``(low, high)``; with ``mining="all"``, keep only the
      triplets with ``low < d_an - d_ap <= high``. ``None`` keeps all.

  Returns:
    Per-anchor shares ``[n]``; ``jnp.mean`` of them is the batch loss.

  Raises:
    ValueError: for an unknown mining or distance, shapes that are not ``[n, d]``
      and ``[n]``, or a ``margin_range`` with another mining than ``"all"``.

  Example:
    >>> loss = jnp.mean(triplet_loss(l2_normalize(embeddings), labels))

  References:
    Schroff et al., FaceNet, CVPR 2015 (semi-hard negatives).
    Hermans, Beyer & Leibe, In Defense of the Triplet Loss for Person
    Re-Identification, arXiv:1703.07737, 2017 (batch-hard, batch-all, BA≠0).
  """
  if mining not in MININGS:
    raise ValueError(f"mining must be one of {MININGS}, got {mining!r}.")
  if margin_range is not None and (mining != "all" or len(margin_range) != 2):
    raise ValueError(f"margin_range must be a pair (low, high) and needs mining='all', got margin_range="
                     f"{margin_range!r} with mining={mining!r}.")
  _check_distance(distance)
  _check_labels(embeddings, labels)
  n = embeddings.shape[0]
  distances = pairwise_distances(embeddings, distance=distance)
  positive, negative = _label_masks(labels)
  has_both = jnp.any(positive, axis=1) & jnp.any(negative, axis=1)
  if mining == "batch_hard":
    hardest_positive = jnp.max(jnp.where(positive, distances, -jnp.inf), axis=1)
    hardest_negative = jnp.min(jnp.where(negative, distances, jnp.inf), axis=1)
    losses = jnp.where(has_both, jax.nn.relu(hardest_positive - hardest_negative + margin), 0.0)
    count = jnp.sum(losses > 0) if nonzero else jnp.sum(has_both)
    return n * losses / jnp.maximum(count, 1)
  ordered, prefix, num_negatives = _sorted_negatives(distances, negative)
  if mining == "semi_hard":
    first_farther = _rank(ordered, distances, "right")                        # [a, p]: first d_an > d_ap
    farthest = jnp.maximum(num_negatives - 1, 0)[:, None]
    index = jnp.where(first_farther < num_negatives[:, None], first_farther, farthest)
    chosen = jnp.take_along_axis(ordered, jnp.minimum(index, n - 1), axis=1)
    chosen = jnp.where(jnp.isfinite(chosen), chosen, 0.0)
    selected = positive & has_both[:, None]
    pair_losses = jnp.where(selected, jax.nn.relu(distances - chosen + margin), 0.0)
    count = jnp.sum(pair_losses > 0) if nonzero else jnp.sum(selected)
    return n * jnp.sum(pair_losses, axis=1) / jnp.maximum(count, 1)
  # "all": for each (a, p), the negatives with d_an in (d_ap + low, d_ap + high] and a positive loss
  # (d_an < d_ap + margin) are a contiguous run of a's sorted negatives.
  low, high = (-jnp.inf, jnp.inf) if margin_range is None else margin_range
  last = num_negatives[:, None]
  lower = jnp.zeros_like(distances, dtype=jnp.int32) if low == -jnp.inf else _rank(ordered, distances + low, "right")
  window = last if high == jnp.inf else jnp.minimum(_rank(ordered, distances + high, "right"), last)
  upper = jnp.minimum(_rank(ordered, distances + margin, "left"), window)
  lower = jnp.minimum(lower, window)
  active = jnp.maximum(upper - lower, 0)
  negative_sum = (jnp.take_along_axis(prefix, jnp.maximum(upper, lower), axis=1)
                  - jnp.take_along_axis(prefix, lower, axis=1))
  pair_losses = jnp.where(positive, active * (distances + margin) - negative_sum, 0.0)
  count = jnp.sum(jnp.where(positive, active if nonzero else window - lower, 0))
  return n * jnp.sum(pair_losses, axis=1) / jnp.maximum(count, 1)


def pair_contrastive_loss(x1: jax.Array, x2: jax.Array, same: jax.Array, *, pos_margin: float = 0.0,
                          neg_margin: float = 1.0, distance: str = "euclidean", power: float = 2) -> jax.Array:
  r"""Contrastive loss of explicit pairs (Hadsell, Chopra & LeCun 2006).

  .. math::
    \ell = \begin{cases} [d - m_+]_+^{p} & \text{same class} \\
                         [m_- - d]_+^{p} & \text{different classes.} \end{cases}

  With ``pos_margin=0`` and ``power=2`` this is Hadsell et al.'s loss without
  its factor 1/2; PML's ``ContrastiveLoss`` uses ``power=1``.

  Args:
    x1: ``[n, d]``.
    x2: ``[n, d]``.
    same: ``[n]`` bool, true where the pair shares a class.
    pos_margin: positives closer than this cost nothing.
    neg_margin: negatives farther than this cost nothing.
    distance: one of :data:`DISTANCES`.
    power: exponent ``p`` of the hinge.

  Returns:
    Per-pair losses ``[n]``.

  Raises:
    ValueError: for mismatched shapes or an unknown distance.

  References:
    Hadsell, Chopra & LeCun, Dimensionality Reduction by Learning an Invariant Mapping, CVPR 2006.
  """
  _check_distance(distance)
  _check_embeddings(x1, "x1")
  if x1.shape != getattr(x2, "shape", None) or getattr(same, "shape", None) != x1.shape[:1]:
    raise ValueError(f"x1, x2 must be [n, d] and same [n], got {tuple(x1.shape)}, "
                     f"{getattr(x2, 'shape', None)} and {getattr(same, 'shape', None)}.")
  d = _rowwise_distance(x1, x2, distance)
  return jnp.where(same, jax.nn.relu(d - pos_margin) ** power, jax.nn.relu(neg_margin - d) ** power)


def all_pair_losses(embeddings: jax.Array, labels: jax.Array, *, pos_margin: float = 0.0, neg_margin: float = 1.0,
                    distance: str = "euclidean", power: float = 2) -> tuple[jax.Array, jax.Array, jax.Array]:
  """:func:`pair_contrastive_loss` of every pair of a batch.

  Args:
    embeddings: ``[n, d]``.
    labels: ``[n]``.
    pos_margin, neg_margin, distance, power: as in :func:`pair_contrastive_loss`.

  Returns:
    ``(losses [n, n], positive [n, n], negative [n, n])``: the loss of pair
    ``(i, j)`` (0 on the diagonal), and the masks of positive pairs (same
    label, ``i != j``) and negative pairs. ``mean_nonzero(losses, positive) +
    mean_nonzero(losses, negative)`` with ``power=1`` on normalised embeddings
    is PML's ``ContrastiveLoss()``.

  Raises:
    ValueError: for shapes that are not ``[n, d]`` and ``[n]``, or an unknown distance.
  """
  _check_labels(embeddings, labels)
  d = pairwise_distances(embeddings, distance=distance)
  positive, negative = _label_masks(labels)
  losses = jnp.where(positive, jax.nn.relu(d - pos_margin) ** power,
                     jnp.where(negative, jax.nn.relu(neg_margin - d) ** power, 0.0))
  return losses, positive, negative


def contrastive_loss(embeddings: jax.Array, labels: jax.Array, *, pos_margin: float = 0.0, neg_margin: float = 1.0,
                     distance: str = "euclidean", power: float = 2) -> jax.Array:
  """In-batch pair contrastive loss per anchor: mean over its positive pairs plus mean over its negative pairs.

  Args:
    embeddings: ``[n, d]``.
    labels: ``[n]``.
    pos_margin, neg_margin, distance, power: as in :func:`pair_contrastive_loss`.

  Returns:
    Per-anchor losses ``[n]`` (a mean over no pairs counts 0).

  Raises:
    ValueError: as :func:`all_pair_losses`.
  """
  losses, positive, negative = all_pair_losses(embeddings, labels, pos_margin=pos_margin, neg_margin=neg_margin,
                                               distance=distance, power=power)
  mean = lambda mask: jnp.sum(jnp.where(mask, losses, 0.0), 1) / jnp.maximum(jnp.sum(mask, 1), 1)
  return mean(positive) + mean(negative)


def _logits(queries: jax.Array, keys: jax.Array, temperature: float, normalize: bool) -> jax.Array:
  _check_positive(temperature, "temperature")
  if normalize:
    queries, keys = l2_normalize(queries), l2_normalize(keys)
  return queries @ keys.T / temperature


def info_nce(queries: jax.Array, positives: jax.Array, negatives: jax.Array, *, temperature: float = 0.1,
             normalize: bool = True) -> jax.Array:
  r"""InfoNCE with explicit positives and negatives.

  .. math::
    \ell_i = -\log \frac{e^{s(q_i, k_i^+)/\tau}}{e^{s(q_i, k_i^+)/\tau} + \sum_j e^{s(q_i, k_{ij}^-)/\tau}}

  with ``s`` the dot product (of unit vectors when ``normalize``, i.e. the cosine).

  Args:
    queries: ``[n, d]``.
    positives: ``[n, d]``, one positive key per query.
    negatives: ``[n, k, d]`` (each query's own negatives) or ``[k, d]`` (shared
      by every query, as MoCo's queue).
    temperature: ``tau > 0``; may be a traced value (a learnable temperature under ``jit``), checked
      only when concrete.
    normalize: L2-normalise queries and keys first.

  Returns:
    Per-query losses ``[n]``; ``log(k + 1)`` when every similarity is equal.

  Raises:
    ValueError: for mismatched shapes or a concrete ``temperature <= 0``.

  References:
    van den Oord, Li & Vinyals, Representation Learning with Contrastive
    Predictive Coding, arXiv:1807.03748, 2018. He et al., Momentum Contrast, CVPR 2020.
  """
  _check_embeddings(queries, "queries")
  if positives.shape != queries.shape or negatives.ndim not in (2, 3) or negatives.shape[-1] != queries.shape[1] or (
      negatives.ndim == 3 and negatives.shape[0] != queries.shape[0]):
    raise ValueError(f"expected queries [n, d], positives [n, d], negatives [n, k, d] or [k, d]; got "
                     f"{tuple(queries.shape)}, {tuple(positives.shape)}, {tuple(negatives.shape)}.")
  _check_positive(temperature, "temperature")
  if normalize:
    queries, positives, negatives = l2_normalize(queries), l2_normalize(positives), l2_normalize(negatives)
  positive_logits = jnp.sum(queries * positives, -1, keepdims=True) / temperature           # [n, 1]
  if negatives.ndim == 2:
    negative_logits = queries @ negatives.T / temperature                                   # [n, k]
  else:
    negative_logits = jnp.einsum("nd,nkd->nk", queries, negatives) / temperature
  logits = jnp.concatenate([positive_logits, negative_logits], axis=1)
  return jax.nn.logsumexp(logits, axis=1) - logits[:, 0]


def nt_xent(embeddings: jax.Array, *, temperature: float = 0.5, normalize: bool = True) -> jax.Array:
  r"""SimCLR's normalised-temperature cross-entropy over ``2N`` augmented views.

  Rows ``i`` and ``i + N`` are the two views of example ``i`` (the
  concatenation ``[z_a; z_b]`` of two augmented batches). Each of the ``2N``
  rows is an anchor whose positive is its other view and whose negatives are
  the other ``2N - 2`` rows:

  .. math::
    \ell_i = -\log \frac{e^{s_{i, i^+}/\tau}}{\sum_{j \ne i} e^{s_{ij}/\tau}}.

  Args:
    embeddings: ``[2N, d]`` projections.
    temperature: ``tau > 0``; may be a traced value (a learnable temperature under ``jit``), checked
      only when concrete.
    normalize: L2-normalise first (cosine similarities), as SimCLR.

  Returns:
    Per-view losses ``[2N]``; SimCLR's loss is their mean. It is smallest
    (``log(1 + (2N - 2) e^{-1/tau})`` with unit vectors) when the views coincide
    and all other rows are orthogonal to them.

  Raises:
    ValueError: if the number of rows is odd, the shape is not ``[2N, d]``, or a concrete
      ``temperature <= 0``.

  References:
    Chen, Kornblith, Norouzi & Hinton, A Simple Framework for Contrastive
    Learning of Visual Representations, ICML 2020.
  """
  _check_embeddings(embeddings)
  rows = embeddings.shape[0]
  if rows % 2 or rows < 2:
    raise ValueError(f"nt_xent needs 2N rows (two views of N examples), got {rows}.")
  half = rows // 2
  logits = _logits(embeddings, embeddings, temperature, normalize)
  logits = jnp.where(jnp.eye(rows, dtype=bool), -jnp.inf, logits)
  partner = (jnp.arange(rows) + half) % rows
  return jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(rows), partner]


def supcon_loss(embeddings: jax.Array, labels: jax.Array, *, temperature: float = 0.1,
                normalize: bool = True) -> jax.Array:
  r"""Supervised contrastive loss (SupCon's :math:`\mathcal{L}^{sup}_{out}`), per anchor.

  .. math::
    \ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)} \log
      \frac{e^{s_{ip}/\tau}}{\sum_{a \ne i} e^{s_{ia}/\tau}},

  where ``P(i)`` are the other rows with ``i``'s label. With labels
  ``[0..N-1, 0..N-1]`` (two views, no labels) it equals :func:`nt_xent`.

  Args:
    embeddings: ``[n, d]`` (all views stacked).
    labels: ``[n]``.
    temperature: ``tau > 0``; may be a traced value (a learnable temperature under ``jit``), checked
      only when concrete.
    normalize: L2-normalise first, as the paper.

  Returns:
    Per-anchor losses ``[n]``; 0 for anchors with no positive.

  Raises:
    ValueError: for shapes that are not ``[n, d]`` and ``[n]``, or a concrete ``temperature <= 0``.

  References:
    Khosla et al., Supervised Contrastive Learning, NeurIPS 2020.
  """
  _check_labels(embeddings, labels)
  logits = _logits(embeddings, embeddings, temperature, normalize)
  self_mask = jnp.eye(embeddings.shape[0], dtype=bool)
  log_prob = logits - jax.nn.logsumexp(jnp.where(self_mask, -jnp.inf, logits), axis=1, keepdims=True)
  positive, _ = _label_masks(labels)
  count = jnp.sum(positive, axis=1)
  return -jnp.sum(jnp.where(positive, log_prob, 0.0), axis=1) / jnp.maximum(count, 1)


def embedding_std(embeddings: jax.Array) -> jax.Array:
  """Per-dimension standard deviation of the L2-normalised embeddings (a collapse diagnostic).

  Complete collapse (every embedding the same direction) gives 0; embeddings
  spread uniformly over the sphere give about ``1 / sqrt(d)`` per dimension
  (Chen & He, Exploring Simple Siamese Representation Learning, CVPR 2021).

  Args:
    embeddings: ``[n, d]``.

  Returns:
    ``[d]``.
  """
  _check_embeddings(embeddings)
  return jnp.std(l2_normalize(embeddings), axis=0)


def effective_rank(embeddings: jax.Array, eps: float = 1e-12) -> jax.Array:
  r"""Effective rank of the centred embeddings (Roy & Vetterli 2007).

  :math:`\exp(H(p))` with :math:`p_k = \sigma_k / \sum_j \sigma_j` the
  normalised singular values of the centred ``[n, d]`` matrix: 1 when all
  embeddings lie on a line (dimensional collapse), ``min(n, d)`` when all
  singular values are equal.

  Args:
    embeddings: ``[n, d]``.
    eps: guards the logarithm of zero singular values.

  Returns:
    A scalar in ``[1, min(n, d)]``.

  References:
    Roy & Vetterli, The effective rank: a measure of effective dimensionality, EUSIPCO 2007.
  """
  _check_embeddings(embeddings)
  centred = embeddings - jnp.mean(embeddings, axis=0, keepdims=True)
  singular = jnp.linalg.svd(centred, compute_uv=False)
  p = singular / jnp.maximum(jnp.sum(singular), eps)
  entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, eps)), 0.0))
  return jnp.exp(entropy)


def collapse_metrics(embeddings: jax.Array) -> dict[str, jax.Array]:
  """``{"embedding_std": mean of embedding_std * sqrt(d), "effective_rank": ...}`` for a training log.

  ``embedding_std`` is scaled by ``sqrt(d)`` so that 1 means well spread and 0 collapsed, whatever ``d``.
  """
  std = embedding_std(embeddings)
  return {"embedding_std": jnp.mean(std) * jnp.sqrt(embeddings.shape[1]),
          "effective_rank": effective_rank(embeddings)}

