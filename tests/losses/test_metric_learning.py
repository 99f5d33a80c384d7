"""Metric-learning losses against NumPy transcriptions of pytorch-metric-learning's code: values, gradients, edges."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax import losses

RNG = np.random.default_rng(0)
X = RNG.normal(size=(8, 4))
LABELS = np.array([0, 0, 1, 1, 1, 2, 2, 3], np.int32)   # class 3 has a single example (an anchor with no positive)
PROXIES = RNG.normal(size=(5, 4))                        # class 4 has no example in the batch
ONE_CLASS = np.zeros(8, np.int32)
EQUAL = np.tile(X[:1], (8, 1))


def np_unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def np_logsumexp(values):
  values = np.asarray(values, np.float64)
  top = values.max()
  return top + np.log(np.sum(np.exp(values - top)))


def np_numeric_grad(f, x, eps=1e-6):
  grad = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    up, down = x.copy(), x.copy()
    up[index] += eps
    down[index] -= eps
    grad[index] = (f(up) - f(down)) / (2 * eps)
  return grad


# NumPy transcriptions of PML 2.x (src/pytorch_metric_learning/losses/*.py), loops where PML masks.

def np_proxy_nca(x, labels, proxies, softmax_scale=1.0):
  z, p = np_unit(x), np_unit(proxies)
  mat = -softmax_scale * np.sum((z[:, None] - p[None]) ** 2, -1)          # LpDistance(power=2), negated
  probabilities = np.exp(mat) / np.exp(mat).sum(1, keepdims=True)
  return -np.log(probabilities[np.arange(len(x)), labels])


def np_proxy_anchor(x, labels, proxies, margin=0.1, alpha=32.0):
  cos = np_unit(x) @ np_unit(proxies).T
  num_classes = len(proxies)
  pos_terms, neg_terms = [], []
  for c in range(num_classes):
    pos = [alpha * (margin - cos[i, c]) for i in range(len(x)) if labels[i] == c]
    neg = [alpha * (cos[i, c] + margin) for i in range(len(x)) if labels[i] != c]
    pos_terms.append(np_logsumexp(pos + [0.0]))
    neg_terms.append(np_logsumexp(neg + [0.0]))
  with_pos = len(set(labels.tolist()))
  return sum(pos_terms) / with_pos + sum(neg_terms) / num_classes


def np_arcface(x, labels, w_dc, margin_degrees=28.6, scale=64.0):
  """PML's ArcFaceLoss with W [d, C]."""
  margin = np.radians(margin_degrees)
  cosine = np_unit(x) @ np_unit(w_dc.T).T
  out = []
  for i, y in enumerate(labels):
    logits = cosine[i].copy()
    angle = np.arccos(np.clip(logits[y], -1, 1))
    logits[y] = np.cos(angle + margin) if angle <= np.pi - margin else np.cos(angle) - margin * np.sin(margin)
    logits = scale * logits
    out.append(np_logsumexp(logits) - logits[y])
  return np.array(out)


def np_cosface(x, labels, w_dc, margin=0.35, scale=64.0):
  cosine = np_unit(x) @ np_unit(w_dc.T).T
  out = []
  for i, y in enumerate(labels):
    logits = cosine[i].copy()
    logits[y] -= margin
    logits = scale * logits
    out.append(np_logsumexp(logits) - logits[y])
  return np.array(out)


def np_pairs(labels, positive_mask=None, negative_mask=None):
  n = len(labels)
  pos = [(a, p) for a in range(n) for p in range(n) if a != p and labels[a] == labels[p]
         and (positive_mask is None or positive_mask[a, p])]
  neg = [(a, m) for a in range(n) for m in range(n) if labels[a] != labels[m]
         and (negative_mask is None or negative_mask[a, m])]
  return pos, neg


def np_multi_similarity(x, labels, alpha=2.0, beta=50.0, base=0.5, positive_mask=None, negative_mask=None):
  s = np_unit(x) @ np_unit(x).T
  pos, neg = np_pairs(labels, positive_mask, negative_mask)
  out = []
  for a in range(len(x)):
    pos_values = [alpha * (base - s[a, p]) for b, p in pos if b == a]
    neg_values = [beta * (s[a, m] - base) for b, m in neg if b == a]
    pos_loss = np_logsumexp(pos_values + [0.0]) / alpha if pos_values else 0.0
    neg_loss = np_logsumexp(neg_values + [0.0]) / beta if neg_values else 0.0
    out.append(pos_loss + neg_loss)
  return np.array(out)


