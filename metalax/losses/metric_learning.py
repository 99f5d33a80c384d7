r"""Metric-learning losses as ported from pytorch-metric-learning (PML): proxies, margins, pair weightings.

Plain array functions, definitions and defaults read from PML 2.x's source
(``src/pytorch_metric_learning/losses/*.py``). Proxies and class weights are
parameters the caller owns and trains: ``[C, d]`` arrays (one row per class)
passed in with the embeddings, labels are ints in ``[0, C)``.

===================================  ==================================================================
PML                                  metalax (``jnp.mean`` of the result unless said)
===================================  ==================================================================
``ProxyNCALoss(C, d)``               ``proxy_nca_loss(embeddings, labels, proxies)``
``ProxyAnchorLoss(C, d)``            ``proxy_anchor_loss(embeddings, labels, proxies)`` (a scalar)
``ArcFaceLoss(C, d)``                ``arcface_loss(embeddings, labels, weights.T, margin=np.radians(28.6))``
``CosFaceLoss(C, d)``                ``cosface_loss(embeddings, labels, weights.T)``
``MultiSimilarityLoss()``            ``multi_similarity_loss(embeddings, labels)``
``CircleLoss()``                     ``mean_nonzero(circle_loss(embeddings, labels))``
``NPairsLoss()``                     ``n_pairs_loss(anchors, positives)`` for labels ``[0..N-1, 0..N-1]``
``LiftedStructureLoss()``            ``lifted_structure_loss(l2_normalize(embeddings), labels)``
===================================  ==================================================================

Conventions that differ from PML:

* Class weights are ``[C, d]`` here, PML's ``W`` of ArcFace/CosFace is ``[d, C]``
  (pass ``W.T``); ArcFace's margin is in radians here (the paper's 0.5), in
  degrees in PML (28.6, i.e. 0.4992 rad).
* Losses on cosine similarities (ProxyAnchor, ArcFace, CosFace,
  MultiSimilarity, Circle) normalise internally, as PML's ``CosineSimilarity``;
  ProxyNCA normalises embeddings and proxies unless ``normalize=False``
  (PML's ``LpDistance(normalize_embeddings=True, power=2)``); the lifted
  structure loss takes a ``distance`` and the embeddings as given (PML
  normalises: pass ``l2_normalize(embeddings)``); N-pair uses raw dot products
  (PML's ``DotProductSimilarity``, Sohn's paper).
* In-batch losses take optional ``positive_mask`` / ``negative_mask`` ``[n, n]``
  (e.g. from :func:`metalax.losses.miners.multi_similarity_miner`) where PML
  takes an ``indices_tuple``; they restrict the pairs the labels allow.
* PML's weight regularisers and embedding regularisers are not built in (add
  them to the loss: they are functions of arrays the caller holds).
* ProxyNCA follows PML (the positive proxy stays in the softmax denominator,
  NCA's form); Movshovitz-Attias et al. (2017) exclude it. PML drops the
  terms whose probability underflows to 0; here they are kept (finite, large).
"""

import math

import jax
import jax.numpy as jnp

from metalax.losses.contrastive import _check_distance
from metalax.losses.contrastive import _check_embeddings
from metalax.losses.contrastive import _check_labels
from metalax.losses.contrastive import _check_positive
from metalax.losses.contrastive import _label_masks
from metalax.losses.contrastive import _safe_sqrt
from metalax.losses.contrastive import l2_normalize
from metalax.losses.contrastive import pairwise_distances


def _check_proxies(embeddings: jax.Array, labels: jax.Array, proxies: jax.Array, name: str) -> None:
  _check_labels(embeddings, labels)
  _check_embeddings(proxies, name)
  if proxies.shape[1] != embeddings.shape[1]:
    raise ValueError(f"{name} must be [num_classes, d] with the embeddings' d = {embeddings.shape[1]}, got "
                     f"{tuple(proxies.shape)}.")
  try:
    low, high = int(jnp.min(labels)), int(jnp.max(labels))
  except TypeError:  # traced labels: not checkable here
    return
  if low < 0 or high >= proxies.shape[0]:
    raise ValueError(f"labels must be in [0, {proxies.shape[0]}) to index the {proxies.shape[0]} rows of {name}, "
                     f"got values in [{low}, {high}].")


