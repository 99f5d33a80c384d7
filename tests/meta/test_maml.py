"""MAML family against closed forms, finite differences and loops."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metalax
from metalax import meta
from metalax.types import Batch, Episode

jax.config.update("jax_enable_x64", False)


def linear(params, inputs):
  return inputs @ params["w"]


def linear_episodes(key, num_tasks=3, dim=3, num_shots=5, num_queries=7):
  keys = jax.random.split(key, 4)
  ws = jax.random.normal(keys[0], (num_tasks, dim, 1))
  xs = jax.random.normal(keys[1], (num_tasks, num_shots, dim))
  xq = jax.random.normal(keys[2], (num_tasks, num_queries, dim))
  return Episode(Batch(xs, xs @ ws), Batch(xq, xq @ ws))


def take(tree, i):
  return jax.tree.map(lambda x: x[i], tree)


def mlp_setup(num_outputs=1):
  model = metalax.models.MLP(features=(8,), num_outputs=num_outputs, activation=jnp.tanh)
  params = model.init(jax.random.key(0), jnp.zeros((1, 1)))["params"]
  return metalax.models.from_linen(model), params



def assert_trees_close(a, b, **kwargs):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kwargs), a, b)


def test_zero_steps_is_plain_loss():
  apply_fn, params = mlp_setup()
  episodes = metalax.data.sample_sinusoid(jax.random.key(1), 4, 5, 6)
  learner = meta.maml(apply_fn, metalax.losses.squared_error, inner_lr=0.1, num_steps=0)
  loss, aux = meta.batch_loss(learner)(learner.init(params), episodes)
  outputs = jax.vmap(apply_fn, in_axes=(None, 0))(params, episodes.query.inputs)
  expected = jnp.mean((outputs - episodes.query.labels) ** 2)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  np.testing.assert_allclose(aux["loss"], expected, rtol=1e-6)


@pytest.mark.parametrize("first_order", [False, True])
def test_one_step_linear_least_squares_matches_closed_form(first_order):
  alpha = 0.1
  episode = take(linear_episodes(jax.random.key(2)), 0)
  params = {"w": jnp.array([[0.3], [-0.2], [0.5]])}
  learner = meta.maml(linear, metalax.losses.squared_error, inner_lr=alpha, num_steps=1,
                      first_order=first_order)
  (loss, _), grads = jax.value_and_grad(meta.episode_loss(learner), has_aux=True)(
      learner.init(params), episode)

  xs, ys = np.asarray(episode.support.inputs, np.float64), np.asarray(episode.support.labels, np.float64)
  xq, yq = np.asarray(episode.query.inputs, np.float64), np.asarray(episode.query.labels, np.float64)
  w = np.asarray(params["w"], np.float64)
  w1 = w - alpha * 2 / len(xs) * xs.T @ (xs @ w - ys)
  query_grad = 2 / len(xq) * xq.T @ (xq @ w1 - yq)
  jacobian = np.eye(3) - alpha * 2 / len(xs) * xs.T @ xs
  expected_grad = query_grad if first_order else jacobian.T @ query_grad
  np.testing.assert_allclose(loss, np.mean((xq @ w1 - yq) ** 2), rtol=1e-5)
  np.testing.assert_allclose(grads["params"]["w"], expected_grad, rtol=1e-4, atol=1e-6)


def test_first_order_equals_manual_stop_gradient():
  apply_fn, params = mlp_setup()
  episode = take(metalax.data.sample_sinusoid(jax.random.key(3), 1, 5, 5), 0)
  loss_fn = metalax.losses.squared_error

  def manual(params):
    for _ in range(2):
      grads = jax.grad(lambda p: jnp.mean(loss_fn(apply_fn(p, episode.support.inputs),
                                                  episode.support.labels)))(params)
      params = jax.tree.map(lambda p, g: p - 0.05 * jax.lax.stop_gradient(g), params, grads)
    return jnp.mean(loss_fn(apply_fn(params, episode.query.inputs), episode.query.labels))

  learner = meta.fomaml(apply_fn, loss_fn, inner_lr=0.05, num_steps=2)
  grads = jax.grad(lambda mp: meta.episode_loss(learner)(mp, episode)[0])(learner.init(params))
  assert_trees_close(grads["params"], jax.grad(manual)(params), rtol=1e-5, atol=1e-7)


def test_second_order_maml_and_metasgd_match_finite_differences(finite_difference_grad):
  with jax.enable_x64(True):
    apply_fn, params = mlp_setup()
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
    episode = jax.tree.map(lambda x: x.astype(jnp.float64),
                           take(metalax.data.sample_sinusoid(jax.random.key(4), 1, 5, 5), 0))
    for learner in (meta.maml(apply_fn, metalax.losses.squared_error, inner_lr=0.05, num_steps=2),
                    meta.metasgd(apply_fn, metalax.losses.squared_error, init_lr=0.05, num_steps=2)):
      meta_params = learner.init(params)
      f = lambda mp: meta.episode_loss(learner)(mp, episode)[0]
      assert_trees_close(jax.grad(f)(meta_params), finite_difference_grad(f, meta_params, eps=1e-5),
                         rtol=1e-5, atol=1e-7)


def test_metasgd_inner_step_uses_learned_rates():
  episode = take(linear_episodes(jax.random.key(5)), 0)
  params = {"w": jnp.array([[0.3], [-0.2], [0.5]])}
  learner = meta.metasgd(linear, metalax.losses.squared_error, init_lr=0.1, num_steps=1)
  meta_params = learner.init(params)
  meta_params["lrs"]["w"] = jnp.array([[0.1], [0.0], [0.2]])
  grads = jax.grad(lambda p: jnp.mean((episode.support.inputs @ p["w"] - episode.support.labels) ** 2))(params)
  expected = params["w"] - meta_params["lrs"]["w"] * grads["w"]
  np.testing.assert_allclose(learner.adapt(meta_params, episode.support)["w"], expected, rtol=1e-6)


def test_anil_adapts_only_the_head_and_trains_everything():
  apply_fn, params = mlp_setup()
  episode = take(metalax.data.sample_sinusoid(jax.random.key(6), 1, 5, 5), 0)
  learner = meta.anil(apply_fn, metalax.losses.squared_error, inner_lr=0.1, num_steps=3)
  meta_params = learner.init(params)
  adapted = learner.adapt(meta_params, episode.support)
  assert_trees_close(adapted["Dense_0"], params["Dense_0"])
  assert not np.allclose(adapted["head"]["kernel"], params["head"]["kernel"])
  grads = jax.grad(lambda mp: learner.loss(mp, episode)[0])(meta_params)
  assert np.abs(grads["params"]["Dense_0"]["kernel"]).sum() > 0
  with pytest.raises(ValueError, match="top-level entries"):
    meta.anil(apply_fn, metalax.losses.squared_error, inner_lr=0.1, num_steps=1,
              head="classifier").adapt(meta_params, episode.support)


def test_inner_optimizer_is_any_optax_transform():
  episode = take(linear_episodes(jax.random.key(7)), 0)
  params = {"w": jnp.array([[0.3], [-0.2], [0.5]])}
  learner = meta.maml(linear, metalax.losses.squared_error, num_steps=2,
                      inner_optimizer=optax.sgd(0.1, momentum=0.9))
  loss = lambda w: jnp.mean((episode.support.inputs @ w - episode.support.labels) ** 2)
  w, velocity = params["w"], jnp.zeros_like(params["w"])
  for _ in range(2):
    velocity = jax.grad(loss)(w) + 0.9 * velocity
    w = w - 0.1 * velocity
  np.testing.assert_allclose(learner.adapt(learner.init(params), episode.support)["w"], w, rtol=1e-6)


@pytest.mark.parametrize("num_steps", [1, 5])  # one segment; two segments of 2 and a rest of 1
def test_remat_gives_the_same_meta_gradient(num_steps):
  apply_fn, params = mlp_setup()
  episodes = metalax.data.sample_sinusoid(jax.random.key(8), 3, 5, 5)
  grads = []
  for remat in (False, True):
    learner = meta.maml(apply_fn, metalax.losses.squared_error, inner_lr=0.05, num_steps=num_steps,
                        remat=remat)
    grads.append(jax.grad(lambda mp: meta.batch_loss(learner)(mp, episodes)[0])(learner.init(params)))
  assert_trees_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_vmap_over_tasks_equals_python_loop():
  apply_fn, params = mlp_setup()
  episodes = metalax.data.sample_sinusoid(jax.random.key(9), 4, 5, 5)
  learner = meta.maml(apply_fn, metalax.losses.squared_error, inner_lr=0.05, num_steps=2)
  meta_params = learner.init(params)
  (loss, _), grads = jax.value_and_grad(meta.batch_loss(learner), has_aux=True)(meta_params, episodes)
  one_task = jax.jit(jax.value_and_grad(lambda mp, episode: learner.loss(mp, episode)[0]))
  losses, loop_grads = zip(*[one_task(meta_params, take(episodes, i)) for i in range(4)])
  np.testing.assert_allclose(loss, np.mean(losses), rtol=1e-6)
  assert_trees_close(grads, jax.tree.map(lambda *g: sum(g) / 4, *loop_grads), rtol=1e-5, atol=1e-7)


def test_train_step_compiles_once_and_learns():
  traces = []

  def counted_apply(params, inputs):
    traces.append(1)
    return linear(params, inputs)

  learner = meta.maml(counted_apply, metalax.losses.squared_error, inner_lr=0.1, num_steps=1)
  optimizer = optax.adam(0.05)
  meta_params = learner.init({"w": jnp.zeros((3, 1))})
  opt_state = optimizer.init(meta_params)
  step = jax.jit(meta.train_step(learner, optimizer))
  first = None
  for i in range(30):
    meta_params, opt_state, metrics = step(meta_params, opt_state, linear_episodes(jax.random.key(i)))
    first = metrics["loss"] if first is None else first
    if i == 0:
      traces_after_first = len(traces)
  assert len(traces) == traces_after_first  # no retracing after the first step
  assert float(metrics["loss"]) < float(first)


@pytest.mark.parametrize("tasks_per_chunk", [1, 2])
def test_task_chunks_give_the_whole_batch_step(tasks_per_chunk):
  apply_fn, params = mlp_setup()
  learner = meta.maml(apply_fn, metalax.losses.squared_error, inner_lr=0.1, num_steps=2)
  optimizer = optax.sgd(0.05)  # not Adam, which would hide a wrongly scaled gradient
  meta_params = learner.init(params)
  opt_state = optimizer.init(meta_params)
  episodes = metalax.data.sample_sinusoid(jax.random.key(3), 4, 5, 5)
  whole = jax.jit(meta.train_step(learner, optimizer))(meta_params, opt_state, episodes)
  chunked = jax.jit(meta.train_step(learner, optimizer, tasks_per_chunk=tasks_per_chunk))(
      meta_params, opt_state, episodes)
  assert_trees_close(chunked, whole, rtol=1e-5, atol=1e-6)
  # Chunks are a different partition of the same tasks: an unequal update would show here.
  assert not np.allclose(whole[0]["params"]["Dense_0"]["kernel"], meta_params["params"]["Dense_0"]["kernel"])


def test_task_chunks_must_divide_the_meta_batch():
  apply_fn, params = mlp_setup()
  learner = meta.maml(apply_fn, metalax.losses.squared_error, inner_lr=0.1, num_steps=1)
  optimizer = optax.sgd(0.1)
  meta_params = learner.init(params)
  episodes = metalax.data.sample_sinusoid(jax.random.key(3), 4, 5, 5)
  with pytest.raises(ValueError, match="must divide the meta-batch size, got 4"):
    meta.train_step(learner, optimizer, tasks_per_chunk=3)(meta_params, optimizer.init(meta_params), episodes)
  with pytest.raises(ValueError, match="positive int"):
    meta.train_step(learner, optimizer, tasks_per_chunk=0)
  with pytest.raises(ValueError, match="positive int"):
    meta.train_step(learner, optimizer, tasks_per_chunk=True)


def test_evaluate_before_and_after_adaptation():
  apply_fn, params = mlp_setup()
  episodes = metalax.data.sample_sinusoid(jax.random.key(10), 5, 10, 10)
  learner = meta.maml(apply_fn, metalax.losses.squared_error, inner_lr=0.01, num_steps=1)
  metrics = meta.evaluate(learner, num_steps=(0, 1, 5))(learner.init(params), episodes)
  assert metrics["loss"].shape == (3, 5)
  outputs = jax.vmap(apply_fn, in_axes=(None, 0))(params, episodes.query.inputs)
  np.testing.assert_allclose(metrics["loss"][0], jnp.mean((outputs - episodes.query.labels) ** 2, axis=(1, 2)),
                             rtol=1e-6)
  default = meta.evaluate(learner)(learner.init(params), episodes)
  np.testing.assert_allclose(default["loss"], metrics["loss"][1], rtol=1e-6)


def test_classification_aux_has_accuracy():
  apply_fn, params = mlp_setup(num_outputs=3)
  keys = jax.random.split(jax.random.key(11), 2)
  support = Batch(jax.random.normal(keys[0], (2, 6, 1)), jnp.tile(jnp.arange(3), (2, 2)))
  query = Batch(jax.random.normal(keys[1], (2, 9, 1)), jnp.tile(jnp.arange(3), (2, 3)))
  learner = meta.maml(apply_fn, metalax.losses.cross_entropy, inner_lr=0.4, num_steps=1)
  _, aux = meta.batch_loss(learner)(learner.init(params), Episode(support, query))
  assert set(aux) == {"loss", "accuracy"} and 0.0 <= float(aux["accuracy"]) <= 1.0


@pytest.mark.parametrize("kwargs, match", [
    (dict(inner_lr=0.1, num_steps=-1), "num_steps"),
    (dict(inner_lr=0.1, num_steps=1.5), "num_steps"),
    (dict(inner_lr=0.0, num_steps=1), "inner_lr"),
    (dict(inner_lr=-0.1, num_steps=1), "inner_lr"),
    (dict(num_steps=1), "exactly one of inner_lr"),
    (dict(inner_lr=0.1, inner_optimizer=optax.sgd(0.1), num_steps=1), "exactly one of inner_lr"),
])
def test_bad_hyperparameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    meta.maml(linear, metalax.losses.squared_error, **kwargs)


def test_bad_episodes_raise():
  learner = meta.maml(linear, metalax.losses.squared_error, inner_lr=0.1, num_steps=1)
  meta_params = learner.init({"w": jnp.zeros((3, 1))})
  good = linear_episodes(jax.random.key(12))
  with pytest.raises(ValueError, match="labels must match"):
    bad = Episode(Batch(good.support.inputs, good.support.labels[:, :-1]), good.query)
    meta.batch_loss(learner)(meta_params, bad)
  with pytest.raises(ValueError, match="same per-example shape"):
    bad = Episode(good.support, Batch(good.query.inputs[..., :2], good.query.labels))
    meta.batch_loss(learner)(meta_params, bad)
  with pytest.raises(ValueError, match="leading task axis"):
    bad = Episode(good.support, take(linear_episodes(jax.random.key(1), num_tasks=2), slice(0, 2)).query)
    meta.batch_loss(learner)(meta_params, bad)
  with pytest.raises(ValueError, match=r"at least 2 axes"):
    meta.batch_loss(learner)(meta_params, take(good, 0).replace(
        support=Batch(jnp.zeros(5), jnp.zeros(5))))
  with pytest.raises(ValueError, match="Episode"):
    meta.batch_loss(learner)(meta_params, (good.support, good.query))
