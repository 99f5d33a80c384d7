"""Recall@K, MAP@R, R-precision against brute force and hand-computed cases; NMI/AMI against their definitions
(the expected mutual information by enumerating permutations); k-means at a Lloyd fixed point."""

import itertools

import jax
import numpy as np
import pytest

from metalax import metrics

RNG = np.random.default_rng(0)
X = RNG.normal(size=(14, 3)).astype(np.float32)
LABELS = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 4, 0], np.int32)   # class 4 has one example: a lone query


def brute_force(queries, labels, references=None, reference_labels=None, ks=(1,)):
  """PML's AccuracyCalculator definitions, one query at a time, neighbours sorted by (distance, index)."""
  same = references is None
  references, reference_labels = (queries, labels) if same else (references, reference_labels)
  recalls, average_precisions, r_precisions = [], [], []
  for i, (q, label) in enumerate(zip(queries, labels)):
    order = sorted((float(np.linalg.norm(q - r)), j) for j, r in enumerate(references) if not (same and j == i))
    relevant = [reference_labels[j] == label for _, j in order]
    r = sum(relevant)
    if r == 0:
      continue   # a lone query
    recalls.append([any(relevant[:k]) for k in ks])
    r_precisions.append(sum(relevant[:r]) / r)
    average_precisions.append(sum(sum(relevant[:i + 1]) / (i + 1) for i in range(r) if relevant[i]) / r)
  recalls = np.mean(recalls, axis=0)
  return {**{f"recall@{k}": v for k, v in zip(ks, recalls)}, "map@r": np.mean(average_precisions),
          "r_precision": np.mean(r_precisions)}


def assert_metrics(got, expected):
  assert set(got) == set(expected)
  for name in expected:
    np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_retrieval_matches_brute_force():
  ks = (1, 2, 5)
  assert_metrics(metrics.retrieval_metrics(X, LABELS, ks=ks, batch_size=4), brute_force(X, LABELS, ks=ks))
  references, reference_labels = RNG.normal(size=(9, 3)).astype(np.float32), LABELS[:9]
  assert_metrics(metrics.retrieval_metrics(X, LABELS, ks=ks, reference_embeddings=references,
                                           reference_labels=reference_labels),
                 brute_force(X, LABELS, references, reference_labels, ks=ks))
  np.testing.assert_allclose(metrics.recall_at_k(X, LABELS, 2), brute_force(X, LABELS, ks=(2,))["recall@2"], rtol=1e-6)


def test_retrieval_hand_computed_and_edges():
  # Query 0 (class 0) ranks the references as relevant, not, relevant, not: R = 2, AP@R = (1/1) / 2, R-precision
  # 1/2. Query 1 (class 1): not, relevant, not, relevant: AP@R = (1/2) / 2, R-precision 1/2.
  references = np.arange(1.0, 5.0, dtype=np.float32)[:, None]
  got = metrics.retrieval_metrics(np.zeros((2, 1), np.float32), np.array([0, 1]), ks=(1, 2),
                                  reference_embeddings=references, reference_labels=np.array([0, 1, 0, 1]))
  assert_metrics(got, {"recall@1": 0.5, "recall@2": 1.0, "map@r": 0.375, "r_precision": 0.5})
  # Well-separated classes: every metric is 1.
  clustered = np.repeat(np.eye(3, dtype=np.float32) * 10, 4, axis=0) + 0.01 * RNG.normal(size=(12, 3))
  labels = np.repeat(np.arange(3), 4)
  assert_metrics(metrics.retrieval_metrics(clustered, labels, ks=(1, 3)),
                 {"recall@1": 1.0, "recall@3": 1.0, "map@r": 1.0, "r_precision": 1.0})
  # All-equal embeddings: neighbours in index order. Queries 0, 1 find their class first, 2 and 3 do not.
  equal = metrics.retrieval_metrics(np.ones((4, 2), np.float32), np.array([0, 0, 1, 1]))
  assert_metrics(equal, {"recall@1": 0.5, "map@r": 0.5, "r_precision": 0.5})
  # Only lone queries (a single example per class, or a single class with one example): NaN, as PML.
  lone = metrics.retrieval_metrics(X[:3], np.arange(3))
  assert all(np.isnan(v) for v in lone.values())
  # A single class: every neighbour is relevant.
  assert_metrics(metrics.retrieval_metrics(X, np.zeros(14, np.int32)),
                 {"recall@1": 1.0, "map@r": 1.0, "r_precision": 1.0})
  # Cosine retrieval equals Euclidean retrieval of normalised embeddings.
  unit = X / np.linalg.norm(X, axis=1, keepdims=True)
  assert_metrics(metrics.retrieval_metrics(X, LABELS, distance="cosine"), brute_force(unit, LABELS))


