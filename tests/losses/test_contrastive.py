"""Contrastive, metric-learning and reconstruction losses against NumPy loops, limiting cases, jit/vmap, gradients."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax import losses

RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 5)).astype(np.float32)
LABELS = np.array([0, 0, 1, 1, 1, 2, 2, 3], np.int32)  # class 3 has a single example


def np_distance(a, b, distance):
  if distance == "cosine":
    return 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  squared = float(np.sum((a - b) ** 2))
  return squared if distance == "squared_euclidean" else np.sqrt(squared)


def np_unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("distance", losses.contrastive.DISTANCES)
def test_pairwise_distances(distance):
  y = RNG.normal(size=(3, 5)).astype(np.float32)
  expected = np.array([[np_distance(a, b, distance) for b in y] for a in X])
  np.testing.assert_allclose(losses.pairwise_distances(X, y, distance), expected, rtol=1e-4, atol=1e-5)
  own = losses.pairwise_distances(X, distance=distance)
  np.testing.assert_array_equal(np.diag(own), 0.0)


def np_triplets(x, labels, margin, distance):
  """All valid triplets' losses, in a dict keyed by (a, p, n)."""
  out = {}
  for a, p, n in itertools.product(range(len(x)), repeat=3):
    if a != p and labels[a] == labels[p] and labels[a] != labels[n]:
      out[a, p, n] = max(0.0, np_distance(x[a], x[p], distance) - np_distance(x[a], x[n], distance) + margin)
  return out


def np_selected_triplets(x, labels, margin, distance, mining, margin_range=None):
  """The triplets each mining selects, by brute force: {anchor: [loss of each selected triplet]}."""
  d = np.array([[np_distance(a, b, distance) for b in x] for a in x])
  selected = {}
  for a in range(len(x)):
    positives = [p for p in range(len(x)) if p != a and labels[p] == labels[a]]
    negatives = [n for n in range(len(x)) if labels[n] != labels[a]]
    if not positives or not negatives:
      continue
    if mining == "all":
      low, high = margin_range or (-np.inf, np.inf)
      selected[a] = [max(0, d[a, p] - d[a, n] + margin) for p in positives for n in negatives
                     if low < d[a, n] - d[a, p] <= high]
    elif mining == "batch_hard":
      selected[a] = [max(0, max(d[a, p] for p in positives) - min(d[a, n] for n in negatives) + margin)]
    else:
      selected[a] = []
      for p in positives:
        farther = [d[a, n] for n in negatives if d[a, n] > d[a, p]]
        chosen = min(farther) if farther else max(d[a, n] for n in negatives)
        selected[a].append(max(0, d[a, p] - chosen + margin))
  return selected


def np_triplet_shares(selected, n, nonzero):
  """Per-anchor shares n * sum(anchor's triplets) / T, T = the selected triplets (with a positive loss)."""
  values = [v for vs in selected.values() for v in vs]
  total = max(sum(v > 0 for v in values) if nonzero else len(values), 1)
  return np.array([n * sum(selected.get(a, [])) / total for a in range(n)])


@pytest.mark.parametrize("distance", losses.contrastive.DISTANCES)
@pytest.mark.parametrize("mining", losses.contrastive.MININGS)
def test_triplet_loss_matches_numpy(distance, mining):
  margin = 0.3
  selected = np_selected_triplets(X, LABELS, margin, distance, mining)
  for nonzero in (True, False):
    got = losses.triplet_loss(X, LABELS, margin=margin, distance=distance, mining=mining, nonzero=nonzero)
    np.testing.assert_allclose(got, np_triplet_shares(selected, len(X), nonzero), rtol=1e-4, atol=1e-5)
    assert got[-1] == 0.0  # the single example of class 3 has no positive
  # The mean is the batch loss: over the selected triplets with a positive loss, or over all of them.
  values = [v for vs in selected.values() for v in vs]
  np.testing.assert_allclose(jnp.mean(losses.triplet_loss(X, LABELS, margin=margin, distance=distance, mining=mining)),
                             np.mean([v for v in values if v > 0]), rtol=1e-4)
  np.testing.assert_allclose(jnp.mean(losses.triplet_loss(X, LABELS, margin=margin, distance=distance, mining=mining,
                                                          nonzero=False)), np.mean(values), rtol=1e-4)


