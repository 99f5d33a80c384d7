"""Metric-based learners against NumPy references, symmetries, loops and finite differences."""

import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metalax
from metalax import meta
from metalax.meta.metric import matching_net, nearest_neighbour, protonet, r2d2
from metalax.types import Batch, Episode

NUM_WAYS = 3


def linear(params, inputs):
  return inputs @ params["w"]


def hand_made_episode(seed, num_shots=2, num_queries=2, input_dim=3):
  """A 3-way episode of random inputs, support rows not grouped by label (NumPy: no compiles)."""
  rng = np.random.default_rng(seed)
  support_labels = rng.permutation(np.repeat(np.arange(NUM_WAYS), num_shots)).astype(np.int32)
  query_labels = np.repeat(np.arange(NUM_WAYS), num_queries).astype(np.int32)
  support = Batch(jnp.asarray(rng.normal(size=(NUM_WAYS * num_shots, input_dim)), jnp.float32),
                  jnp.asarray(support_labels))
  query = Batch(jnp.asarray(rng.normal(size=(NUM_WAYS * num_queries, input_dim)), jnp.float32),
                jnp.asarray(query_labels))
  return Episode(support, query)


def linear_params(seed, input_dim=3, dim=4):
  return {"w": jnp.asarray(np.random.default_rng(seed).normal(size=(input_dim, dim)), jnp.float32)}


LEARNERS = {
    "protonet": lambda **kw: protonet(linear, num_ways=NUM_WAYS, **kw),
    "protonet_cosine": lambda **kw: protonet(linear, num_ways=NUM_WAYS, distance="cosine",
                                             temperature=0.5, **kw),
    "matching_net": lambda **kw: matching_net(linear, num_ways=NUM_WAYS, temperature=0.5, **kw),
    "nearest_neighbour": lambda **kw: nearest_neighbour(linear, num_ways=NUM_WAYS, **kw),
    "nearest_neighbour_k2_cosine": lambda **kw: nearest_neighbour(
        linear, num_ways=NUM_WAYS, k=2, distance="cosine", **kw),
    "r2d2": lambda **kw: r2d2(linear, num_ways=NUM_WAYS, reg=0.5, **kw),
}


def logits_of(learner, meta_params, episode):
  """Query logits after adaptation, in one compiled call."""
  return jax.jit(lambda mp, ep: learner.predict(learner.adapt(mp, ep.support), ep.query.inputs))(
      meta_params, episode)


def numpy_embeddings(params, episode):
  w = np.asarray(params["w"], np.float64)
  return (np.asarray(episode.support.inputs, np.float64) @ w,
          np.asarray(episode.query.inputs, np.float64) @ w,
          np.asarray(episode.support.labels))


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_similarity(queries, keys, distance):
  if distance == "cosine":
    return unit(queries) @ unit(keys).T
  return -((queries[:, None, :] - keys[None, :, :]) ** 2).sum(-1)


# NumPy references.


@pytest.mark.parametrize("distance, temperature", [("squared_euclidean", 1.0), ("cosine", 0.25)])
def test_protonet_matches_numpy(distance, temperature):
  episode, params = hand_made_episode(0), linear_params(1)
  learner = protonet(linear, num_ways=NUM_WAYS, distance=distance, temperature=temperature)
  task_params = learner.adapt(learner.init(params), episode.support)
  support, queries, labels = numpy_embeddings(params, episode)
  prototypes = np.stack([support[labels == c].mean(0) for c in range(NUM_WAYS)])
  np.testing.assert_allclose(task_params["prototypes"], prototypes, rtol=1e-5, atol=1e-6)
  expected = numpy_similarity(queries, prototypes, distance) / temperature
  np.testing.assert_allclose(learner.predict(task_params, episode.query.inputs), expected,
                             rtol=1e-4, atol=1e-5)


