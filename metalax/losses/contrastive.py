r"""Metric-learning and contrastive losses on embeddings, and collapse diagnostics.

Every loss takes plain arrays and returns per-example values (per anchor, per
pair or per triplet, as each docstring says); the caller reduces. Embeddings
are ``[n, d]`` float arrays; labels are ``[n]`` ints (any values: only
equality matters). Distances are one of :data:`DISTANCES`:

* ``"euclidean"``: :math:`\|x - y\|_2` (its gradient at ``x == y`` is taken as
  zero, never NaN);
* ``"squared_euclidean"``: :math:`\|x - y\|_2^2`;
* ``"cosine"``: :math:`1 - \cos(x, y)`, in ``[0, 2]``.

No function normalises the embeddings unless it says so: pass
``l2_normalize(embeddings)`` for losses on the unit sphere.

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
``TripletMarginLoss()`` (margin 0.05, all          ``mean_nonzero(*all_triplet_losses(z, labels, margin=0.05))``
triplets, Euclidean, AvgNonZero)
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
PML's semi-hard *miner* keeps every triplet with ``d_ap < d_an < d_ap +
margin``; ``triplet_loss(mining="semi_hard")`` is FaceNet's rule instead (one
negative per anchor-positive pair), see :func:`triplet_loss`.
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
    ``TripletMarginLoss`` with ``AvgNonZeroReducer``.

  Raises:
    ValueError: for shapes that are not ``[n, d]`` and ``[n]``, or an unknown distance.
  """
  _check_labels(embeddings, labels)
  distances = pairwise_distances(embeddings, distance=distance)
  positive, negative = _label_masks(labels)
  losses = jax.nn.relu(distances[:, :, None] - distances[:, None, :] + margin)
  valid = positive[:, :, None] & negative[:, None, :]
  return jnp.where(valid, losses, 0.0), valid


def triplet_loss(embeddings: jax.Array, labels: jax.Array, *, margin: float = 0.2, distance: str = "euclidean",
                 mining: str = "batch_hard") -> jax.Array:
  r"""Triplet loss with the triplets mined from the labels of a batch, per anchor.

  With ``d`` the distance matrix, ``P(a)`` the other examples of ``a``'s class
  and ``N(a)`` the examples of other classes:

  * ``"all"``: the mean of :math:`[d_{ap} - d_{an} + m]_+` over all ``p in P(a)``,
    ``n in N(a)`` (Weinberger & Saul's batch-all);
  * ``"batch_hard"``: :math:`[\max_{p} d_{ap} - \min_{n} d_{an} + m]_+`, the
    hardest positive and the hardest negative (Hermans et al. 2017);
  * ``"semi_hard"``: for every ``p in P(a)`` the closest negative farther than
    ``p`` (:math:`d_{an} > d_{ap}`), or the farthest negative if none is; the
    mean over ``p`` of :math:`[d_{ap} - d_{an} + m]_+` (FaceNet's rule, as in
    TensorFlow Addons' ``TripletSemiHardLoss``).

  Anchors with no positive or no negative in the batch get loss 0.

  Args:
    embeddings: ``[n, d]``.
    labels: ``[n]``.
    margin: the required gap between negative and positive distances.
    distance: one of :data:`DISTANCES`.
    mining: one of :data:`MININGS`.

  Returns:
    Per-anchor losses ``[n]``.

  Raises:
    ValueError: for an unknown mining or distance, or shapes that are not ``[n, d]`` and ``[n]``.

  Example:
    >>> loss = jnp.mean(triplet_loss(l2_normalize(embeddings), labels, mining="semi_hard"))

  References:
    Schroff et al., FaceNet, CVPR 2015 (semi-hard negatives).
    Hermans, Beyer & Leibe, In Defense of the Triplet Loss for Person
    Re-Identification, arXiv:1703.07737, 2017 (batch-hard).
  """
  if mining not in MININGS:
    raise ValueError(f"mining must be one of {MININGS}, got {mining!r}.")
  _check_labels(embeddings, labels)
  if mining == "all":
    losses, valid = all_triplet_losses(embeddings, labels, margin=margin, distance=distance)
    count = jnp.sum(valid, axis=(1, 2))
    return jnp.sum(losses, axis=(1, 2)) / jnp.maximum(count, 1)
  distances = pairwise_distances(embeddings, distance=distance)
  positive, negative = _label_masks(labels)
  has_both = jnp.any(positive, axis=1) & jnp.any(negative, axis=1)
  if mining == "batch_hard":
    hardest_positive = jnp.max(jnp.where(positive, distances, -jnp.inf), axis=1)
    hardest_negative = jnp.min(jnp.where(negative, distances, jnp.inf), axis=1)
    losses = jax.nn.relu(hardest_positive - hardest_negative + margin)
    return jnp.where(has_both, losses, 0.0)
  # semi_hard: [a, p] -> the chosen negative distance.
  farther = negative[:, None, :] & (distances[:, None, :] > distances[:, :, None])     # [a, p, n]
  closest_farther = jnp.min(jnp.where(farther, distances[:, None, :], jnp.inf), axis=2)
  farthest = jnp.max(jnp.where(negative, distances, -jnp.inf), axis=1)[:, None]
  chosen = jnp.where(jnp.any(farther, axis=2), closest_farther, farthest)
  pair_losses = jax.nn.relu(distances - jnp.where(jnp.isfinite(chosen), chosen, 0.0) + margin)
  pair_losses = jnp.where(positive, pair_losses, 0.0)
  losses = jnp.sum(pair_losses, axis=1) / jnp.maximum(jnp.sum(positive, axis=1), 1)
  return jnp.where(has_both, losses, 0.0)


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
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
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
    temperature: ``tau > 0``.
    normalize: L2-normalise queries and keys first.

  Returns:
    Per-query losses ``[n]``; ``log(k + 1)`` when every similarity is equal.

  Raises:
    ValueError: for mismatched shapes or ``temperature <= 0``.

  References:
    van den Oord, Li & Vinyals, Representation Learning with Contrastive
    Predictive Coding, arXiv:1807.03748, 2018. He et al., Momentum Contrast, CVPR 2020.
  """
  _check_embeddings(queries, "queries")
  if positives.shape != queries.shape or negatives.ndim not in (2, 3) or negatives.shape[-1] != queries.shape[1] or (
      negatives.ndim == 3 and negatives.shape[0] != queries.shape[0]):
    raise ValueError(f"expected queries [n, d], positives [n, d], negatives [n, k, d] or [k, d]; got "
                     f"{tuple(queries.shape)}, {tuple(positives.shape)}, {tuple(negatives.shape)}.")
  if not temperature > 0:
    raise ValueError(f"temperature must be > 0, got {temperature}.")
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
    temperature: ``tau > 0``.
    normalize: L2-normalise first (cosine similarities), as SimCLR.

  Returns:
    Per-view losses ``[2N]``; SimCLR's loss is their mean. It is smallest
    (``log(1 + (2N - 2) e^{-1/tau})`` with unit vectors) when the views coincide
    and all other rows are orthogonal to them.

  Raises:
    ValueError: if the number of rows is odd or the shape is not ``[2N, d]``.

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
    temperature: ``tau > 0``.
    normalize: L2-normalise first, as the paper.

  Returns:
    Per-anchor losses ``[n]``; 0 for anchors with no positive.

  Raises:
    ValueError: for shapes that are not ``[n, d]`` and ``[n]``, or ``temperature <= 0``.

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