@pytest.mark.parametrize("margin_range", [(0.0, 0.3), (-np.inf, 0.0), (-np.inf, 0.3), (0.3, np.inf), (-0.2, 0.1)])
def test_triplet_loss_margin_range_matches_numpy(margin_range):
  z = np_unit(X)
  selected = np_selected_triplets(z, LABELS, 0.2, "euclidean", "all", margin_range)
  for nonzero in (True, False):
    got = losses.triplet_loss(z, LABELS, margin=0.2, margin_range=margin_range, nonzero=nonzero)
    np.testing.assert_allclose(got, np_triplet_shares(selected, len(X), nonzero), rtol=1e-4, atol=1e-5)


def dense_triplet_reference(embeddings, labels, margin, distance, mining, nonzero):
  """The [n, n, n] implementation triplet_loss had before its O(n^2) form (kept here as the reference)."""
  distances = losses.pairwise_distances(embeddings, distance=distance)
  same = labels[:, None] == labels[None, :]
  positive, negative = same & ~jnp.eye(labels.shape[0], dtype=bool), ~same
  has_both = jnp.any(positive, axis=1) & jnp.any(negative, axis=1)
  n = embeddings.shape[0]
  if mining == "all":
    valid = positive[:, :, None] & negative[:, None, :]
    values = jnp.where(valid, jax.nn.relu(distances[:, :, None] - distances[:, None, :] + margin), 0.0)
    count = jnp.sum(values > 0) if nonzero else jnp.sum(valid)
    return n * jnp.sum(values, axis=(1, 2)) / jnp.maximum(count, 1)
  if mining == "batch_hard":
    hardest_positive = jnp.max(jnp.where(positive, distances, -jnp.inf), axis=1)
    hardest_negative = jnp.min(jnp.where(negative, distances, jnp.inf), axis=1)
    values = jnp.where(has_both, jax.nn.relu(hardest_positive - hardest_negative + margin), 0.0)
    return n * values / jnp.maximum(jnp.sum(values > 0) if nonzero else jnp.sum(has_both), 1)
  farther = negative[:, None, :] & (distances[:, None, :] > distances[:, :, None])     # [a, p, n]
  closest_farther = jnp.min(jnp.where(farther, distances[:, None, :], jnp.inf), axis=2)
  farthest = jnp.max(jnp.where(negative, distances, -jnp.inf), axis=1)[:, None]
  chosen = jnp.where(jnp.any(farther, axis=2), closest_farther, farthest)
  values = jax.nn.relu(distances - jnp.where(jnp.isfinite(chosen), chosen, 0.0) + margin)
  selected = positive & has_both[:, None]
  values = jnp.where(selected, values, 0.0)
  count = jnp.sum(values > 0) if nonzero else jnp.sum(selected)
  return n * jnp.sum(values, axis=1) / jnp.maximum(count, 1)


def test_triplet_loss_o_n2_form_equals_dense_values_and_gradients():
  rng = np.random.default_rng(1)
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4], np.int32)
  # nonzero only changes the (integer, gradient-free) count: checked against brute force above, not here.
  settings = [(distance, mining, True) for distance in ("euclidean", "cosine") for mining in losses.contrastive.MININGS]

  @jax.jit
  def both(x, weights):  # every setting in one compiled program: values and gradients of the new and old forms
    out = []
    for distance, mining, nonzero in settings:
      new = lambda x: losses.triplet_loss(x, labels, margin=0.5, distance=distance, mining=mining, nonzero=nonzero)
      old = lambda x: dense_triplet_reference(x, labels, 0.5, distance, mining, nonzero)
      # A weighted sum checks every share's gradient.
      out.append((new(x), old(x), jax.grad(lambda x: new(x) @ weights)(x), jax.grad(lambda x: old(x) @ weights)(x)))
    return out

  with jax.enable_x64():
    results = both(jnp.asarray(rng.normal(size=(12, 4))), jnp.asarray(rng.uniform(size=12)))
  for setting, (new, old, new_grad, old_grad) in zip(settings, results):
    np.testing.assert_allclose(new, old, rtol=1e-10, atol=1e-12, err_msg=str(setting))
    np.testing.assert_allclose(new_grad, old_grad, rtol=1e-9, atol=1e-12, err_msg=str(setting))


