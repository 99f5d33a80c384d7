"""The "Done when" matrix: every architecture x {equal, uncertainty, GradNorm, PCGrad, MGDA, Nash-MTL}, and a
user's own trunk by import path, a few steps each on small generated data: a finite loss that decreased.

Built through the experiments' registries (experiments.multitask) and the library step (metalax.mtl.train_step),
full-batch on one generated batch, so the loss of every combination must fall. One jitted program per
architecture runs the steps of all six methods (compile time dominates).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import multitask
from metalax import mtl

METHODS = ("equal", "uncertainty", "gradnorm", "pcgrad", "mgda", "nash_mtl")
NUM_STEPS = 4
DATA = multitask.load_dataset(ml_collections.ConfigDict({"dataset": "tests.experiments.multitask_user:generated"}))


def small_config(**overrides):
  config = multitask.base_config()
  config.update(dict(mlp_features=(6,), head_features=(), num_experts=2, conditioned_features=6, lr=3e-2,
                     batch_size=64, num_seeds=1))
  config.update(overrides)
  return config


def losses_decrease(config, architecture_name):
  architecture = multitask.make_architecture(config, DATA.num_outputs, architecture_name)
  trainers = [multitask.make_trainer(config, architecture, DATA, method, multitask.input_shape(DATA))
              for method in METHODS]

  @jax.jit
  def run(key, data):
    first, last = [], []
    for trainer in trainers:  # one program: the six methods' steps
      state = trainer.init(key)
      for i in range(NUM_STEPS):
        state, metrics = trainer.step(state, {"batch": data, "key": jax.random.key(i)}, None)
        if i == 0:
          first.append(metrics["loss"])  # before the first update
      last.append(mtl.multitask_loss(trainer.apply_fn, DATA.task_losses)(state.params["model"], data).sum())
    return jnp.stack(first), jnp.stack(last)

  first, last = (np.asarray(x) for x in run(jax.random.key(0), DATA.train))
  return dict(zip(METHODS, zip(first, last)))


@pytest.mark.parametrize("architecture", sorted(multitask.ARCHITECTURES))
def test_every_architecture_with_every_method_decreases_the_loss(architecture):
  for method, (first, last) in losses_decrease(small_config(), architecture).items():
    assert np.isfinite(first) and np.isfinite(last), (architecture, method, first, last)
    assert last < first, (architecture, method, first, last)


def test_a_users_trunk_by_import_path():
  config = small_config(trunk="tests.experiments.multitask_user:TinyTrunk")
  architecture = multitask.make_architecture(config, DATA.num_outputs, "hard_sharing")
  assert type(architecture.module.trunk).__name__ == "TinyTrunk"
  for method, (first, last) in losses_decrease(config, "hard_sharing").items():
    assert np.isfinite(last) and last < first, (method, first, last)