def _pair_masks(labels: jax.Array, positive_mask: jax.Array | None,
                negative_mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  positive, negative = _label_masks(labels)
  n = labels.shape[0]
  for name, mask in (("positive_mask", positive_mask), ("negative_mask", negative_mask)):
    if mask is not None and getattr(mask, "shape", None) != (n, n):
      raise ValueError(f"{name} must be [n, n] = [{n}, {n}], got {getattr(mask, 'shape', None)}.")
  if positive_mask is not None:
    positive = positive & positive_mask.astype(bool)
  if negative_mask is not None:
    negative = negative & negative_mask.astype(bool)
  return positive, negative


def _masked_logsumexp(values: jax.Array, mask: jax.Array, axis: int, add_one: bool) -> jax.Array:
  """PML's ``lmu.logsumexp``: over the entries in ``mask`` (and a 0 logit if ``add_one``); 0 where none is."""
  any_kept = jnp.any(mask, axis=axis, keepdims=True)
  masked = jnp.where(mask, values, jnp.where(any_kept, -jnp.inf, 0.0))  # rows with nothing kept: finite, dropped below
  if add_one:
    shape = list(masked.shape)
    shape[axis] = 1
    masked = jnp.concatenate([masked, jnp.zeros(shape, masked.dtype)], axis=axis)
  result = jax.nn.logsumexp(masked, axis=axis)
  return jnp.where(jnp.squeeze(any_kept, axis), result, 0.0)


def proxy_nca_loss(embeddings: jax.Array, labels: jax.Array, proxies: jax.Array, *, softmax_scale: float = 1.0,
                   normalize: bool = True) -> jax.Array:
  r"""ProxyNCA: NCA's softmax over one learnable proxy per class, per example.

  .. math::
    \ell_i = -\log \frac{\exp(-s\,\|x_i - p_{y_i}\|^2)}{\sum_c \exp(-s\,\|x_i - p_c\|^2)}

  on unit vectors (``normalize``), ``s`` the softmax scale (PML's
  ``softmax_scale``, 1; ProxyNCA++'s inverse temperature, 9).

  Args:
    embeddings: ``[n, d]``.
    labels: ``[n]`` ints in ``[0, C)``.
    proxies: ``[C, d]``, trained with the embedding (PML initialises them
      with a standard normal).
    softmax_scale: ``s > 0``.
    normalize: L2-normalise embeddings and proxies first (PML and the paper).

  Returns:
    Per-example losses ``[n]``.

  Raises:
    ValueError: for shapes that are not ``[n, d]``, ``[n]``, ``[C, d]``, concrete
      labels outside ``[0, C)``, or a concrete ``softmax_scale <= 0``.

  References:
    Movshovitz-Attias, Toshev, Leung, Ioffe & Singh, No Fuss Distance Metric
    Learning using Proxies, ICCV 2017.
  """
  _check_proxies(embeddings, labels, proxies, "proxies")
  _check_positive(softmax_scale, "softmax_scale")
  if normalize:
    embeddings, proxies = l2_normalize(embeddings), l2_normalize(proxies)
  logits = -softmax_scale * pairwise_distances(embeddings, proxies, distance="squared_euclidean")
  log_probabilities = jax.nn.log_softmax(logits, axis=1)
  return -jnp.take_along_axis(log_probabilities, labels[:, None].astype(jnp.int32), axis=1)[:, 0]


def proxy_anchor_loss(embeddings: jax.Array, labels: jax.Array, proxies: jax.Array, *, margin: float = 0.1,
                      alpha: float = 32.0) -> jax.Array:
  r"""Proxy-Anchor: each proxy is an anchor pulling its class's examples and pushing the others.

  .. math::
    \mathcal{L} = \frac{1}{|P^+|} \sum_{p \in P^+} \log\Big(1 + \sum_{x \in X_p^+} e^{-\alpha(s(x, p) - \delta)}\Big)
      + \frac{1}{|P|} \sum_{p \in P} \log\Big(1 + \sum_{x \in X_p^-} e^{\alpha(s(x, p) + \delta)}\Big)

  with ``s`` the cosine similarity, ``P`` all proxies, ``P+`` those with an
  example of their class in the batch, ``X_p+`` those examples and ``X_p-``
  the others (PML's ``ProxyAnchorLoss``: margin 0.1, alpha 32, as the paper).

  Args:
    embeddings: ``[n, d]``.
    labels: ``[n]`` ints in ``[0, C)``.
    proxies: ``[C, d]`` (PML and the paper initialise them with Kaiming
      normal, ``fan_out``: standard deviation ``sqrt(2 / C)``).
    margin: :math:`\delta`.
    alpha: the scale :math:`\alpha`.

  Returns:
    A scalar: the loss is a sum over proxies with divisors that depend on
    the batch, not a sum over examples. 0 when no proxy has a positive.

  Raises:
    ValueError: as :func:`proxy_nca_loss`.

  References:
    Kim, Kim, Cho & Kwak, Proxy Anchor Loss for Deep Metric Learning, CVPR 2020.
  """
  _check_proxies(embeddings, labels, proxies, "proxies")
  cosine = l2_normalize(embeddings) @ l2_normalize(proxies).T                                    # [n, C]
  positive = jax.nn.one_hot(labels, proxies.shape[0], dtype=bool)
  positive_terms = _masked_logsumexp(-alpha * (cosine - margin), positive, axis=0, add_one=True)
  negative_terms = _masked_logsumexp(alpha * (cosine + margin), ~positive, axis=0, add_one=True)
  with_positives = jnp.sum(jnp.any(positive, axis=0))
  positive_loss = jnp.where(with_positives > 0, jnp.sum(positive_terms) / jnp.maximum(with_positives, 1), 0.0)
  return positive_loss + jnp.sum(negative_terms) / proxies.shape[0]


def _class_cosines(embeddings: jax.Array, labels: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  _check_proxies(embeddings, labels, weights, "weights")
  cosine = l2_normalize(embeddings) @ l2_normalize(weights).T
  return cosine, jax.nn.one_hot(labels, weights.shape[0], dtype=bool)


def _softmax_cross_entropy(logits: jax.Array, target: jax.Array) -> jax.Array:
  return jax.nn.logsumexp(logits, axis=1) - jnp.sum(jnp.where(target, logits, 0.0), axis=1)


def arcface_loss(embeddings: jax.Array, labels: jax.Array, weights: jax.Array, *, margin: float = 0.5,
                 scale: float = 64.0) -> jax.Array:
  r"""ArcFace (additive angular margin): softmax cross-entropy on :math:`s\cos(\theta_y + m)`, per example.

  The target class's logit is :math:`s \cos(\theta_y + m)` with
  :math:`\theta_y` the angle between the embedding and its class weight; the
  other logits are :math:`s \cos\theta_j`. Where :math:`\theta_y > \pi - m`
  (so :math:`\cos(\theta + m)` would no longer decrease), the target logit is
  :math:`s(\cos\theta_y - m \sin m)`, as the reference implementation and PML.
  :math:`\cos(\theta + m)` is computed as :math:`\cos\theta\cos m -
  \sin\theta\sin m` (finite gradients at :math:`\theta = 0`).

  Args:
    embeddings: ``[n, d]``.
    labels: ``[n]`` ints in ``[0, C)``.
    weights: ``[C, d]`` class weights (PML's ``W`` is ``[d, C]``: pass ``W.T``).
    margin: ``m`` in radians (the paper's 0.5; PML's default 28.6 degrees is
      ``np.radians(28.6)``).
    scale: ``s``.

  Returns:
    Per-example losses ``[n]``.

  Raises:
    ValueError: as :func:`proxy_nca_loss`.

  References:
    Deng, Guo, Xue & Zafeiriou, ArcFace: Additive Angular Margin Loss for Deep
    Face Recognition, CVPR 2019.
  """
  cosine, target = _class_cosines(embeddings, labels, weights)
  cosine = jnp.clip(cosine, -1.0, 1.0)
  sine = _safe_sqrt(1.0 - jnp.square(cosine))
  with_margin = jnp.where(cosine >= -math.cos(margin), cosine * math.cos(margin) - sine * math.sin(margin),
                          cosine - margin * math.sin(margin))
  return _softmax_cross_entropy(scale * jnp.where(target, with_margin, cosine), target)


def cosface_loss(embeddings: jax.Array, labels: jax.Array, weights: jax.Array, *, margin: float = 0.35,
                 scale: float = 64.0) -> jax.Array:
  r"""CosFace (large margin cosine loss): cross-entropy on :math:`s(\cos\theta_j - m\,[j = y])`, per example.

  Args:
    embeddings: ``[n, d]``.
    labels: ``[n]`` ints in ``[0, C)``.
    weights: ``[C, d]`` class weights (PML's ``W.T``).
    margin: ``m`` (the paper's and PML's 0.35).
    scale: ``s`` (64).

  Returns:
    Per-example losses ``[n]``.

  Raises:
    ValueError: as :func:`proxy_nca_loss`.

  References:
    Wang et al., CosFace: Large Margin Cosine Loss for Deep Face Recognition, CVPR 2018.
  """
  cosine, target = _class_cosines(embeddings, labels, weights)
  return _softmax_cross_entropy(scale * (cosine - margin * target), target)


def multi_similarity_loss(embeddings: jax.Array, labels: jax.Array, *, alpha: float = 2.0, beta: float = 50.0,
                          base: float = 0.5, positive_mask: jax.Array | None = None,
                          negative_mask: jax.Array | None = None) -> jax.Array:
  r"""Multi-similarity loss on cosine similarities, per anchor.

  .. math::
    \ell_i = \frac1\alpha \log\Big(1 + \sum_{p} e^{-\alpha (S_{ip} - \lambda)}\Big)
           + \frac1\beta \log\Big(1 + \sum_{n} e^{\beta (S_{in} - \lambda)}\Big)

  over the anchor's positive pairs ``p`` and negative pairs ``n`` (all of them,
  or those the masks keep: the paper mines them with
  :func:`metalax.losses.miners.multi_similarity_miner`). PML's defaults.

  Args:
    embeddings: ``[n, d]``.
    labels: ``[n]``.
    alpha: the positive scale.
    beta: the negative scale.
    base: :math:`\lambda`, the similarity offset.
    positive_mask: optional ``[n, n]`` bool, the positive pairs to keep.
    negative_mask: optional ``[n, n]`` bool, the negative pairs to keep.

  Returns:
    Per-anchor losses ``[n]`` (a term over no pairs is 0); PML's loss is their mean.

  Raises:
    ValueError: for shapes that are not ``[n, d]``, ``[n]``, ``[n, n]``.

  References:
    Wang, Han, Huang, Dong & Scott, Multi-Similarity Loss with General Pair
    Weighting for Deep Metric Learning, CVPR 2019.
  """
  _check_labels(embeddings, labels)
  positive, negative = _pair_masks(labels, positive_mask, negative_mask)
  similarity = l2_normalize(embeddings) @ l2_normalize(embeddings).T
  positive_loss = _masked_logsumexp(-alpha * (similarity - base), positive, axis=1, add_one=True) / alpha
  negative_loss = _masked_logsumexp(beta * (similarity - base), negative, axis=1, add_one=True) / beta
  return positive_loss + negative_loss


def circle_loss(embeddings: jax.Array, labels: jax.Array, *, margin: float = 0.4, gamma: float = 80.0,
                positive_mask: jax.Array | None = None, negative_mask: jax.Array | None = None) -> jax.Array:
  r"""Circle loss on cosine similarities (pair-wise labels), per anchor.

  .. math::
    \ell_i = \log\Big(1 + \sum_{n} e^{\gamma \alpha_n (s_n - \Delta_n)} \sum_{p} e^{-\gamma \alpha_p (s_p - \Delta_p)}\Big)

  with :math:`\alpha_p = [1 + m - s_p]_+`, :math:`\alpha_n = [s_n + m]_+` (no
  gradient through them, as the paper's and PML's code), :math:`\Delta_p = 1 -
  m`, :math:`\Delta_n = m`. PML's defaults ``m = 0.4``, ``gamma = 80`` (the
  paper's fine-grained retrieval setting).

  Args:
    embeddings: ``[n, d]``.
    labels: ``[n]``.
    margin: the relaxation ``m``.
    gamma: the scale :math:`\gamma`.
    positive_mask: optional ``[n, n]`` bool, the positive pairs to keep.
    negative_mask: optional ``[n, n]`` bool, the negative pairs to keep.

  Returns:
    Per-anchor losses ``[n]``; 0 for an anchor with no positive or no negative
    pair. PML reduces with ``mean_nonzero``.

  Raises:
    ValueError: as :func:`multi_similarity_loss`.

  References:
    Sun et al., Circle Loss: A Unified Perspective of Pair Similarity
    Optimization, CVPR 2020.
  """
  _check_labels(embeddings, labels)
  positive, negative = _pair_masks(labels, positive_mask, negative_mask)
  s = l2_normalize(embeddings) @ l2_normalize(embeddings).T
  fixed = jax.lax.stop_gradient(s)
  logits = jnp.where(positive, -gamma * jax.nn.relu(1.0 + margin - fixed) * (s - (1.0 - margin)),
                     gamma * jax.nn.relu(fixed + margin) * (s - margin))
  total = (_masked_logsumexp(logits, positive, axis=1, add_one=False)
           + _masked_logsumexp(logits, negative, axis=1, add_one=False))
  has_both = jnp.any(positive, axis=1) & jnp.any(negative, axis=1)
  return jnp.where(has_both, jax.nn.softplus(total), 0.0)


def n_pairs_loss(anchors: jax.Array, positives: jax.Array) -> jax.Array:
  r"""Multi-class N-pair loss: each anchor against its positive and the other classes' positives.

  .. math::
    \ell_i = \log\Big(1 + \sum_{j \ne i} e^{f_i^\top f_j^+ - f_i^\top f_i^+}\Big)
           = -\log \frac{e^{f_i^\top f_i^+}}{\sum_j e^{f_i^\top f_j^+}}

  with dot products of the embeddings as given (the paper and PML). Row ``i``
  of both arrays is one class. The paper adds an L2 penalty on the
  embeddings (weight 0.002); PML and this function leave it to the caller.

  Args:
    anchors: ``[N, d]``, one example of each of ``N`` classes.
    positives: ``[N, d]``, another example of the same classes, same order.

  Returns:
    Per-anchor losses ``[N]``; PML's ``NPairsLoss`` on the ``2N`` rows
    ``[anchors; positives]`` labelled ``[0..N-1, 0..N-1]`` is their mean.

  Raises:
    ValueError: if the shapes differ or are not ``[N, d]``.

  References:
    Sohn, Improved Deep Metric Learning with Multi-class N-pair Loss Objective, NeurIPS 2016.
  """
  _check_embeddings(anchors, "anchors")
  if getattr(positives, "shape", None) != anchors.shape:
    raise ValueError(f"anchors and positives must have the same shape [N, d], got {tuple(anchors.shape)} and "
                     f"{getattr(positives, 'shape', None)}.")
  logits = anchors @ positives.T
  return jax.nn.logsumexp(logits, axis=1) - jnp.diagonal(logits)


def lifted_structure_loss(embeddings: jax.Array, labels: jax.Array, *, neg_margin: float = 1.0,
                          pos_margin: float = 0.0, distance: str = "euclidean",
                          positive_mask: jax.Array | None = None,
                          negative_mask: jax.Array | None = None) -> jax.Array:
  r"""Lifted structured loss, as per-anchor shares of the mean over positive pairs.

  For each positive pair ``(i, j)``:

  .. math::
    J_{ij} = \log\Big(\sum_{k \in N(i)} e^{\alpha - D_{ik}} + \sum_{l \in N(j)} e^{\alpha - D_{jl}}\Big)
             + D_{ij} - m_+, \qquad L_{ij} = \tfrac12 [J_{ij}]_+^2,

  with ``alpha`` the negative margin and ``N(i)`` the negatives of ``i``; the
  batch loss is the mean of :math:`L_{ij}` over ordered positive pairs (each
  unordered pair twice: the paper's :math:`\frac{1}{2|P|} \sum_{P} [J]_+^2`).
  Where neither ``i`` nor ``j`` has a negative the log-sum is taken as 0, and
  a batch without any negative pair gives 0 (PML's conventions). O(n^2) memory.

  Args:
    embeddings: ``[n, d]`` (PML normalises: pass ``l2_normalize(embeddings)``).
    labels: ``[n]``.
    neg_margin: :math:`\alpha` (1, as PML).
    pos_margin: :math:`m_+` (0, as PML and the paper).
    distance: one of ``DISTANCES`` (PML: Euclidean).
    positive_mask: optional ``[n, n]`` bool, the positive pairs to keep.
    negative_mask: optional ``[n, n]`` bool, the negative pairs to keep.

  Returns:
    Per-anchor shares ``[n]``: anchor ``i`` gives :math:`n \sum_j L_{ij} / |P|`,
    so that ``jnp.mean`` is the batch loss (PML's ``LiftedStructureLoss``).

  Raises:
    ValueError: as :func:`multi_similarity_loss`, or for an unknown distance.

  References:
    Oh Song, Xiang, Jegelka & Savarese, Deep Metric Learning via Lifted
    Structured Feature Embedding, CVPR 2016.
  """
  _check_distance(distance)
  _check_labels(embeddings, labels)
  positive, negative = _pair_masks(labels, positive_mask, negative_mask)
  d = pairwise_distances(embeddings, distance=distance)
  has_negative = jnp.any(negative, axis=1)
  per_anchor = _masked_logsumexp(neg_margin - d, negative, axis=1, add_one=False)               # [n]
  # logaddexp over the anchors that have negatives (a finite stand-in for log 0 keeps gradients finite).
  stand_in = jnp.where(has_negative, per_anchor, jnp.finfo(d.dtype).min / 4)
  combined = jnp.where(has_negative[:, None] | has_negative[None, :],
                       jnp.logaddexp(stand_in[:, None], stand_in[None, :]), 0.0)
  pair_losses = jnp.where(positive & jnp.any(negative), 0.5 * jnp.square(jax.nn.relu(combined + d - pos_margin)), 0.0)
  return embeddings.shape[0] * jnp.sum(pair_losses, axis=1) / jnp.maximum(jnp.sum(positive), 1)