def np_circle(x, labels, m=0.4, gamma=80.0, frozen=None):
  """``frozen``: the embeddings the (detached) weights alpha are computed from (default: ``x``)."""
  s = np_unit(x) @ np_unit(x).T
  fixed = s if frozen is None else np_unit(frozen) @ np_unit(frozen).T
  pos, neg = np_pairs(labels)
  out = []
  for a in range(len(x)):
    lp = [-gamma * max(1 + m - fixed[a, p], 0) * (s[a, p] - (1 - m)) for b, p in pos if b == a]
    ln = [gamma * max(fixed[a, q] + m, 0) * (s[a, q] - m) for b, q in neg if b == a]
    out.append(np.logaddexp(0, np_logsumexp(lp) + np_logsumexp(ln)) if lp and ln else 0.0)
  return np.array(out)


def np_lifted(x, labels, neg_margin=1.0, pos_margin=0.0):
  """PML's LiftedStructureLoss on L2-normalised embeddings (LpDistance), mean over ordered positive pairs."""
  z = np_unit(x)
  d = np.linalg.norm(z[:, None] - z[None], axis=-1)
  pos, neg = np_pairs(labels)
  if not pos or not neg:
    return 0.0
  values = []
  for a, p in pos:
    terms = [neg_margin - d[b, m] for b, m in neg if b in (a, p)]
    lse = np_logsumexp(terms) if terms else 0.0
    values.append(max(lse + d[a, p] - pos_margin, 0) ** 2 / 2)
  return np.mean(values)


def np_n_pairs(anchors, positives):
  logits = anchors @ positives.T
  return np.array([np_logsumexp(row) - row[i] for i, row in enumerate(logits)])


# (metalax call, NumPy reference of the *reduced* loss as PML reduces it, metalax's reduction)
CASES = {
    "proxy_nca": (lambda x, y: losses.proxy_nca_loss(x, y, jnp.asarray(PROXIES), softmax_scale=3.0),
                  lambda x, y: np.mean(np_proxy_nca(x, y, PROXIES, 3.0)), jnp.mean),
    "proxy_anchor": (lambda x, y: losses.proxy_anchor_loss(x, y, jnp.asarray(PROXIES)),
                     lambda x, y: np_proxy_anchor(x, y, PROXIES), lambda v: v),
    "arcface": (lambda x, y: losses.arcface_loss(x, y, jnp.asarray(PROXIES), margin=np.radians(28.6)),
                lambda x, y: np.mean(np_arcface(x, y, PROXIES.T)), jnp.mean),
    "cosface": (lambda x, y: losses.cosface_loss(x, y, jnp.asarray(PROXIES)),
                lambda x, y: np.mean(np_cosface(x, y, PROXIES.T)), jnp.mean),
    "multi_similarity": (losses.multi_similarity_loss, lambda x, y: np.mean(np_multi_similarity(x, y)), jnp.mean),
    "circle": (losses.circle_loss, lambda x, y: (lambda v: v[v > 0].mean() if np.any(v > 0) else 0.0)(np_circle(x, y)),
               losses.mean_nonzero),
    "lifted_structure": (lambda x, y: losses.lifted_structure_loss(losses.l2_normalize(x), y), np_lifted, jnp.mean),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_pml_values_and_gradients(name):
  fn, reference, reduce = CASES[name]
  x = X.copy()
  if name == "arcface":   # an embedding almost opposite its class weight: ArcFace's fallback branch
    x[0] = -PROXIES[LABELS[0]] + 0.05 * RNG.normal(size=4)
  with jax.enable_x64():
    value_and_grad = jax.jit(jax.value_and_grad(lambda x, labels: reduce(fn(x, labels))))
    for labels in (LABELS, ONE_CLASS):
      value, grad = value_and_grad(jnp.asarray(x), labels)
      np.testing.assert_allclose(value, reference(x, labels), rtol=1e-9, atol=1e-12, err_msg=str(labels))
      if name == "circle":   # alpha carries no gradient: differentiate the reference with alpha frozen at x
        expected = np_numeric_grad(lambda y: (lambda v: v[v != 0].mean() if np.any(v != 0) else 0.0)(
            np_circle(y, labels, frozen=x)), x.copy())
      else:
        expected = np_numeric_grad(lambda y: reference(y, labels), x.copy())
      np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7, err_msg=str(labels))
    # All-equal embeddings: the reference's value, finite gradients.
    value, grad = value_and_grad(jnp.asarray(EQUAL), LABELS)
    np.testing.assert_allclose(value, reference(EQUAL, LABELS), rtol=1e-7, atol=1e-9)
    assert np.all(np.isfinite(grad))


