"""The black-box learner and its transformer: masking, symmetry, loops, gradients, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metalax
from metalax import meta
from metalax.meta.blackbox import EpisodeTransformer, blackbox
from metalax.meta.metric import protonet
from metalax.types import Batch, Episode

NUM_WAYS = 3
DIM = 4


def linear(params, inputs):
  return inputs @ params["w"]


def episode_of(seed, num_shots=2, num_queries=2, input_dim=3):
  rng = np.random.default_rng(seed)
  support_labels = rng.permutation(np.repeat(np.arange(NUM_WAYS), num_shots)).astype(np.int32)
  return Episode(
      Batch(jnp.asarray(rng.normal(size=(NUM_WAYS * num_shots, input_dim)), jnp.float32),
            jnp.asarray(support_labels)),
      Batch(jnp.asarray(rng.normal(size=(NUM_WAYS * num_queries, input_dim)), jnp.float32),
            jnp.repeat(jnp.arange(NUM_WAYS, dtype=jnp.int32), num_queries)))


def setup(num_ways=NUM_WAYS, input_dim=3):
  """A one-layer transformer learner, its parameters initialised by ``init`` from ``embedding_dim``."""
  model = EpisodeTransformer(num_ways=num_ways, num_layers=1, model_dim=16, hidden_dim=32,
                             num_heads=2)
  w = jnp.asarray(np.random.default_rng(0).normal(size=(input_dim, DIM)), jnp.float32)
  learner = blackbox(linear, model, num_ways=num_ways, embedding_dim=DIM)
  return learner, learner.init({"w": w})


def test_parameters_shapes_and_no_query_interaction():
  learner, meta_params = setup()
  assert set(meta_params["params"]) == {"embed", "model"}
  assert {"tokens", "head"} <= set(meta_params["params"]["model"])
  episode = episode_of(2)
  logits = jax.jit(lambda support, inputs: learner.predict(learner.adapt(meta_params, support), inputs))
  expected = logits(episode.support, episode.query.inputs)
  assert expected.shape == (6, NUM_WAYS) and np.all(np.isfinite(expected))
  # Each query is classified on its own: changing one query leaves the others' logits unchanged ...
  changed = episode.query.inputs.at[0].add(5.0)
  np.testing.assert_allclose(logits(episode.support, changed)[1:], expected[1:], rtol=1e-5, atol=1e-6)
  assert not np.allclose(logits(episode.support, changed)[0], expected[0])
  # ... and equals classifying it alone.
  np.testing.assert_allclose(logits(episode.support, episode.query.inputs[2:3]), expected[2:3],
                             rtol=1e-5, atol=1e-6)
  # No positional encoding: the order of the support rows does not matter.
  order = np.random.default_rng(3).permutation(6)
  np.testing.assert_allclose(logits(jax.tree.map(lambda x: x[order], episode.support),
                                    episode.query.inputs), expected, rtol=1e-5, atol=1e-5)
  # The labels are read: relabelling the support changes the logits.
  relabelled = episode.support.replace(labels=(episode.support.labels + 1) % NUM_WAYS)
  assert not np.allclose(logits(relabelled, episode.query.inputs), expected)


def test_any_model_fn_works_a_class_mean_rule_reproduces_protonet():
  def class_means(params, support_embeddings, support_labels, query_embeddings):
    one_hot = jax.nn.one_hot(support_labels, NUM_WAYS)
    prototypes = one_hot.T @ support_embeddings / one_hot.sum(0)[:, None]
    return -jnp.sum((query_embeddings[:, None] - prototypes[None]) ** 2, -1) * params["scale"]

  episode = episode_of(4)
  w = {"w": jnp.asarray(np.random.default_rng(5).normal(size=(3, DIM)), jnp.float32)}
  learner = blackbox(linear, class_means, num_ways=NUM_WAYS)
  loss, aux = jax.jit(learner.loss)(learner.init({"embed": w, "model": {"scale": 1.0}}), episode)
  reference_loss, reference_aux = protonet(linear, num_ways=NUM_WAYS).loss({"params": w}, episode)
  np.testing.assert_allclose(loss, reference_loss, rtol=1e-5)
  np.testing.assert_allclose(aux["accuracy"], reference_aux["accuracy"])


def test_init_completes_the_parameters_of_the_default_transformer():
  w = {"w": jnp.asarray(np.random.default_rng(6).normal(size=(3, DIM)), jnp.float32)}
  learner = blackbox(linear, num_ways=NUM_WAYS, embedding_dim=DIM, seed=1)
  meta_params = learner.init(w)
  assert set(meta_params["params"]) == {"embed", "model"}
  model = meta_params["params"]["model"]
  assert model["tokens"]["kernel"].shape == (DIM + NUM_WAYS, 64)      # [d + num_ways, model_dim]
  assert model["head"]["kernel"].shape == (64, NUM_WAYS)
  assert {"LayerNorm_0", "MultiHeadDotProductAttention_1", "Dense_3"} <= set(model)  # two layers
  jax.tree.map(np.testing.assert_array_equal, learner.init(meta_params["params"]), meta_params)  # taken as is


def test_vmapped_batch_loss_equals_python_loop_and_gradients_reach_everything():
  learner, meta_params = setup()
  episodes = jax.tree.map(lambda *xs: jnp.stack(xs), *[episode_of(10 + i) for i in range(3)])
  (loss, _), grads = jax.jit(jax.value_and_grad(meta.batch_loss(learner), has_aux=True))(
      meta_params, episodes)
  one_task = jax.jit(jax.value_and_grad(lambda mp, episode: learner.loss(mp, episode)[0]))
  losses, loop_grads = zip(*[one_task(meta_params, jax.tree.map(lambda x: x[i], episodes))
                             for i in range(3)])
  np.testing.assert_allclose(loss, np.mean(losses), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads, jax.tree.map(lambda *g: sum(g) / 3, *loop_grads))
  for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(leaf)) and np.abs(leaf).sum() > 0, jax.tree_util.keystr(path)
  with pytest.raises(TypeError):
    learner.adapt(meta_params, episodes.support, num_steps=1)


def clusters(seed, num_classes=30, per_class=10, informative=2, noise=6):
  """``[num_classes, per_class, 8]``: Gaussian clusters in 2 dimensions among 6 wide noise ones."""
  rng = np.random.default_rng(seed)
  centres = 2.0 * rng.normal(size=(num_classes, 1, informative))
  points = centres + 0.3 * rng.normal(size=(num_classes, per_class, informative))
  noise = 3.0 * rng.normal(size=(num_classes, per_class, noise))
  return jnp.asarray(np.concatenate([points, noise], -1), jnp.float32)


def test_transformer_learns_few_shot_classification_in_context():
  num_ways = 5
  embedder = metalax.models.MLP(features=(32,), num_outputs=16, activation=jnp.tanh)
  model = EpisodeTransformer(num_ways=num_ways, model_dim=32, hidden_dim=64, num_heads=2)
  learner = blackbox(metalax.models.from_linen(embedder), model, num_ways=num_ways, embedding_dim=16,
                     seed=7)
  meta_params = learner.init(jax.jit(embedder.init)(jax.random.key(6), jnp.zeros((1, 8)))["params"])
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(meta_params)
  step = jax.jit(meta.train_step(learner, optimizer))
  sample = jax.jit(metalax.episodes.sample_episodes, static_argnums=(2, 3, 4, 5))
  train, test = clusters(8, num_classes=100), clusters(9)
  evaluate = jax.jit(meta.evaluate(learner))  # no num_steps: there is no inner loop
  test_episodes = sample(jax.random.key(10), test, 8, num_ways, 2, 4)
  before = float(evaluate(meta_params, test_episodes)["accuracy"].mean())
  # In-context learning appears after a plateau (about 200 steps here); a step takes a few
  # milliseconds, compiling dominates.
  for i in range(800):
    meta_params, opt_state, _ = step(meta_params, opt_state,
                                     sample(jax.random.key(100 + i), train, 8, num_ways, 2, 4))
  after = float(evaluate(meta_params, test_episodes)["accuracy"].mean())
  assert before < 0.35 and after > 0.6, (before, after)  # chance: 0.2; 0.76 when written


@pytest.mark.parametrize("make, match", [
    (lambda: blackbox(linear, EpisodeTransformer(num_ways=3), num_ways=1),
     "num_ways must be a static int >= 2"),
    (lambda: blackbox(linear, EpisodeTransformer(num_ways=3), num_ways=5),
     "num_ways=5, but the EpisodeTransformer has num_ways=3"),
    (lambda: blackbox(linear, "transformer", num_ways=3), "model_fn must be callable"),
    (lambda: blackbox(linear, lambda *a: None, num_ways=3, embedding_dim=4).init({"w": 1.0}),
     "init expects {'embed': embed_params, 'model': model_params}"),
    (lambda: blackbox(linear, num_ways=3).init({"w": 1.0}), "when the model is a linen module and embedding_dim"),
    (lambda: blackbox(linear, num_ways=3, embedding_dim=0), "embedding_dim must be a positive int"),
])
def test_bad_arguments_raise(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_bad_support_or_model_output_raises():
  learner, meta_params = setup()
  episode = episode_of(11)
  with pytest.raises(ValueError, match="support labels must be"):
    learner.adapt(meta_params, episode.support.replace(labels=episode.support.labels[:, None]))
  wrong = blackbox(linear, lambda p, support, labels, queries: jnp.zeros((queries.shape[0], 2)), num_ways=NUM_WAYS)
  task_params = wrong.adapt(wrong.init(meta_params["params"]), episode.support)
  with pytest.raises(ValueError, match=r"logits \[n, num_ways\] = \(6, 3\), got \(6, 2\)"):
    wrong.predict(task_params, episode.query.inputs)
