"""Dense-prediction and AUC metrics against NumPy transcriptions (LibMTL's NYUv2 metrics) and
a brute-force pair count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax import metrics


def _brute_force_auc(scores, labels):
  positives, negatives = scores[labels == 1], scores[labels == 0]
  wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
  return wins / (len(positives) * len(negatives))


def test_roc_auc_matches_pair_count_with_ties_and_vmaps():
  rng = np.random.default_rng(0)
  # Rounded scores: many ties, within and across classes.
  scores = np.round(rng.normal(size=(60, 4)), 1).astype(np.float32)
  labels = (rng.random((60, 4)) < 0.4).astype(np.int32)
  got = jax.jit(jax.vmap(metrics.roc_auc, in_axes=1))(jnp.asarray(scores), jnp.asarray(labels))
  expected = [_brute_force_auc(scores[:, k], labels[:, k]) for k in range(4)]
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  auc = jax.jit(metrics.roc_auc)
  assert float(auc(jnp.ones(4), jnp.array([1, 0, 1, 0]))) == 0.5  # all tied
  assert float(auc(jnp.arange(4.0), jnp.array([0, 0, 1, 1]))) == 1.0
  assert np.isnan(auc(jnp.arange(4.0), jnp.ones(4, jnp.int32)))
  with pytest.raises(ValueError, match="same length"):
    metrics.roc_auc(jnp.ones(3), jnp.ones(4))


def _libmtl_seg(logits_nchw, labels, num_classes):
  """LibMTL's ``SegMetric`` (update then score), in NumPy."""
  pred = logits_nchw.argmax(1).ravel()
  gt = labels.ravel().astype(np.int64)
  k = (gt >= 0) & (gt < num_classes)
  record = np.bincount(num_classes * gt[k] + pred[k], minlength=num_classes**2)
  h = record.reshape(num_classes, num_classes).astype(np.float64)
  iu = np.diag(h) / (h.sum(1) + h.sum(0) - np.diag(h))
  return h, np.mean(iu), np.diag(h).sum() / h.sum()


def test_segmentation_scores_match_libmtl():
  rng = np.random.default_rng(1)
  num_classes = 5
  logits = rng.normal(size=(2, 6, 7, num_classes)).astype(np.float32)  # [n, H, W, C]
  labels = rng.integers(-1, num_classes, size=(2, 6, 7))               # -1: unlabelled

  @jax.jit
  def run(logits, labels):
    confusion = metrics.confusion_matrix(jnp.argmax(logits, -1), labels, num_classes)
    # A class absent from labels and predictions is left out of the mean (LibMTL: NaN).
    padded = jnp.pad(confusion, ((0, 1), (0, 1)))
    return confusion, metrics.segmentation_scores(confusion), metrics.segmentation_scores(padded)[0]

  confusion, (got_miou, got_accuracy), padded_miou = run(logits, labels)
  h, miou, accuracy = _libmtl_seg(np.moveaxis(logits, -1, 1), labels, num_classes)
  np.testing.assert_array_equal(confusion, h)
  np.testing.assert_allclose([got_miou, got_accuracy, padded_miou], [miou, accuracy, miou], rtol=1e-6)
  with pytest.raises(ValueError, match="same shape"):
    metrics.confusion_matrix(jnp.zeros(3, int), jnp.zeros(4, int), 2)


def test_depth_errors_match_libmtl_over_batches():
  rng = np.random.default_rng(2)
  batches = []
  for _ in range(3):
    target = rng.uniform(0.5, 8.0, size=(2, 4, 5, 1)) * (rng.random((2, 4, 5, 1)) < 0.7)
    batches.append((rng.uniform(0.5, 8.0, size=target.shape), target))
  # LibMTL's DepthMetric: per-batch means over valid pixels, weighted by the valid-pixel counts.
  abs_record, rel_record, counts = [], [], []
  for pred, gt in batches:
    mask = gt != 0
    abs_record.append(np.abs(pred - gt)[mask].mean())
    rel_record.append((np.abs(pred - gt)[mask] / gt[mask]).mean())
    counts.append(mask.sum())
  expected = [np.average(abs_record, weights=counts), np.average(rel_record, weights=counts)]
  sums = [metrics.depth_error_sums(jnp.asarray(p, jnp.float32), jnp.asarray(t, jnp.float32))
          for p, t in batches]
  total = jax.tree.map(lambda *x: sum(x), *sums)
  np.testing.assert_allclose(metrics.depth_errors(total), expected, rtol=1e-5)
  empty = metrics.depth_error_sums(jnp.ones(3), jnp.zeros(3))
  assert all(np.isnan(x) for x in metrics.depth_errors(empty))


def test_normal_angle_stats_match_libmtl():
  rng = np.random.default_rng(3)
  target = rng.normal(size=(2, 5, 6, 3))
  target /= np.linalg.norm(target, axis=-1, keepdims=True)
  target[rng.random((2, 5, 6)) < 0.2] = 0.0                    # pixels without ground truth
  pred = target * rng.uniform(0.5, 2.0, size=(2, 5, 6, 1)) + 0.6 * rng.normal(size=target.shape)
  # LibMTL's NormalMetric (channels first there).
  unit = pred / np.linalg.norm(pred, axis=-1, keepdims=True)
  mask = target.sum(-1) != 0
  errors = np.degrees(np.arccos(np.clip((unit * target).sum(-1)[mask], -1, 1)))
  expected = [errors.mean(), np.median(errors), (errors < 11.25).mean(), (errors < 22.5).mean(),
              (errors < 30).mean()]
  angles, valid = metrics.normal_angles(jnp.asarray(pred, jnp.float32), jnp.asarray(target, jnp.float32))
  np.testing.assert_array_equal(valid, mask)
  stats = jax.jit(metrics.normal_angle_stats)(angles, valid)
  np.testing.assert_allclose(stats, expected, rtol=1e-4, atol=1e-4)
  # Odd and even counts: the median as numpy's.
  for n in (5, 6):
    values = rng.uniform(0, 90, n)
    got = metrics.normal_angle_stats(jnp.asarray(values, jnp.float32)).median
    np.testing.assert_allclose(got, np.median(values), rtol=1e-6)
