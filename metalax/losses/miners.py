r"""Miners of pytorch-metric-learning (PML), with static shapes, and how they map onto metalax's losses.

PML's miners return variable-length index tuples; these return fixed-shape
arrays: one triplet per anchor and a validity mask (:func:`batch_hard_miner`),
``[n, n]`` pair masks (:func:`multi_similarity_miner`), or the range of triplet
margins to keep, applied inside :func:`metalax.losses.triplet_loss` in O(n^2)
memory (:func:`triplet_margin_miner`). Mining is done without gradients, as
PML's ``torch.no_grad()``.

PML's miners and FaceNet's / Hermans et al.'s mining differ:

* ``TripletMarginMiner(type_of_triplets="semihard")`` keeps *every* triplet
  with :math:`0 < d_{an} - d_{ap} \le` margin, and the loss then averages over
  those with a positive loss; FaceNet's rule (``triplet_loss(mining="semi_hard")``)
  keeps *one* negative per anchor-positive pair, the closest one farther than
  the positive, else the farthest.
* ``BatchHardMiner`` selects the same hardest positive and negative as Hermans
  et al.'s batch-hard loss, but PML's ``TripletMarginLoss`` then averages over
  the anchors with a positive loss (``AvgNonZeroReducer``), on normalised
  embeddings with margin 0.05; Hermans et al. average over all anchors (and
  prefer the soft margin).

With ``z = l2_normalize(embeddings)`` (PML's default distances normalise), each
row an equality tested in ``tests/losses/test_miners.py``:

==============================================================  ==========================================================
PML                                                             metalax
==============================================================  ==========================================================
``TripletMarginLoss(margin=m)(z, labels)``                      ``jnp.mean(triplet_loss(z, labels, margin=m))``
``TripletMarginLoss(margin=m)(z, labels,``                      ``jnp.mean(triplet_loss(z, labels, margin=m,``
``BatchHardMiner()(z, labels))``                                ``mining="batch_hard"))``, or ``p, q, valid =``
                                                                ``batch_hard_miner(z, labels)``;
                                                                ``mean_nonzero(triplet_margin_loss(z, z[p], z[q],``
                                                                ``margin=m), valid)``
``TripletMarginLoss(margin=m)(z, labels, TripletMarginMiner(``  ``jnp.mean(triplet_loss(z, labels, margin=m,``
``margin=r, type_of_triplets=t)(z, labels))``                   ``margin_range=triplet_margin_miner(r, t)))``
``TripletMarginLoss(margin=m, reducer=MeanReducer())(z,``       ``jnp.mean(triplet_loss(z, labels, margin=m,``
``labels, TripletMarginMiner(margin=r, type_of_triplets=t)``    ``margin_range=triplet_margin_miner(r, t),``
``(z, labels))``                                                ``nonzero=False))``
``MultiSimilarityLoss()(z, labels,``                            ``pos, neg = multi_similarity_miner(z, labels)``;
``MultiSimilarityMiner()(z, labels))``                          ``jnp.mean(multi_similarity_loss(z, labels,``
                                                                ``positive_mask=pos, negative_mask=neg))``
``ContrastiveLoss()(z, labels, MultiSimilarityMiner()``         ``l, pos, neg = all_pair_losses(z, labels, power=1)``;
``(z, labels))``                                                ``p, q = multi_similarity_miner(z, labels)``;
                                                                ``mean_nonzero(l, pos & p) + mean_nonzero(l, neg & q)``
==============================================================  ==========================================================

Ties (equal distances) may select different, equally distant examples than
PML; the losses are the same.
"""

import math

import jax
import jax.numpy as jnp

from metalax.losses.contrastive import _check_labels
from metalax.losses.contrastive import _label_masks
from metalax.losses.contrastive import l2_normalize
from metalax.losses.contrastive import pairwise_distances

TRIPLET_TYPES = ("all", "hard", "semihard", "easy")
"""``type_of_triplets`` values of :func:`triplet_margin_miner` (PML's names)."""