def test_per_example_values_and_edges():
  @jax.jit
  def run(x, proxies):
    return (losses.proxy_nca_loss(x, LABELS, proxies), losses.multi_similarity_loss(x, LABELS),
            losses.circle_loss(x, LABELS), losses.circle_loss(x, ONE_CLASS), losses.lifted_structure_loss(x, LABELS),
            losses.lifted_structure_loss(x, ONE_CLASS),
            jax.grad(lambda p: losses.proxy_anchor_loss(x, LABELS, p))(proxies))

  with jax.enable_x64():
    proxy_nca, multi_similarity, circle, circle_one, lifted, lifted_one, proxy_grad = map(
        np.asarray, run(jnp.asarray(X), jnp.asarray(PROXIES)))
  np.testing.assert_allclose(proxy_nca, np_proxy_nca(X, LABELS, PROXIES), rtol=1e-10)
  np.testing.assert_allclose(multi_similarity, np_multi_similarity(X, LABELS), rtol=1e-10)
  np.testing.assert_allclose(circle, np_circle(X, LABELS), rtol=1e-10)
  assert circle[-1] == 0.0   # no positive
  np.testing.assert_array_equal(circle_one, 0.0)
  assert lifted[-1] == 0.0 and lifted.shape == (8,)
  np.testing.assert_array_equal(lifted_one, 0.0)
  # Proxy gradients reach the proxies (parameters the caller owns), against the reference.
  np.testing.assert_allclose(proxy_grad, np_numeric_grad(lambda p: np_proxy_anchor(X, LABELS, p), PROXIES.copy()),
                             rtol=1e-5, atol=1e-7)
  assert np.all(proxy_grad[4] != 0)   # a proxy with no example is still pushed away from the negatives


def test_n_pairs_matches_pml_on_two_views():
  anchors, positives = X[:4], X[4:]
  with jax.enable_x64():
    value, grads = jax.value_and_grad(lambda a, p: jnp.mean(losses.n_pairs_loss(a, p)), argnums=(0, 1))(
        jnp.asarray(anchors), jnp.asarray(positives))
  np.testing.assert_allclose(value, np.mean(np_n_pairs(anchors, positives)), rtol=1e-10)
  np.testing.assert_allclose(grads[0], np_numeric_grad(lambda a: np.mean(np_n_pairs(a, positives)), anchors.copy()),
                             rtol=1e-5, atol=1e-8)
  # PML's NPairsLoss picks, for each label, its first positive pair in row-major order: on [anchors; positives]
  # labelled [0..N-1, 0..N-1] that is (i, i + N), i.e. n_pairs_loss(anchors, positives).
  labels = np.tile(np.arange(4), 2)
  pairs = [(a, p) for a, p in itertools.product(range(8), repeat=2) if a != p and labels[a] == labels[p]]
  first = {}
  for a, p in pairs:
    first.setdefault(labels[a], (a, p))
  assert [first[c] for c in range(4)] == [(i, i + 4) for i in range(4)]
  np.testing.assert_allclose(losses.n_pairs_loss(anchors, anchors), np_n_pairs(anchors, anchors), rtol=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda: losses.proxy_nca_loss(X, LABELS, PROXIES[:3]), r"labels must be in \[0, 3\)"),
    (lambda: losses.arcface_loss(X, LABELS, PROXIES[:, :3]), "weights"),
    (lambda: losses.proxy_nca_loss(X, LABELS, PROXIES, softmax_scale=0.0), "softmax_scale"),
    (lambda: losses.multi_similarity_loss(X, LABELS, positive_mask=np.ones((3, 3), bool)), "positive_mask"),
    (lambda: losses.n_pairs_loss(X[:4], X[:3]), "same shape"),
    (lambda: losses.lifted_structure_loss(X, LABELS, distance="l1"), "distance"),
])
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