def np_entropy(labels):
  _, counts = np.unique(labels, return_counts=True)
  p = counts / counts.sum()
  return -np.sum(p * np.log(p))


def np_mutual_info(labels, clusters):
  n = len(labels)
  total = 0.0
  for u in np.unique(labels):
    for v in np.unique(clusters):
      n_uv = np.sum((labels == u) & (clusters == v))
      if n_uv:
        total += n_uv / n * np.log(n * n_uv / (np.sum(labels == u) * np.sum(clusters == v)))
  return total


def test_nmi_and_ami_match_definitions():
  labels = np.array([0, 0, 0, 1, 1, 2, 2])
  clusters = np.array([5, 5, 1, 1, 1, 2, 5])
  mi, mean_entropy = np_mutual_info(labels, clusters), (np_entropy(labels) + np_entropy(clusters)) / 2
  np.testing.assert_allclose(metrics.normalized_mutual_info(labels, clusters), mi / mean_entropy, rtol=1e-12)
  # E[MI] under the hypergeometric model = the mean MI over every permutation of the cluster assignment.
  expected_mi = np.mean([np_mutual_info(labels, clusters[list(p)]) for p in itertools.permutations(range(7))])
  np.testing.assert_allclose(metrics.adjusted_mutual_info(labels, clusters),
                             (mi - expected_mi) / (mean_entropy - expected_mi), rtol=1e-10)
  # Identical partitions up to renaming: 1 (one class and one cluster included); independent ones: NMI 0.
  for metric in (metrics.normalized_mutual_info, metrics.adjusted_mutual_info):
    np.testing.assert_allclose(metric(labels, 7 - labels), 1.0, rtol=1e-12)
    assert metric(np.zeros(5), np.zeros(5)) == 1.0
  assert metrics.normalized_mutual_info(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == 0.0
  with pytest.raises(ValueError, match="one length"):
    metrics.adjusted_mutual_info(labels, clusters[:3])


def test_kmeans_fixed_point_and_clustering_metrics():
  assignments, centroids = jax.jit(metrics.kmeans, static_argnums=2)(jax.random.key(0), X, 4)
  assignments, centroids = np.asarray(assignments), np.asarray(centroids)
  # A Lloyd fixed point: each point at its nearest centroid, each centroid the mean of its points.
  distances = np.sum((X[:, None] - centroids[None]) ** 2, -1)
  np.testing.assert_array_equal(assignments, np.argmin(distances, 1))
  for c in np.unique(assignments):
    np.testing.assert_allclose(centroids[c], X[assignments == c].mean(0), rtol=1e-5, atol=1e-6)
  # Separated blobs are recovered exactly (NMI = AMI = 1); all-equal embeddings stay finite.
  blobs = np.repeat(np.eye(3, dtype=np.float32) * 20, 5, axis=0) + RNG.normal(size=(15, 3)).astype(np.float32)
  scores = metrics.clustering_metrics(jax.random.key(1), blobs, np.repeat([7, 8, 9], 5))
  np.testing.assert_allclose([scores["nmi"], scores["ami"]], 1.0, rtol=1e-12)
  equal = metrics.clustering_metrics(jax.random.key(2), np.ones((15, 3), np.float32), np.repeat([7, 8, 9], 5))
  assert 0.0 <= equal["nmi"] <= 1.0 and np.isfinite(equal["ami"])
  with pytest.raises(ValueError, match="num_clusters"):
    metrics.kmeans(jax.random.key(0), X, 15)
  with pytest.raises(ValueError, match="every K"):
    metrics.retrieval_metrics(X, LABELS, ks=(14,))
