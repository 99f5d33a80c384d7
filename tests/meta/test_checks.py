"""Clear errors for episodes that do not fit the learner: wrong numbers of ways, labels, a missing task axis."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metalax
from metalax import meta
from metalax.types import Batch, Episode


def linear(params, inputs):
  return inputs @ params["w"]


def episodes(num_ways, num_tasks=2, num_shots=2, dim=3):
  """``[num_tasks]`` episodes with ``num_ways`` classes (NumPy: no compiles)."""
  rng = np.random.default_rng(num_ways)
  labels = np.tile(np.repeat(np.arange(num_ways), num_shots), (num_tasks, 1)).astype(np.int32)
  batch = lambda: Batch(jnp.asarray(rng.normal(size=labels.shape + (dim,)), jnp.float32), jnp.asarray(labels))
  return Episode(batch(), batch())


LEARNERS = {
    "protonet": lambda n: meta.protonet(linear, num_ways=n),
    "matching_net": lambda n: meta.matching_net(linear, num_ways=n),
    "nearest_neighbour": lambda n: meta.nearest_neighbour(linear, num_ways=n),
    "r2d2": lambda n: meta.r2d2(linear, num_ways=n),
    "blackbox": lambda n: meta.blackbox(linear, lambda p, s, y, q: q @ p, num_ways=n),
}


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_metric_learners_refuse_episodes_with_another_number_of_ways(name):
  learner = LEARNERS[name](5)
  with pytest.raises(ValueError, match=rf"{name}\(num_ways=5\).*has 3 classes.*needs num_ways=3"):
    learner.validate(episodes(3))
  bad = episodes(5)
  bad = bad.replace(query=bad.query.replace(labels=bad.query.labels.at[0, 0].set(5)))
  with pytest.raises(ValueError, match=r"query labels must lie in \[0, 5\)"):
    learner.validate(bad)
  learner.validate(episodes(5))   # a 5-way batch passes


def test_generic_functions_validate_concrete_episodes():
  learner = meta.protonet(linear, num_ways=5)
  meta_params = learner.init({"w": jnp.eye(3)})
  three_way = episodes(3)
  calls = {
      "batch_loss": lambda: meta.batch_loss(learner)(meta_params, three_way),
      "episode_loss": lambda: meta.episode_loss(learner)(meta_params, jax.tree.map(lambda x: x[0], three_way)),
      "evaluate": lambda: meta.evaluate(learner)(meta_params, three_way),
      "train_step": lambda: meta.train_step(learner, optax.sgd(0.1))(meta_params, None, three_way),
  }
  for name, call in calls.items():
    with pytest.raises(ValueError, match="needs num_ways=3"):
      call()
      pytest.fail(f"{name} accepted a 3-way batch")
  # Under jit the labels are traced: no check (documented), the loss is computed.
  loss, _ = jax.jit(meta.batch_loss(learner))(meta_params, three_way)
  assert np.isfinite(loss)
  # Negative class labels are refused for every learner, e.g. MAML.
  maml = meta.maml(linear, metalax.losses.cross_entropy, inner_lr=0.1, num_steps=1)
  negative = three_way.replace(support=three_way.support.replace(labels=-three_way.support.labels))
  with pytest.raises(ValueError, match="support labels must be class indices >= 0"):
    meta.batch_loss(maml)(maml.init({"w": jnp.eye(3)}), negative)


def test_unbatched_episode_to_batch_functions_says_so():
  learner = meta.maml(linear, metalax.losses.squared_error, inner_lr=0.1, num_steps=1)
  meta_params = learner.init({"w": jnp.ones((3, 1))})
  rng = np.random.default_rng(0)
  batch = lambda: Batch(jnp.asarray(rng.normal(size=(6, 3)), jnp.float32),
                        jnp.asarray(rng.normal(size=(6, 1)), jnp.float32))
  episode = Episode(batch(), batch())
  for call in (lambda: meta.batch_loss(learner)(meta_params, episode),
               lambda: meta.evaluate(learner)(meta_params, episode),
               lambda: meta.train_step(learner, optax.sgd(0.1))(meta_params, None, episode)):
    with pytest.raises(ValueError, match=r"leading task axis \[B\].*one unbatched episode.*x\[None\]"):
      call()
  classification = episodes(3)
  with pytest.raises(ValueError, match="one unbatched episode"):
    meta.batch_loss(meta.protonet(linear, num_ways=3))(
        {"params": {"w": jnp.eye(3)}}, jax.tree.map(lambda x: x[0], classification))
  # A genuinely malformed batch keeps its precise message.
  with pytest.raises(ValueError, match="must match episode.support.inputs"):
    meta.batch_loss(learner)(meta_params, Episode(Batch(jnp.ones((2, 6, 3)), jnp.ones((2, 5, 1))),
                                                  Batch(jnp.ones((2, 6, 3)), jnp.ones((2, 6, 1)))))