def test_matching_net_matches_numpy_attention():
  episode, params = hand_made_episode(2), linear_params(3)
  learner = matching_net(linear, num_ways=NUM_WAYS, temperature=0.2)
  support, queries, labels = numpy_embeddings(params, episode)
  scores = unit(queries) @ unit(support).T / 0.2
  attention = np.exp(scores - scores.max(1, keepdims=True))
  attention /= attention.sum(1, keepdims=True)
  probabilities = attention @ np.eye(NUM_WAYS)[labels]
  logits = logits_of(learner, learner.init(params), episode)
  np.testing.assert_allclose(logits, np.log(probabilities), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(jnp.exp(logits).sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("k, distance", [(1, "squared_euclidean"), (2, "cosine"),
                                         (5, "squared_euclidean")])  # 5 > num_shots: all of a class
def test_nearest_neighbour_matches_numpy(k, distance):
  episode = hand_made_episode(4, num_shots=3)
  params = linear_params(5)
  learner = nearest_neighbour(linear, num_ways=NUM_WAYS, k=k, distance=distance, temperature=0.5)
  support, queries, labels = numpy_embeddings(params, episode)
  similarity = numpy_similarity(queries, support, distance)
  expected = np.stack([np.sort(similarity[:, labels == c], axis=1)[:, ::-1][:, :k].mean(1)
                       for c in range(NUM_WAYS)], axis=1) / 0.5
  logits = logits_of(learner, learner.init(params), episode)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
  if k == 1:  # the arg-max is the label of the nearest support example
    np.testing.assert_array_equal(jnp.argmax(logits, 1), labels[np.argmax(similarity, 1)])


@pytest.mark.parametrize("dim", [2, 8])  # n = 6 support rows: primal (n > d + 1), then dual (Woodbury)
def test_r2d2_matches_primal_ridge_solution(dim):
  episode = hand_made_episode(6)
  params = linear_params(7, dim=dim)
  learner = r2d2(linear, num_ways=NUM_WAYS, reg=0.3, scale=2.0)
  meta_params = learner.init(params)
  meta_params["bias"] = jnp.float32(0.7)
  task_params = learner.adapt(meta_params, episode.support)
  support, queries, labels = numpy_embeddings(params, episode)
  n = len(support)
  x = np.concatenate([support, np.ones((n, 1))], 1)
  weights = np.linalg.solve(x.T @ x + 0.3 * n * np.eye(dim + 1), x.T @ np.eye(NUM_WAYS)[labels])
  np.testing.assert_allclose(task_params["ridge_weights"], weights, rtol=1e-4, atol=1e-5)
  expected = 2.0 * np.concatenate([queries, np.ones((len(queries), 1))], 1) @ weights + 0.7
  np.testing.assert_allclose(learner.predict(task_params, episode.query.inputs), expected,
                             rtol=1e-4, atol=1e-5)


def test_r2d2_fixed_scale_has_no_extra_meta_params():
  learner = r2d2(linear, num_ways=NUM_WAYS, scale=3.0, learn_scale=False)
  params = linear_params(8)
  assert set(learner.init(params)) == {"params"}
  episode = hand_made_episode(9)
  learned = r2d2(linear, num_ways=NUM_WAYS, scale=3.0)
  np.testing.assert_allclose(logits_of(learner, learner.init(params), episode),
                             logits_of(learned, learned.init(params), episode), rtol=1e-6)


# Symmetries.


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_support_order_invariance_and_label_permutation_equivariance(name):
  learner = LEARNERS[name]()
  episode, params = hand_made_episode(10), linear_params(11)
  meta_params = learner.init(params)
  with pytest.raises(TypeError):  # no inner loop, so no num_steps to accept and ignore
    learner.adapt(meta_params, episode.support, num_steps=1)
  metrics = jax.eval_shape(meta.evaluate(learner), meta_params, batch_of_episodes(0))  # no num_steps
  assert metrics["loss"].shape == metrics["accuracy"].shape == (3,)
  logits = jax.jit(lambda support, inputs: learner.predict(learner.adapt(meta_params, support), inputs))
  expected = logits(episode.support, episode.query.inputs)
  order = np.random.default_rng(12).permutation(episode.support.labels.shape[0])
  shuffled = jax.tree.map(lambda x: x[order], episode.support)
  np.testing.assert_allclose(logits(shuffled, episode.query.inputs), expected, rtol=1e-5, atol=1e-5)
  relabel = jnp.array([2, 0, 1], jnp.int32)  # class c is now called relabel[c]
  renamed = episode.support.replace(labels=relabel[episode.support.labels])
  np.testing.assert_allclose(logits(renamed, episode.query.inputs)[:, relabel], expected,
                             rtol=1e-5, atol=1e-5)


# jit, vmap and gradients.


def batch_of_episodes(seed, num_tasks=3):
  return jax.tree.map(lambda *xs: jnp.stack(xs),
                      *[hand_made_episode(seed + i) for i in range(num_tasks)])


@pytest.mark.parametrize("name", ["protonet_cosine", "matching_net", "nearest_neighbour_k2_cosine",
                                  "r2d2"])
def test_vmapped_batch_loss_equals_python_loop(name):
  kwargs = {} if name.startswith("r2d2") else {"learn_temperature": True}
  learner = LEARNERS[name](**kwargs)
  meta_params = learner.init(linear_params(15))
  episodes = batch_of_episodes(16)
  (loss, aux), grads = jax.jit(jax.value_and_grad(meta.batch_loss(learner), has_aux=True))(
      meta_params, episodes)
  one_task = jax.jit(jax.value_and_grad(lambda mp, episode: learner.loss(mp, episode)[0]))
  losses, loop_grads = zip(*[one_task(meta_params, jax.tree.map(lambda x: x[i], episodes))
                             for i in range(3)])
  np.testing.assert_allclose(loss, np.mean(losses), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads, jax.tree.map(lambda *g: sum(g) / 3, *loop_grads))
  assert 0.0 <= float(aux["accuracy"]) <= 1.0
  for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(leaf)), path
    if name.startswith("r2d2") and "bias" in jax.tree_util.keystr(path):
      assert np.allclose(leaf, 0.0, atol=1e-6)  # a bias shared by all classes cancels in the softmax
    else:
      assert np.abs(leaf).sum() > 0, path



@pytest.mark.parametrize("dim", [2, 8])
def test_r2d2_gradient_through_the_solve_matches_finite_differences(dim, finite_difference_grad):
  with jax.enable_x64(True):
    learner = r2d2(linear, num_ways=NUM_WAYS, reg=0.3, scale=2.0)
    episode = jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x,
                           hand_made_episode(17))
    meta_params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64),
                               learner.init(linear_params(18, dim=dim)))
    f = lambda mp: learner.loss(mp, episode)[0]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9),
                 jax.jit(jax.grad(f))(meta_params), finite_difference_grad(f, meta_params))


