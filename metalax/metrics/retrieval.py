r"""Retrieval and clustering metrics of embeddings: Recall@K, MAP@R, R-precision, NMI, AMI.

Definitions follow pytorch-metric-learning's ``AccuracyCalculator`` (Musgrave,
Belongie & Lim, A Metric Learning Reality Check, ECCV 2020), where each
query's neighbours are the reference embeddings ranked by distance:

* ``recall@K``: the fraction of queries with at least one same-class
  example among their ``K`` nearest neighbours (Oh Song et al. 2016; for
  ``K = 1`` it is PML's ``precision_at_1``);
* ``r_precision``: with ``R`` the number of references of the query's class
  (other than the query itself), the fraction of the ``R`` nearest that share
  its class;
* ``map@r``: the mean over those ``R`` positions ``i`` where the neighbour
  shares the class of the precision at ``i``, divided by ``R``.

Queries whose class has no other reference ("lone" queries) are left out of
every mean, as PML; a metric over no query is NaN. Equal distances are ranked
by reference index (a stable sort), where PML's k-NN (faiss) leaves their
order unspecified.

Clustering: :func:`kmeans` (Lloyd's iterations from a k-means++
initialisation, jittable with a static number of clusters), then the
normalised and adjusted mutual information between the clusters and the
labels (:func:`normalized_mutual_info`, :func:`adjusted_mutual_info`: NumPy,
scikit-learn's definitions with the arithmetic mean of the entropies, as PML).
"""

from collections.abc import Sequence
import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from metalax.losses.contrastive import pairwise_distances

DISTANCES = ("euclidean", "squared_euclidean", "cosine")
"""Distances accepted by :func:`retrieval_metrics` (those of :func:`metalax.losses.pairwise_distances`)."""


def _check_set(embeddings, labels, names: tuple[str, str]) -> None:
  if getattr(embeddings, "ndim", None) != 2:
    raise ValueError(f"{names[0]} must have shape [n, d], got {getattr(embeddings, 'shape', None)}.")
  if getattr(labels, "shape", None) != embeddings.shape[:1]:
    raise ValueError(f"{names[1]} must have shape [n] = [{embeddings.shape[0]}] to match {names[0]} "
                     f"{tuple(embeddings.shape)}, got {getattr(labels, 'shape', None)}.")


