"""PML's miners with static shapes; every row of the miners table of metalax.losses.miners, against NumPy
transcriptions of pytorch-metric-learning's miners, losses and reducers."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax import losses

RNG = np.random.default_rng(3)
X = RNG.normal(size=(10, 3))
LABELS = np.array([0, 0, 0, 1, 1, 2, 2, 2, 3, 4], np.int32)   # classes 3 and 4: anchors with no positive
Z = X / np.linalg.norm(X, axis=1, keepdims=True)               # PML's distances normalise


def np_distances(z):
  return np.linalg.norm(z[:, None] - z[None], axis=-1)


def avg_non_zero(values):
  values = np.asarray(values, np.float64)
  return values[values > 0].mean() if np.any(values > 0) else 0.0


def mean_reducer(values):
  return np.mean(values) if len(values) else 0.0


# NumPy transcriptions of PML 2.x miners (src/pytorch_metric_learning/miners/*.py).

def np_batch_hard_miner(z, labels):
  """BatchEasyHardMiner(pos_strategy=HARD, neg_strategy=HARD) with LpDistance: get_max_per_row / get_min_per_row."""
  mat = np_distances(z)
  n = len(z)
  a, p, q = [], [], []
  for i in range(n):
    positives = [j for j in range(n) if j != i and labels[j] == labels[i]]
    negatives = [j for j in range(n) if labels[j] != labels[i]]
    if positives and negatives:
      a.append(i)
      p.append(max(positives, key=lambda j: mat[i, j]))
      q.append(min(negatives, key=lambda j: mat[i, j]))
  return a, p, q


def np_triplet_margin_miner(z, labels, margin, type_of_triplets):
  mat = np_distances(z)
  out = []
  for a, p, q in itertools.product(range(len(z)), repeat=3):
    if a == p or labels[a] != labels[p] or labels[a] == labels[q]:
      continue
    t = mat[a, q] - mat[a, p]
    keep = {"all": t <= margin, "hard": t <= margin and t <= 0, "semihard": 0 < t <= margin,
            "easy": t > margin}[type_of_triplets]
    if keep:
      out.append((a, p, q))
  return out


def np_multi_similarity_miner(z, labels, epsilon=0.1):
  mat = z @ z.T
  n = len(z)
  same = labels[:, None] == labels[None]
  pos_sorting, neg_sorting = mat.copy(), mat.copy()
  pos_sorting[~same] = np.inf
  neg_sorting[same] = -np.inf
  np.fill_diagonal(pos_sorting, np.inf)
  np.fill_diagonal(neg_sorting, -np.inf)
  if not np.any(same & ~np.eye(n, dtype=bool)) or not np.any(~same):
    return np.zeros((n, n), bool), np.zeros((n, n), bool)
  pos_idx, neg_idx = np.argsort(pos_sorting, 1, kind="stable"), np.argsort(neg_sorting, 1, kind="stable")
  pos_sorted, neg_sorted = np.take_along_axis(pos_sorting, pos_idx, 1), np.take_along_axis(neg_sorting, neg_idx, 1)
  hard_pos = np.where(pos_sorted - epsilon < neg_sorted[:, -1:])
  hard_neg = np.where(neg_sorted + epsilon > pos_sorted[:, :1])
  positive, negative = np.zeros((n, n), bool), np.zeros((n, n), bool)
  positive[hard_pos[0], pos_idx[hard_pos]] = True
  negative[hard_neg[0], neg_idx[hard_neg]] = True
  return positive, negative


def np_triplet_margin_loss(z, triplets, margin, reducer):
  mat = np_distances(z)
  return reducer([max(mat[a, p] - mat[a, q] + margin, 0) for a, p, q in triplets])


def np_multi_similarity_loss(z, labels, positive, negative, alpha=2.0, beta=50.0, base=0.5):
  s = z @ z.T
  out = []
  for a in range(len(z)):
    pos = [alpha * (base - s[a, p]) for p in range(len(z)) if positive[a, p]]
    neg = [beta * (s[a, q] - base) for q in range(len(z)) if negative[a, q]]
    out.append((np.log1p(np.sum(np.exp(pos))) / alpha if pos else 0.0)
               + (np.log1p(np.sum(np.exp(neg))) / beta if neg else 0.0))
  return np.mean(out)


def test_batch_hard_miner_matches_pml():
  for z, labels in ((Z, LABELS), (np.tile(Z[:1], (10, 1)), LABELS), (Z, np.zeros(10, np.int32))):
    positives, negatives, valid = losses.batch_hard_miner(z, labels)
    a, p, q = np_batch_hard_miner(z, labels)
    assert np.flatnonzero(valid).tolist() == a
    assert np.asarray(positives)[a].tolist() == p and np.asarray(negatives)[a].tolist() == q


@pytest.mark.parametrize("type_of_triplets", losses.miners.TRIPLET_TYPES)
def test_triplet_margin_miner_rows(type_of_triplets):
  # PML: TripletMarginLoss(margin=m)(z, labels, TripletMarginMiner(margin=r, type_of_triplets=t)(z, labels)),
  # with the default AvgNonZeroReducer and with MeanReducer.
  margin, miner_margin = 0.3, 0.5
  triplets = np_triplet_margin_miner(Z, LABELS, miner_margin, type_of_triplets)
  assert triplets  # every type selects something on this batch
  margin_range = losses.triplet_margin_miner(miner_margin, type_of_triplets)
  for nonzero, reducer in ((True, avg_non_zero), (False, mean_reducer)):
    got = jnp.mean(losses.triplet_loss(Z, LABELS, margin=margin, margin_range=margin_range, nonzero=nonzero))
    np.testing.assert_allclose(got, np_triplet_margin_loss(Z, triplets, margin, reducer), rtol=1e-5, atol=1e-7)


def test_table_rows_triplet_and_batch_hard():
  margin = 0.2

  @jax.jit
  def rows(z):
    p, q, valid = losses.batch_hard_miner(z, LABELS)
    return (jnp.mean(losses.triplet_loss(z, LABELS, margin=margin)),
            jnp.mean(losses.triplet_loss(z, LABELS, margin=margin, mining="batch_hard")),
            losses.mean_nonzero(losses.triplet_margin_loss(z, z[p], z[q], margin=margin), valid))

  with jax.enable_x64():
    all_triplets, batch_hard, mined = rows(jnp.asarray(Z))
  # TripletMarginLoss(margin=m)(z, labels) = jnp.mean(triplet_loss(z, labels, margin=m)).
  np.testing.assert_allclose(all_triplets, np_triplet_margin_loss(
      Z, np_triplet_margin_miner(Z, LABELS, np.inf, "all"), margin, avg_non_zero), rtol=1e-10)
  # TripletMarginLoss(margin=m)(z, labels, BatchHardMiner()(z, labels)): both metalax forms.
  expected = np_triplet_margin_loss(Z, zip(*np_batch_hard_miner(Z, LABELS)), margin, avg_non_zero)
  np.testing.assert_allclose(batch_hard, expected, rtol=1e-10)
  np.testing.assert_allclose(mined, expected, rtol=1e-10)


def test_table_rows_multi_similarity():
  for z, labels in ((Z, LABELS), (np.tile(Z[:1], (10, 1)), LABELS), (Z, np.zeros(10, np.int32))):
    positive, negative = losses.multi_similarity_miner(z, labels)
    expected_positive, expected_negative = np_multi_similarity_miner(z, labels)
    np.testing.assert_array_equal(positive, expected_positive)
    np.testing.assert_array_equal(negative, expected_negative)
  positive, negative = np_multi_similarity_miner(Z, LABELS)
  assert 0 < positive.sum() < (LABELS[:, None] == LABELS[None]).sum() - 10   # the miner drops some pairs

  @jax.jit
  def rows(z):
    pos, neg = losses.multi_similarity_miner(z, LABELS)
    values, all_pos, all_neg = losses.all_pair_losses(z, LABELS, power=1)
    return (jnp.mean(losses.multi_similarity_loss(z, LABELS, positive_mask=pos, negative_mask=neg)),
            losses.mean_nonzero(values, all_pos & pos) + losses.mean_nonzero(values, all_neg & neg))

  with jax.enable_x64():
    multi_similarity, contrastive = rows(jnp.asarray(Z))
  # MultiSimilarityLoss()(z, labels, MultiSimilarityMiner()(z, labels))
  np.testing.assert_allclose(multi_similarity, np_multi_similarity_loss(Z, LABELS, positive, negative), rtol=1e-10)
  # ContrastiveLoss()(z, labels, MultiSimilarityMiner()(z, labels)): pair losses, AvgNonZero on each side, summed.
  d = np_distances(Z)
  expected = (avg_non_zero([d[a, b] for a, b in zip(*np.nonzero(positive))])
              + avg_non_zero([max(1 - d[a, b], 0) for a, b in zip(*np.nonzero(negative))]))
  np.testing.assert_allclose(contrastive, expected, rtol=1e-10)


def test_miners_carry_no_gradient_and_errors():
  grad = jax.grad(lambda x: jnp.sum(losses.multi_similarity_miner(x, LABELS)[0] * 1.0))(jnp.asarray(Z, jnp.float32))
  np.testing.assert_array_equal(grad, 0.0)
  with pytest.raises(ValueError, match="type_of_triplets"):
    losses.triplet_margin_miner(0.2, "semi_hard")
  with pytest.raises(ValueError, match="labels"):
    losses.batch_hard_miner(Z, LABELS[:3])