def batch_hard_miner(embeddings: jax.Array, labels: jax.Array, *,
                     distance: str = "euclidean") -> tuple[jax.Array, jax.Array, jax.Array]:
  r"""PML's ``BatchHardMiner``: each anchor's farthest positive and closest negative.

  Args:
    embeddings: ``[n, d]`` (PML's default distance normalises them: pass
      ``l2_normalize(embeddings)`` to match).
    labels: ``[n]``.
    distance: one of ``DISTANCES``; ``"cosine"`` matches PML's ``CosineSimilarity``.

  Returns:
    ``(positives [n], negatives [n], valid [n])``: the triplet of anchor ``a``
    is ``(a, positives[a], negatives[a])``; ``valid[a]`` is false (and the
    indices meaningless) where ``a`` has no positive or no negative, as PML
    drops those anchors. The first index among equal distances is chosen.

  Raises:
    ValueError: for shapes that are not ``[n, d]`` and ``[n]``, or an unknown distance.

  References:
    Hermans, Beyer & Leibe, In Defense of the Triplet Loss for Person
    Re-Identification, arXiv:1703.07737, 2017.
  """
  _check_labels(embeddings, labels)
  d = jax.lax.stop_gradient(pairwise_distances(embeddings, distance=distance))
  positive, negative = _label_masks(labels)
  positives = jnp.argmax(jnp.where(positive, d, -jnp.inf), axis=1)
  negatives = jnp.argmin(jnp.where(negative, d, jnp.inf), axis=1)
  return positives, negatives, jnp.any(positive, axis=1) & jnp.any(negative, axis=1)


def triplet_margin_miner(margin: float = 0.2, type_of_triplets: str = "all") -> tuple[float, float]:
  r"""PML's ``TripletMarginMiner`` as the range of triplet margins it keeps, for ``triplet_loss(margin_range=)``.

  PML keeps the triplets whose margin :math:`t = d_{an} - d_{ap}` satisfies:
  ``"all"``: :math:`t \le` margin; ``"hard"``: :math:`t \le \min(0,` margin);
  ``"semihard"``: :math:`0 < t \le` margin; ``"easy"``: :math:`t >` margin. The
  result ``(low, high)`` means ``low < t <= high``; applied inside
  :func:`metalax.losses.triplet_loss` (``mining="all"``), which never builds
  the ``[n, n, n]`` set of triplets.

  Args:
    margin: PML's miner margin (0.2).
    type_of_triplets: one of :data:`TRIPLET_TYPES`.

  Returns:
    ``(low, high)`` floats (``-inf`` / ``inf`` for an open end).

  Raises:
    ValueError: for an unknown ``type_of_triplets``.
  """
  ranges = {"all": (-math.inf, margin), "hard": (-math.inf, min(0.0, margin)), "semihard": (0.0, margin),
            "easy": (margin, math.inf)}
  if type_of_triplets not in ranges:
    raise ValueError(f"type_of_triplets must be one of {TRIPLET_TYPES}, got {type_of_triplets!r}.")
  return ranges[type_of_triplets]


def multi_similarity_miner(embeddings: jax.Array, labels: jax.Array, *,
                           epsilon: float = 0.1) -> tuple[jax.Array, jax.Array]:
  r"""Multi-similarity mining (PML's ``MultiSimilarityMiner``) on cosine similarities, as pair masks.

  A positive pair ``(a, p)`` is kept if :math:`S_{ap} - \epsilon < \max_{n}
  S_{an}` (it is less similar than the hardest negative plus epsilon); a
  negative pair ``(a, n)`` if :math:`S_{an} + \epsilon > \min_{p} S_{ap}`.
  Anchors without negatives keep no positive, anchors without positives no
  negative.

  Args:
    embeddings: ``[n, d]``.
    labels: ``[n]``.
    epsilon: the margin :math:`\epsilon` (0.1, as PML and the paper).

  Returns:
    ``(positive_mask [n, n], negative_mask [n, n])`` bool, for the ``*_mask``
    arguments of the pair losses.

  Raises:
    ValueError: for shapes that are not ``[n, d]`` and ``[n]``.

  References:
    Wang et al., Multi-Similarity Loss with General Pair Weighting for Deep
    Metric Learning, CVPR 2019.
  """
  _check_labels(embeddings, labels)
  unit = jax.lax.stop_gradient(l2_normalize(embeddings))
  s = unit @ unit.T
  positive, negative = _label_masks(labels)
  hardest_negative = jnp.max(jnp.where(negative, s, -jnp.inf), axis=1, keepdims=True)
  hardest_positive = jnp.min(jnp.where(positive, s, jnp.inf), axis=1, keepdims=True)
  return positive & (s - epsilon < hardest_negative), negative & (s + epsilon > hardest_positive)