def test_triplet_loss_edge_cases():
  # One class: no negatives, every share 0 (and zero gradients); all-equal embeddings: every triplet costs the
  # margin, whatever the mining, with finite gradients; an anchor with no positive gets 0.
  one_class = np.zeros(6, np.int32)

  @jax.jit
  def run(x6, equal):
    out = []
    for mining in losses.contrastive.MININGS:
      single = lambda x: jnp.mean(losses.triplet_loss(x, one_class, mining=mining))
      coinciding = lambda x: jnp.mean(losses.triplet_loss(x, LABELS, margin=0.25, mining=mining))
      out.append((losses.triplet_loss(x6, one_class, mining=mining), jax.grad(single)(x6), coinciding(equal),
                  jax.grad(coinciding)(equal)))
    return out

  for values, grad, mean, equal_grad in run(X[:6], np.tile(X[:1], (8, 1))):
    np.testing.assert_array_equal(values, 0.0)
    np.testing.assert_array_equal(grad, 0.0)
    np.testing.assert_allclose(mean, 0.25, rtol=1e-6)
    assert np.all(np.isfinite(equal_grad))


def test_all_triplet_losses_and_pml_reduction():
  z = np_unit(X)
  reference = np_triplets(z, LABELS, 0.05, "euclidean")
  values, valid = losses.all_triplet_losses(losses.l2_normalize(jnp.asarray(X)), LABELS, margin=0.05)
  assert int(valid.sum()) == len(reference)
  for (a, p, n), value in reference.items():
    np.testing.assert_allclose(values[a, p, n], value, rtol=1e-4, atol=1e-5)
  nonzero = [v for v in reference.values() if v > 0]
  np.testing.assert_allclose(losses.mean_nonzero(values, valid), np.mean(nonzero), rtol=1e-4)
  # PML's TripletMarginLoss() is also the default triplet_loss, in O(n^2) memory.
  np.testing.assert_allclose(jnp.mean(losses.triplet_loss(z, LABELS, margin=0.05)), np.mean(nonzero), rtol=1e-4)
  explicit = np.array(list(reference))
  np.testing.assert_allclose(
      losses.triplet_margin_loss(z[explicit[:, 0]], z[explicit[:, 1]], z[explicit[:, 2]], margin=0.05),
      list(reference.values()), rtol=1e-4, atol=1e-5)


def test_triplet_loss_zero_when_negatives_beyond_margin():
  centres = np.eye(4, dtype=np.float32)[[0, 0, 1, 1, 2, 2]] * 10
  x = centres + 0.01 * RNG.normal(size=centres.shape).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 2, 2])
  for mining in losses.contrastive.MININGS:
    np.testing.assert_array_equal(losses.triplet_loss(x, labels, margin=1.0, mining=mining), 0.0)
  # Coinciding embeddings: every triplet costs exactly the margin.
  np.testing.assert_allclose(losses.triplet_loss(np.zeros((6, 3)), labels, margin=0.5), 0.5)


def test_pair_contrastive_loss_and_pml_contrastive():
  x1, x2 = X[:4], X[4:]
  same = np.array([True, False, True, False])
  got = losses.pair_contrastive_loss(x1, x2, same, pos_margin=0.1, neg_margin=5.0, power=2)
  d = np.linalg.norm(x1 - x2, axis=1)
  expected = np.where(same, np.maximum(d - 0.1, 0) ** 2, np.maximum(5.0 - d, 0) ** 2)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  # PML ContrastiveLoss(): normalised embeddings, power 1, AvgNonZero on positives and negatives, summed.
  z = np_unit(X)
  pos = [np_distance(z[i], z[j], "euclidean") for i in range(8) for j in range(8) if i != j and LABELS[i] == LABELS[j]]
  neg = [max(0, 1 - np_distance(z[i], z[j], "euclidean"))
         for i in range(8) for j in range(8) if LABELS[i] != LABELS[j]]
  pml = np.mean([v for v in pos if v > 0]) + np.mean([v for v in neg if v > 0])
  values, positive, negative = losses.all_pair_losses(losses.l2_normalize(jnp.asarray(X)), LABELS, power=1)
  np.testing.assert_allclose(losses.mean_nonzero(values, positive) + losses.mean_nonzero(values, negative), pml,
                             rtol=1e-4)
  per_anchor = losses.contrastive_loss(X, LABELS)
  assert per_anchor.shape == (8,)


def np_info_nce(q, k_pos, k_neg, tau):
  out = []
  for i in range(len(q)):
    negatives = k_neg[i] if k_neg.ndim == 3 else k_neg
    logits = np.concatenate([[q[i] @ k_pos[i]], negatives @ q[i]]) / tau
    out.append(np.log(np.sum(np.exp(logits - logits.max()))) + logits.max() - logits[0])
  return np.array(out)


