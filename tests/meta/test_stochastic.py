"""The PRNG-key contract: stochastic models (NNX dropout) in every learner and the generic code."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import metalax
from metalax import meta
from metalax.meta import inner
from metalax.types import Batch, Episode

NUM_WAYS, NUM_SHOTS, NUM_QUERIES, NUM_TASKS, DIM = 3, 2, 2, 2, 4


class DropoutNet(nnx.Module):
  """A tiny NNX model with dropout: logits for the gradient learners, embeddings for the others."""

  def __init__(self, rngs, num_outputs=NUM_WAYS):
    self.body = nnx.Linear(DIM, 6, rngs=rngs)
    self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.head = nnx.Linear(6, num_outputs, rngs=rngs)

  def __call__(self, x):
    return self.head(self.dropout(jnp.tanh(self.body(x))))


def episodes():
  """``[NUM_TASKS]`` 3-way episodes of random inputs (NumPy: no compiles)."""
  rng = np.random.default_rng(0)

  def batch(per_class):
    inputs = rng.normal(size=(NUM_TASKS, NUM_WAYS * per_class, DIM)).astype(np.float32)
    labels = np.tile(np.repeat(np.arange(NUM_WAYS), per_class), (NUM_TASKS, 1)).astype(np.int32)
    return Batch(jnp.asarray(inputs), jnp.asarray(labels))

  return Episode(batch(NUM_SHOTS), batch(NUM_QUERIES))


def small_model_fn(params, support_embeddings, support_labels, query_embeddings):
  """A cheap black-box model: query embeddings times a matrix, plus support-class means."""
  one_hot = jax.nn.one_hot(support_labels, NUM_WAYS)
  means = one_hot.T @ support_embeddings / NUM_SHOTS
  return query_embeddings @ params["w"] + query_embeddings @ means.T


def learners(apply_fn):
  ce = metalax.losses.cross_entropy
  gradient = dict(inner_lr=0.1, num_steps=1)   # per-step keys: test_key_reaches_every_inner_step_and_task
  return {
      "maml": meta.maml(apply_fn, ce, **gradient),
      "fomaml": meta.fomaml(apply_fn, ce, **gradient),
      "metasgd": meta.metasgd(apply_fn, ce, init_lr=0.1, num_steps=1),
      "anil": meta.anil(apply_fn, ce, **gradient),
      "reptile": meta.reptile(apply_fn, ce, **gradient),
      "imaml": meta.imaml(apply_fn, ce, reg=1.0, cg_steps=2, **gradient),
      "protonet": meta.protonet(apply_fn, num_ways=NUM_WAYS),
      "matching_net": meta.matching_net(apply_fn, num_ways=NUM_WAYS),
      "nearest_neighbour": meta.nearest_neighbour(apply_fn, num_ways=NUM_WAYS),
      "r2d2": meta.r2d2(apply_fn, num_ways=NUM_WAYS),
      "blackbox": meta.blackbox(apply_fn, small_model_fn, num_ways=NUM_WAYS),
  }


def init(name, learner, params):
  if name == "blackbox":
    return learner.init({"embed": params, "model": {"w": jnp.eye(NUM_WAYS)}})
  return learner.init(params)


@pytest.mark.parametrize("name", ["maml", "fomaml", "metasgd", "anil", "reptile", "imaml", "protonet",
                                  "matching_net", "nearest_neighbour", "r2d2", "blackbox"])
def test_every_learner_draws_from_the_key(name):
  apply_fn, params = metalax.models.from_nnx(DropoutNet(nnx.Rngs(0)))
  learner = learners(apply_fn)[name]
  meta_params = init(name, learner, params)
  data = episodes()
  # One compile, three calls: the loss and gradients at keys 1, 1 (again) and 2.
  value_and_grad = jax.jit(jax.value_and_grad(meta.batch_loss(learner), has_aux=True))
  results = [value_and_grad(meta_params, data, jax.random.key(k)) for k in (1, 1, 2)]
  objectives = [float(objective) for (objective, _), _ in results]
  query_losses = [float(aux["loss"]) for (_, aux), _ in results]
  assert objectives[0] == objectives[1] and query_losses[0] == query_losses[1]
  assert objectives[0] != objectives[2] and query_losses[0] != query_losses[2]
  grads = results[2][1]
  for leaf in jax.tree.leaves(grads):
    assert np.isfinite(leaf).all()
  assert any(np.abs(np.asarray(leaf)).sum() > 0 for leaf in jax.tree.leaves(grads))


def test_key_reaches_every_inner_step_and_task():
  """A model that returns its key's noise: each inner step and each task sees its documented key."""

  def noisy(params, inputs, key=None):
    noise = 0.0 if key is None else jax.random.normal(key, ())
    return inputs @ params["w"] + noise

  apply_fn = metalax.models.from_function(noisy)
  learner = meta.maml(apply_fn, metalax.losses.squared_error, inner_lr=0.1, num_steps=3)
  params = {"w": jnp.ones((2, 1))}
  rng = np.random.default_rng(1)
  support = Batch(jnp.asarray(rng.normal(size=(4, 2)), jnp.float32), jnp.zeros((4, 1)))
  key = jax.random.key(7)
  adapted = jax.jit(lambda p, key: learner.adapt({"params": p}, support, key=key))(params, key)
  w = params["w"]
  for step_key in jax.random.split(key, 3):    # the documented per-step keys
    residual = support.inputs @ w + jax.random.normal(step_key, ()) - support.labels
    w = w - 0.1 * 2 * support.inputs.T @ residual / 4
  np.testing.assert_allclose(adapted["w"], w, rtol=1e-5)

  # batch_loss: episode b gets jax.random.split(key, B)[b]; episode_loss then splits (adapt, predict).
  data = Episode(jax.tree.map(lambda x: jnp.stack([x, x]), support),
                 jax.tree.map(lambda x: jnp.stack([x, x]), support))
  batch_loss = jax.jit(meta.batch_loss(learner))
  episode_loss = jax.jit(meta.episode_loss(learner))
  total, _ = batch_loss({"params": params}, data, key)
  per_task = [episode_loss({"params": params}, take(data, b), k)[0]
              for b, k in enumerate(jax.random.split(key, 2))]
  np.testing.assert_allclose(total, np.mean(per_task), rtol=1e-6)
  assert per_task[0] != per_task[1]