@pytest.mark.parametrize("name", ["matching_net", "nearest_neighbour_k2_cosine"])
def test_gradients_match_finite_differences(name):  # the masked logsumexp; top_k and where
  with jax.enable_x64(True):
    learner = LEARNERS[name](learn_temperature=True)
    episode = jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x,
                           hand_made_episode(19))
    meta_params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64),
                               learner.init(linear_params(20)))
    jax.test_util.check_grads(jax.jit(lambda mp: learner.loss(mp, episode)[0]), (meta_params,), order=1,
                              modes=("rev",), eps=1e-5)


def test_a_class_missing_from_the_support_gets_minus_infinity_and_finite_gradients():
  episode, params = hand_made_episode(21), linear_params(22)
  keep = np.asarray(episode.support.labels) < 2
  support = Batch(episode.support.inputs[keep], episode.support.labels[keep])
  query = Batch(episode.query.inputs[:4], episode.query.labels[:4])  # labels 0 and 1 only
  for learner in (matching_net(linear, num_ways=NUM_WAYS),
                  nearest_neighbour(linear, num_ways=NUM_WAYS, k=2)):
    meta_params = learner.init(params)
    # Traced (concrete labels are refused in adapt), the documented behaviour: logits -inf.
    logits = logits_of(learner, meta_params, Episode(support, query))
    assert np.all(np.isneginf(logits[:, 2])) and np.all(np.isfinite(logits[:, :2]))
    grads = jax.jit(jax.grad(lambda mp, ep: learner.loss(mp, ep)[0]))(meta_params, Episode(support, query))
    assert np.all(np.isfinite(grads["params"]["w"])) and np.abs(grads["params"]["w"]).sum() > 0


# Training and evaluation through the generic code.