@pytest.mark.parametrize("shared", [True, False])
def test_info_nce_matches_numpy(shared):
  q, k = X[:4], X[4:]
  negatives = RNG.normal(size=(6, 5) if shared else (4, 6, 5)).astype(np.float32)
  got = losses.info_nce(q, k, negatives, temperature=0.2)
  expected = np_info_nce(np_unit(q), np_unit(k), np_unit(negatives), 0.2)
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  # All similarities equal: log(k + 1).
  ones = np.ones((4, 5), np.float32)
  np.testing.assert_allclose(losses.info_nce(ones, ones, np.ones((6, 5)), temperature=0.2), np.log(7), rtol=1e-5)


def np_nt_xent(z, tau):
  z = np_unit(z)
  n = len(z) // 2
  out = []
  for i in range(2 * n):
    logits = np.array([z[i] @ z[j] / tau for j in range(2 * n) if j != i])
    partner = (i + n) % (2 * n)
    positive = z[i] @ z[partner] / tau
    out.append(np.log(np.sum(np.exp(logits))) - positive)
  return np.array(out)


def test_nt_xent_matches_numpy_and_supcon():
  got = losses.nt_xent(X, temperature=0.5)
  np.testing.assert_allclose(got, np_nt_xent(X, 0.5), rtol=1e-4)
  views = np.tile(np.arange(4), 2)
  np.testing.assert_allclose(losses.supcon_loss(X, views, temperature=0.5), got, rtol=1e-5)


def test_nt_xent_minimal_when_views_coincide_and_negatives_orthogonal():
  tau, n = 0.2, 3
  basis = np.eye(n, dtype=np.float32)
  best = losses.nt_xent(np.concatenate([basis, basis]), temperature=tau)
  np.testing.assert_allclose(best, np.log(1 + (2 * n - 2) * np.exp(-1 / tau)), rtol=1e-5)
  perturbed = np.concatenate([basis, basis]) + 0.1 * RNG.normal(size=(2 * n, n)).astype(np.float32)
  assert float(jnp.mean(losses.nt_xent(perturbed, temperature=tau))) > float(jnp.mean(best))


def np_supcon(z, labels, tau):
  z = np_unit(z)
  out = []
  for i in range(len(z)):
    denominator = np.log(sum(np.exp(z[i] @ z[a] / tau) for a in range(len(z)) if a != i))
    positives = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
    out.append(-np.mean([z[i] @ z[p] / tau - denominator for p in positives]) if positives else 0.0)
  return np.array(out)


def test_supcon_matches_numpy_and_pml_reduction():
  got = losses.supcon_loss(X, LABELS, temperature=0.1)
  expected = np_supcon(X, LABELS, 0.1)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  assert got[-1] == 0.0
  np.testing.assert_allclose(losses.mean_nonzero(got), expected[expected > 0].mean(), rtol=1e-4)


def test_collapse_diagnostics():
  collapsed = np.tile(X[:1], (8, 1))
  np.testing.assert_allclose(losses.embedding_std(collapsed), 0.0, atol=1e-6)
  np.testing.assert_allclose(losses.effective_rank(collapsed + 1e-9), 1.0, atol=1e-3)
  line = np.outer(np.arange(8.0), X[0]).astype(np.float32)
  np.testing.assert_allclose(losses.effective_rank(line), 1.0, rtol=1e-3)
  # Centred orthogonal directions with equal norms: full rank.
  spread = np.concatenate([np.eye(4), -np.eye(4)]).astype(np.float32)
  np.testing.assert_allclose(losses.effective_rank(spread), 4.0, rtol=1e-4)
  metrics = losses.collapse_metrics(spread)
  np.testing.assert_allclose(metrics["embedding_std"], 1.0, rtol=1e-5)


def test_reconstruction_and_sparsity():
  targets = RNG.uniform(size=(3, 4, 4, 1)).astype(np.float32)
  logits = RNG.normal(size=(3, 4, 4, 1)).astype(np.float32)
  p = 1 / (1 + np.exp(-logits))
  expected = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).reshape(3, -1).mean(1)
  np.testing.assert_allclose(losses.bernoulli_reconstruction(logits, targets), expected, rtol=1e-5)
  binary = (targets > 0.5).astype(np.float32)
  assert float(jnp.max(losses.bernoulli_reconstruction(40 * (2 * binary - 1), binary))) < 1e-6
  np.testing.assert_allclose(losses.gaussian_reconstruction(p, targets), ((p - targets) ** 2).reshape(3, -1).mean(1),
                             rtol=1e-5)
  codes = RNG.uniform(size=(5, 3)).astype(np.float32)
  np.testing.assert_allclose(losses.l1_sparsity(codes), np.abs(codes).mean(1), rtol=1e-6)
  rho, rho_hat = 0.1, codes.mean(0)
  np.testing.assert_allclose(losses.kl_sparsity(codes, rho),
                             rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat)), rtol=1e-5)
  np.testing.assert_allclose(losses.kl_sparsity(np.full((4, 2), 0.1, np.float32), 0.1), 0.0, atol=1e-6)