def take(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def test_inner_loop_keys_with_remat_match_without():
  objective = lambda leaves, key: jnp.sum((leaves[0] - jax.random.normal(key, (3,))) ** 2)
  update = lambda grads, state, params: ([-0.1 * grads[0]], state)
  start = [jnp.zeros(3)]
  key = jax.random.key(3)
  plain = inner.inner_loop(objective, start, (), update, num_steps=5, key=key)
  remat = inner.inner_loop(objective, start, (), update, num_steps=5, remat=True, key=key)
  manual = start[0]
  for step_key in jax.random.split(key, 5):
    manual = manual - 0.1 * 2 * (manual - jax.random.normal(step_key, (3,)))
  np.testing.assert_allclose(plain[0], manual, rtol=1e-5)
  np.testing.assert_allclose(remat[0], manual, rtol=1e-5)


def test_train_step_and_evaluate_thread_the_key():
  def noisy(params, inputs, key=None):
    noise = 0.0 if key is None else 0.1 * jax.random.normal(key, inputs.shape[:1] + (1,))
    return inputs @ params["w"] + noise

  learner = meta.fomaml(metalax.models.from_function(noisy), metalax.losses.squared_error,
                        inner_lr=0.1, num_steps=1)
  rng = np.random.default_rng(2)
  batch = lambda: Batch(jnp.asarray(rng.normal(size=(4, 3, 2)), jnp.float32),
                        jnp.asarray(rng.normal(size=(4, 3, 1)), jnp.float32))
  data = Episode(batch(), batch())
  meta_params = {"params": {"w": jnp.ones((2, 1))}}
  optimizer = optax.sgd(0.1)
  opt_state = optimizer.init(meta_params)
  key = jax.random.key(0)
  step = jax.jit(meta.train_step(learner, optimizer))
  whole = step(meta_params, opt_state, data, key)
  chunked = jax.jit(meta.train_step(learner, optimizer, tasks_per_chunk=2))(meta_params, opt_state, data, key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), whole[0], chunked[0])
  other = step(meta_params, opt_state, data, jax.random.key(1))
  assert whole[2]["loss"] != other[2]["loss"]

  metrics = jax.jit(meta.evaluate(learner, num_steps=(0, 1)))(meta_params, data, key)
  assert metrics["loss"].shape == (2, 4)
  np.testing.assert_allclose(np.mean(metrics["loss"][1]), whole[2]["loss"], rtol=1e-6)
  with pytest.raises(ValueError, match="one PRNG key"):
    meta.batch_loss(learner)(meta_params, data, jax.random.split(key, 4))


def test_nnx_state_params_with_anil_and_a_dict_mask():
  """anil and a dict inner_mask on nnx.State parameters adapt the head only, with and without a key."""
  apply_fn, params = metalax.models.from_nnx(DropoutNet(nnx.Rngs(0)))
  ce = metalax.losses.cross_entropy
  support = take(episodes().support, 0)
  anil = meta.anil(apply_fn, ce, inner_lr=0.5, num_steps=1)
  masked = meta.maml(apply_fn, ce, inner_lr=0.5, num_steps=1, inner_mask={"head": True, "body": False})
  key = jax.random.key(4)
  adapted = [jax.jit(learner.adapt)({"params": params}, support, key=key) for learner in (anil, masked)]
  for state in adapted:
    assert isinstance(state, nnx.State)
    np.testing.assert_array_equal(state["body"]["kernel"][...], params["body"]["kernel"][...])
    assert np.abs(state["head"]["kernel"][...] - params["head"]["kernel"][...]).max() > 0
  jax.tree.map(np.testing.assert_array_equal, *adapted)
  with pytest.raises(ValueError, match="no mask entry"):
    meta.maml(apply_fn, ce, inner_lr=0.5, num_steps=1, inner_mask={"head": True}).adapt(
        {"params": params}, support)