def clusters(seed, num_classes=30, per_class=10, informative=2, noise=6):
  """``[num_classes, per_class, 8]``: Gaussian clusters in 2 dimensions among 6 wide noise ones."""
  rng = np.random.default_rng(seed)
  centres = 2.0 * rng.normal(size=(num_classes, 1, informative))
  points = centres + 0.3 * rng.normal(size=(num_classes, per_class, informative))
  noise = 3.0 * rng.normal(size=(num_classes, per_class, noise))
  return jnp.asarray(np.concatenate([points, noise], -1), jnp.float32)


def test_protonet_learns_to_ignore_noise_dimensions():
  model = metalax.models.MLP(features=(32,), num_outputs=16, activation=jnp.tanh)
  learner = protonet(metalax.models.from_linen(model), num_ways=5)
  meta_params = learner.init(model.init(jax.random.key(23), jnp.zeros((1, 8)))["params"])
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(meta_params)
  step = jax.jit(meta.train_step(learner, optimizer))
  sample = jax.jit(metalax.episodes.sample_episodes, static_argnums=(2, 3, 4, 5))
  train, test = clusters(24), clusters(25)
  evaluate = jax.jit(meta.evaluate(learner))  # no num_steps: these learners have no inner loop
  test_episodes = sample(jax.random.key(26), test, 8, 5, 2, 4)  # one compile for both
  before = float(evaluate(meta_params, test_episodes)["accuracy"].mean())
  for i in range(150):  # compiling dominates: a step takes about a millisecond
    meta_params, opt_state, metrics = step(meta_params, opt_state,
                                           sample(jax.random.key(100 + i), train, 8, 5, 2, 4))
  metrics = evaluate(meta_params, test_episodes)
  assert metrics["accuracy"].shape == (8,)
  after = float(metrics["accuracy"].mean())
  assert before < 0.45 and after > 0.65, (before, after)  # chance: 0.2


# Bad input.


@pytest.mark.parametrize("make, match", [
    (lambda: protonet(linear, num_ways=1), "num_ways must be a static int >= 2"),
    (lambda: protonet(linear, num_ways=2.0), "num_ways must be a static int >= 2"),
    (lambda: matching_net(linear, num_ways=True), "num_ways must be a static int >= 2"),
    (lambda: protonet(linear, num_ways=5, distance="manhattan"), "distance must be one of"),
    (lambda: nearest_neighbour(linear, num_ways=5, distance="l1"), "distance must be one of"),
    (lambda: protonet(linear, num_ways=5, temperature=0.0), "temperature must be a positive"),
    (lambda: matching_net(linear, num_ways=5, temperature=-1.0), "temperature must be a positive"),
    (lambda: nearest_neighbour(linear, num_ways=5, k=0), "k .* must be a static int >= 1"),
    (lambda: nearest_neighbour(linear, num_ways=5, k=1.5), "k .* must be a static int >= 1"),
    (lambda: r2d2(linear, num_ways=5, reg=0.0), "reg must be a positive"),
    (lambda: r2d2(linear, num_ways=5, reg=-1.0), "reg must be a positive"),
    (lambda: r2d2(linear, num_ways=5, scale=0.0), "scale must be a positive"),
    (lambda: r2d2(linear, num_ways=1), "num_ways must be a static int >= 2"),
])
def test_bad_hyperparameters_raise(make, match):
  with pytest.raises(ValueError, match=match):
    make()


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_bad_support_raises(name):
  learner = LEARNERS[name]()
  episode = hand_made_episode(30)
  meta_params = learner.init(linear_params(31))
  with pytest.raises(ValueError, match="support labels must be"):
    learner.adapt(meta_params, episode.support.replace(labels=episode.support.labels.astype(jnp.float32)))
  with pytest.raises(ValueError, match="support labels must be"):
    learner.adapt(meta_params, episode.support.replace(labels=episode.support.labels[:, None]))
  constructor = {"protonet": protonet, "protonet_cosine": protonet, "matching_net": matching_net,
                 "nearest_neighbour": nearest_neighbour,
                 "nearest_neighbour_k2_cosine": nearest_neighbour, "r2d2": r2d2}[name]
  flat = constructor(lambda p, x: jnp.sum(x @ p["w"], -1), num_ways=NUM_WAYS)  # embeddings [n]
  with pytest.raises(ValueError, match=r"embeddings \[n, d\]"):
    flat.adapt(meta_params, episode.support)