def retrieval_metrics(embeddings: jax.Array, labels: jax.Array, *, ks: Sequence[int] = (1,),
                      distance: str = "euclidean", reference_embeddings: jax.Array | None = None,
                      reference_labels: jax.Array | None = None, batch_size: int = 256) -> dict[str, jax.Array]:
  """Recall@K for each ``K`` in ``ks``, MAP@R and R-precision, in one pass over the queries.

  Args:
    embeddings: ``[n, d]`` queries.
    labels: ``[n]`` their classes (ints).
    ks: the ``K`` of Recall@K.
    distance: one of :data:`DISTANCES` (PML's default: Euclidean on the
      embeddings as given; normalise first for cosine retrieval).
    reference_embeddings: ``[m, d]``; ``None`` retrieves among the queries
      themselves, each query excluded from its own neighbours.
    reference_labels: ``[m]``, with ``reference_embeddings``.
    batch_size: queries ranked at a time (memory ``batch_size x m``).

  Returns:
    ``{"recall@K": ... for K in ks, "map@r": ..., "r_precision": ...}``,
    float32 scalars in ``[0, 1]`` (NaN if every query is lone).

  Raises:
    ValueError: for shapes that do not match, an unknown distance, ``K < 1``
      or ``K`` larger than the number of neighbours.

  Example:
    >>> retrieval_metrics(l2_normalize(embeddings), labels, ks=(1, 5))["recall@1"]

  References:
    Musgrave, Belongie & Lim, A Metric Learning Reality Check, ECCV 2020 (MAP@R).
    Oh Song, Xiang, Jegelka & Savarese, Deep Metric Learning via Lifted
    Structured Feature Embedding, CVPR 2016 (Recall@K).
  """
  if distance not in DISTANCES:
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}.")
  _check_set(embeddings, labels, ("embeddings", "labels"))
  same = reference_embeddings is None
  if same != (reference_labels is None):
    raise ValueError("reference_embeddings and reference_labels must be given together.")
  if same:
    reference_embeddings, reference_labels = embeddings, labels
  else:
    _check_set(reference_embeddings, reference_labels, ("reference_embeddings", "reference_labels"))
    if reference_embeddings.shape[1] != embeddings.shape[1]:
      raise ValueError(f"embeddings {tuple(embeddings.shape)} and reference_embeddings "
                       f"{tuple(reference_embeddings.shape)} must have the same d.")
  m = reference_embeddings.shape[0]
  neighbours = m - 1 if same else m
  ks = tuple(int(k) for k in ks)
  if not ks or any(k < 1 or k > neighbours for k in ks):
    raise ValueError(f"every K must be in [1, {neighbours}] (the number of neighbours of a query), got {ks}.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
  values = _retrieval(jnp.asarray(embeddings), jnp.asarray(labels), jnp.asarray(reference_embeddings),
                      jnp.asarray(reference_labels), ks=ks, distance=distance, same=same,
                      batch_size=min(batch_size, embeddings.shape[0]))
  return {name: value for name, value in zip([f"recall@{k}" for k in ks] + ["map@r", "r_precision"], values)}


@functools.partial(jax.jit, static_argnames=("ks", "distance", "same", "batch_size"))
def _retrieval(embeddings, labels, references, reference_labels, *, ks, distance, same, batch_size):
  m = references.shape[0]
  positions = jnp.arange(m)

  def per_query(query):
    vector, label, index = query
    d = pairwise_distances(vector[None], references, distance=distance)[0]
    own = (positions == index) if same else jnp.zeros(m, bool)
    order = jnp.argsort(jnp.where(own, jnp.inf, d), stable=True)
    relevant = (reference_labels[order] == label) & ~own[order]                          # [m], ranked
    r = jnp.sum(relevant)
    within_r = positions < r
    hits = jnp.cumsum(relevant)
    precision = hits / (positions + 1.0)
    average_precision = jnp.sum(jnp.where(relevant & within_r, precision, 0.0)) / jnp.maximum(r, 1)
    r_precision = jnp.sum(relevant & within_r) / jnp.maximum(r, 1)
    recalls = jnp.stack([hits[k - 1] > 0 for k in ks]).astype(jnp.float32)
    return r > 0, recalls, average_precision, r_precision

  indices = jnp.arange(embeddings.shape[0])
  valid, recalls, average_precision, r_precision = jax.lax.map(per_query, (embeddings, labels, indices),
                                                               batch_size=batch_size)
  count = jnp.sum(valid)
  mean = lambda values: jnp.where(count > 0, jnp.sum(values * valid.reshape(valid.shape + (1,) * (values.ndim - 1)), 0)
                                  / jnp.maximum(count, 1), jnp.nan).astype(jnp.float32)
  return tuple(mean(recalls)) + (mean(average_precision), mean(r_precision))


def recall_at_k(embeddings: jax.Array, labels: jax.Array, k: int = 1, **kwargs) -> jax.Array:
  """Recall@K: the fraction of (non-lone) queries with a same-class example among their ``k`` nearest.

  Args:
    embeddings: ``[n, d]``.
    labels: ``[n]``.
    k: ``K >= 1``.
    **kwargs: ``distance``, ``reference_embeddings``, ``reference_labels``,
      ``batch_size`` of :func:`retrieval_metrics`.

  Returns:
    A scalar in ``[0, 1]``.

  Raises:
    ValueError: as :func:`retrieval_metrics`.
  """
  return retrieval_metrics(embeddings, labels, ks=(k,), **kwargs)[f"recall@{k}"]


def map_at_r(embeddings: jax.Array, labels: jax.Array, **kwargs) -> jax.Array:
  """MAP@R (Musgrave et al. 2020): mean average precision over each query's ``R`` nearest neighbours.

  Args:
    embeddings: ``[n, d]``.
    labels: ``[n]``.
    **kwargs: as :func:`recall_at_k`.

  Returns:
    A scalar in ``[0, 1]``.

  Raises:
    ValueError: as :func:`retrieval_metrics`.
  """
  return retrieval_metrics(embeddings, labels, **kwargs)["map@r"]


def r_precision(embeddings: jax.Array, labels: jax.Array, **kwargs) -> jax.Array:
  """R-precision: the fraction of each query's ``R`` nearest neighbours that share its class.

  Args:
    embeddings: ``[n, d]``.
    labels: ``[n]``.
    **kwargs: as :func:`recall_at_k`.

  Returns:
    A scalar in ``[0, 1]``.

  Raises:
    ValueError: as :func:`retrieval_metrics`.
  """
  return retrieval_metrics(embeddings, labels, **kwargs)["r_precision"]


def _squared_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
  return jnp.maximum(jnp.sum(x * x, 1)[:, None] + jnp.sum(centroids * centroids, 1)[None] - 2 * x @ centroids.T, 0.0)


def kmeans(key: jax.Array, embeddings: jax.Array, num_clusters: int, *,
           num_iterations: int = 100) -> tuple[jax.Array, jax.Array]:
  """k-means: k-means++ initialisation, then Lloyd's iterations until no assignment changes.

  Jittable (``num_clusters`` and ``num_iterations`` static). A cluster that
  loses all its points keeps its centroid.

  Args:
    key: a PRNG key (the k-means++ draws).
    embeddings: ``[n, d]``.
    num_clusters: ``k``, in ``[1, n]``.
    num_iterations: the most Lloyd iterations.

  Returns:
    ``(assignments [n] int32, centroids [k, d])``.

  Raises:
    ValueError: for embeddings that are not ``[n, d]`` or ``k`` outside ``[1, n]``.

  References:
    Arthur & Vassilvitskii, k-means++: The Advantages of Careful Seeding, SODA 2007.
    Lloyd, Least Squares Quantization in PCM, IEEE Trans. Inf. Theory 1982.
  """
  if getattr(embeddings, "ndim", None) != 2:
    raise ValueError(f"embeddings must have shape [n, d], got {getattr(embeddings, 'shape', None)}.")
  n = embeddings.shape[0]
  if not 1 <= num_clusters <= n:
    raise ValueError(f"num_clusters must be in [1, n] = [1, {n}], got {num_clusters}.")
  x = jnp.asarray(embeddings)
  first_key, rest_key = jax.random.split(key)
  first = x[jax.random.randint(first_key, (), 0, n)]
  centroids = jnp.zeros((num_clusters, x.shape[1]), x.dtype).at[0].set(first)
  nearest = jnp.sum(jnp.square(x - first), axis=1)

  def seed(i, carry):
    centroids, nearest = carry
    total = jnp.sum(nearest)
    # D^2 sampling; when every point coincides with a centroid, uniform.
    logits = jnp.where(total > 0, jnp.log(jnp.where(nearest > 0, nearest, 1.0)), 0.0)
    logits = jnp.where((total > 0) & (nearest <= 0), -jnp.inf, logits)
    chosen = x[jax.random.categorical(jax.random.fold_in(rest_key, i), logits)]
    return centroids.at[i].set(chosen), jnp.minimum(nearest, jnp.sum(jnp.square(x - chosen), axis=1))

  centroids, _ = jax.lax.fori_loop(1, num_clusters, seed, (centroids, nearest))

  def assign(centroids):
    return jnp.argmin(_squared_distances(x, centroids), axis=1).astype(jnp.int32)

  def step(carry):
    centroids, assignments, iteration, _ = carry
    sums = jax.ops.segment_sum(x, assignments, num_segments=num_clusters)
    counts = jax.ops.segment_sum(jnp.ones(n, x.dtype), assignments, num_segments=num_clusters)[:, None]
    centroids = jnp.where(counts > 0, sums / jnp.maximum(counts, 1), centroids)
    new = assign(centroids)
    return centroids, new, iteration + 1, jnp.any(new != assignments)

  initial = (centroids, assign(centroids), jnp.zeros((), jnp.int32), jnp.array(True))
  centroids, assignments, _, _ = jax.lax.while_loop(lambda c: (c[2] < num_iterations) & c[3], step, initial)
  return assignments, centroids


def _contingency(labels, clusters) -> np.ndarray:
  labels, clusters = np.asarray(labels).ravel(), np.asarray(clusters).ravel()
  if labels.shape != clusters.shape or labels.size == 0:
    raise ValueError(f"labels and clusters must be non-empty [n] arrays of one length, got {labels.shape} and "
                     f"{clusters.shape}.")
  _, label_index = np.unique(labels, return_inverse=True)
  _, cluster_index = np.unique(clusters, return_inverse=True)
  table = np.zeros((label_index.max() + 1, cluster_index.max() + 1), np.int64)
  np.add.at(table, (label_index, cluster_index), 1)
  return table


def _entropy(counts: np.ndarray) -> float:
  p = counts[counts > 0] / counts.sum()
  return float(-np.sum(p * np.log(p)))


def _mutual_info(table: np.ndarray) -> float:
  n = table.sum()
  a, b = table.sum(1, keepdims=True), table.sum(0, keepdims=True)
  nonzero = table > 0
  return float(max(np.sum(np.where(nonzero, table / n * np.log(np.where(nonzero, table * n, 1) / (a * b)), 0.0)), 0.0))


def normalized_mutual_info(labels, clusters) -> float:
  r"""NMI: :math:`I(Y; C) / \tfrac12 (H(Y) + H(C))` (scikit-learn's ``average_method="arithmetic"``).

  1 for identical partitions (up to renaming), including the case of one
  class and one cluster; 0 when the mutual information is 0.

  Args:
    labels: ``[n]`` classes.
    clusters: ``[n]`` cluster assignments.

  Returns:
    A float in ``[0, 1]``.

  Raises:
    ValueError: for arrays of different lengths or empty ones.
  """
  table = _contingency(labels, clusters)
  if table.shape[0] == table.shape[1] == 1:
    return 1.0
  mutual_info = _mutual_info(table)
  if mutual_info == 0:
    return 0.0
  return mutual_info / (0.5 * (_entropy(table.sum(1)) + _entropy(table.sum(0))))


def _expected_mutual_info(table: np.ndarray) -> float:
  """E[I] under the hypergeometric model of random partitions with the table's marginals (Vinh et al. 2010)."""
  n = int(table.sum())
  a, b = table.sum(1).astype(np.int64), table.sum(0).astype(np.int64)
  bj = b[None, :]
  log_b = special.gammaln(bj + 1) + special.gammaln(n - bj + 1)
  total = 0.0
  for ai in a:  # one class at a time: memory a_i x C
    nij = np.arange(1, ai + 1)[:, None]
    valid = (nij >= np.maximum(1, ai + bj - n)) & (nij <= np.minimum(ai, bj))
    log_probability = (special.gammaln(ai + 1) + special.gammaln(n - ai + 1) + log_b - special.gammaln(n + 1)
                       - special.gammaln(nij + 1) - special.gammaln(np.maximum(ai - nij, 0) + 1)
                       - special.gammaln(np.maximum(bj - nij, 0) + 1)
                       - special.gammaln(np.maximum(n - ai - bj + nij, 0) + 1))
    term = nij / n * (np.log(n * nij) - np.log(ai) - np.log(bj)) * np.exp(np.where(valid, log_probability, -np.inf))
    total += float(np.sum(np.where(valid, term, 0.0)))
  return total


def adjusted_mutual_info(labels, clusters) -> float:
  r"""AMI: :math:`(I - E[I]) / (\tfrac12 (H(Y) + H(C)) - E[I])`, chance-corrected (scikit-learn's definition).

  :math:`E[I]` is the expected mutual information of two random partitions
  with the same cluster sizes (the hypergeometric model of Vinh, Epps &
  Bailey 2010). 1 for identical partitions (one class and one cluster
  included), about 0 for independent ones; it can be negative.

  Args:
    labels: ``[n]`` classes.
    clusters: ``[n]`` cluster assignments.

  Returns:
    A float, at most 1.

  Raises:
    ValueError: for arrays of different lengths or empty ones.

  References:
    Vinh, Epps & Bailey, Information Theoretic Measures for Clusterings
    Comparison, JMLR 2010.
  """
  table = _contingency(labels, clusters)
  if table.shape[0] == table.shape[1] == 1:
    return 1.0
  mutual_info = _mutual_info(table)
  expected = _expected_mutual_info(table)
  denominator = 0.5 * (_entropy(table.sum(1)) + _entropy(table.sum(0))) - expected
  eps = np.finfo(np.float64).eps
  denominator = min(denominator, -eps) if denominator < 0 else max(denominator, eps)
  return (mutual_info - expected) / denominator


def clustering_metrics(key: jax.Array, embeddings: jax.Array, labels, *, num_clusters: int | None = None,
                       num_iterations: int = 100) -> dict[str, float]:
  """NMI and AMI of the :func:`kmeans` clusters of the embeddings against the labels (PML's protocol).

  Args:
    key: a PRNG key for k-means++.
    embeddings: ``[n, d]``.
    labels: ``[n]``.
    num_clusters: ``k``; ``None`` for the number of distinct labels, as PML.
    num_iterations: the most Lloyd iterations.

  Returns:
    ``{"nmi": ..., "ami": ...}`` floats.

  Raises:
    ValueError: as :func:`kmeans` and :func:`normalized_mutual_info`.
  """
  labels = np.asarray(labels)
  if getattr(embeddings, "ndim", None) != 2 or labels.shape != embeddings.shape[:1]:
    raise ValueError(f"expected embeddings [n, d] and labels [n], got {getattr(embeddings, 'shape', None)} and "
                     f"{labels.shape}.")
  k = len(np.unique(labels)) if num_clusters is None else num_clusters
  assignments, _ = _jitted_kmeans(key, jnp.asarray(embeddings), k, num_iterations=num_iterations)
  assignments = np.asarray(assignments)
  return {"nmi": normalized_mutual_info(labels, assignments), "ami": adjusted_mutual_info(labels, assignments)}


_jitted_kmeans = jax.jit(kmeans, static_argnums=2, static_argnames="num_iterations")
