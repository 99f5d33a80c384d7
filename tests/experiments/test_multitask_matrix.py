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

METHODS = ("equal", "uncertainty", "gradnorm", "pcgrad", "mgda", "nash_mtl")
NUM_STEPS = 4
DATA = multitask.load_dataset(ml_collections.ConfigDict({"dataset": "tests.experiments.multitask_user:generated"}))


def small_config(**overrides):
  config = multitask.base_config()
  config.update(dict(mlp_features=(6,), head_features=(), num_experts=2, conditioned_features=6, lr=3e-2,
                     batch_size=64, num_seeds=1))
  config.update(overrides)
  return config


def losses_decrease(config, architecture_name, methods=METHODS):
  """``{method: (loss before training, loss after NUM_STEPS - 1 updates)}`` on the generated batch."""
  architecture = multitask.make_architecture(config, DATA.num_outputs, architecture_name)
  trainers = [multitask.make_trainer(config, architecture, DATA, method, multitask.input_shape(DATA))
              for method in methods]
  params = trainers[0].init_model(jax.random.key(0))  # eagerly: its small ops are compiled once for all tests

  @jax.jit
  def run(params, data):  # one program per architecture: the six methods' steps in one scan
    def body(states, key):
      steps = [trainer.step(state, {"batch": data, "key": key}, None) for trainer, state in zip(trainers, states)]
      return [state for state, _ in steps], jnp.stack([metrics["loss"] for _, metrics in steps])

    states = [trainer.init_state(params, jax.random.key(1)) for trainer in trainers]
    _, losses = jax.lax.scan(body, states, jax.random.split(jax.random.key(2), NUM_STEPS))
    return losses  # [NUM_STEPS, methods]: each step's loss before its update

  losses = np.asarray(run(params, DATA.train))
  return dict(zip(methods, zip(losses[0], losses[-1])))


# The architectures the issue names; the expert networks (CGC, PLE, DSelect-k, sluice) have tests of their own
# (tests/mtl/test_experts.py) and run here with one combined method, to check their registry entries.
ISSUE_ARCHITECTURES = ("hard_sharing", "mmoe", "omoe", "cross_stitch", "task_routing", "soft_sharing", "mtan",
                       "concat", "additive", "film", "multi_head")


@pytest.mark.parametrize("architecture", ISSUE_ARCHITECTURES)
def test_every_architecture_with_every_method_decreases_the_loss(architecture):
  config = small_config(expert_dropout=0.2 if architecture == "omoe" else 0.0)  # OMoE with expert dropout
  for method, (first, last) in losses_decrease(config, architecture).items():
    assert np.isfinite(first) and np.isfinite(last), (architecture, method, first, last)
    assert last < first, (architecture, method, first, last)


@pytest.mark.parametrize("architecture", sorted(set(multitask.ARCHITECTURES) - set(ISSUE_ARCHITECTURES)))
def test_expert_architectures_with_a_weighting_and_an_aggregator(architecture):
  for method, (first, last) in losses_decrease(small_config(), architecture, ("gradnorm+mgda",)).items():
    assert np.isfinite(last) and last < first, (architecture, method, first, last)


def test_a_users_trunk_by_import_path():
  config = small_config(trunk="tests.experiments.multitask_user:TinyTrunk")
  architecture = multitask.make_architecture(config, DATA.num_outputs, "hard_sharing")
  assert type(architecture.module.trunk).__name__ == "TinyTrunk"
  for method, (first, last) in losses_decrease(config, "hard_sharing", ("pcgrad",)).items():
    assert np.isfinite(last) and last < first, (method, first, last)