PER_ANCHOR = {
    "triplet_all": lambda x: losses.triplet_loss(x, LABELS, mining="all"),
    "triplet_hard": lambda x: losses.triplet_loss(x, LABELS, mining="batch_hard"),
    "triplet_semi": lambda x: losses.triplet_loss(x, LABELS, mining="semi_hard", distance="cosine"),
    "contrastive": lambda x: losses.contrastive_loss(x, LABELS),
    "nt_xent": lambda x: losses.nt_xent(x),
    "supcon": lambda x: losses.supcon_loss(x, LABELS),
    "info_nce": lambda x: losses.info_nce(x[:4], x[4:], x),
}


@pytest.mark.parametrize("name", sorted(PER_ANCHOR))
def test_jit_vmap_agree_with_loop_and_gradients_finite(name, finite_difference_grad):
  fn = PER_ANCHOR[name]
  batches = np.stack([X, X[::-1] * 2, X + 1]).astype(np.float32)
  looped = np.stack([fn(b) for b in batches])
  np.testing.assert_allclose(jax.jit(jax.vmap(fn))(batches), looped, rtol=1e-5, atol=1e-6)
  grad = jax.grad(lambda x: jnp.mean(fn(x)))(jnp.asarray(X))
  assert np.all(np.isfinite(grad))
  # Coinciding rows (zero distances) keep gradients finite too.
  assert np.all(np.isfinite(jax.grad(lambda x: jnp.mean(fn(x)))(jnp.zeros_like(X))))
  with jax.enable_x64():
    x64 = jnp.asarray(X, jnp.float64)
    objective = lambda x: jnp.mean(fn(x))
    np.testing.assert_allclose(jax.grad(objective)(x64), finite_difference_grad(objective, x64, eps=1e-6),
                               rtol=1e-4, atol=1e-6)


def test_learnable_temperature_under_jit_with_gradient():
  # A traced temperature (a learnable parameter) works under jit; its gradient matches central differences of the
  # NumPy reference, and a concrete temperature <= 0 is still refused.
  negatives = RNG.normal(size=(6, 5)).astype(np.float32)
  views = np.tile(np.arange(4), 2)
  objectives = {
      "nt_xent": (lambda t: jnp.mean(losses.nt_xent(X, temperature=t)), lambda t: np.mean(np_nt_xent(X, t))),
      "supcon": (lambda t: jnp.mean(losses.supcon_loss(X, views, temperature=t)),
                 lambda t: np.mean(np_supcon(X, views, t))),
      "info_nce": (lambda t: jnp.mean(losses.info_nce(X[:4], X[4:], negatives, temperature=t)),
                   lambda t: np.mean(np_info_nce(np_unit(X[:4]), np_unit(X[4:]), np_unit(negatives), t))),
  }
  for name, (objective, reference) in objectives.items():
    # A learnable log-temperature, as CLIP's.
    value, grad = jax.jit(jax.value_and_grad(lambda log_t: objective(jnp.exp(log_t))))(jnp.log(0.3))
    np.testing.assert_allclose(value, reference(0.3), rtol=1e-4, err_msg=name)
    eps = 1e-4
    expected = (reference(np.exp(np.log(0.3) + eps)) - reference(np.exp(np.log(0.3) - eps))) / (2 * eps)
    np.testing.assert_allclose(grad, expected, rtol=2e-3, err_msg=name)
    with pytest.raises(ValueError, match="temperature"):
      objective(-0.1)
    with pytest.raises(ValueError, match="temperature"):
      objective(jnp.asarray(0.0))


@pytest.mark.parametrize("call, match", [
    (lambda: losses.triplet_loss(X, LABELS, mining="hardest"), "mining"),
    (lambda: losses.triplet_loss(X, LABELS[:3]), "labels"),
    (lambda: losses.triplet_loss(X, LABELS, mining="batch_hard", margin_range=(0, 1)), "margin_range"),
    (lambda: losses.pairwise_distances(X, distance="l1"), "distance"),
    (lambda: losses.nt_xent(X[:3]), "2N"),
    (lambda: losses.supcon_loss(X, LABELS, temperature=0.0), "temperature"),
    (lambda: losses.kl_sparsity(X, 1.5), "target"),
])
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
