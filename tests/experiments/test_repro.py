"""Same seed, same machine, same result bit for bit; run.json records what reproduces a run.

(Across separate processes, tests/experiments/test_faults.py compares two runs bit for bit too.)
"""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp

from metalax import training
from experiments import sinusoid
from experiments.configs import sinusoid as sinusoid_config


def tiny_config(**overrides):
  config = sinusoid_config.get_config()
  config.update(dict(learners=("maml",), mlp_features=(8, 8), meta_batch_size=4, num_iterations=60, steps_per_call=20,
                     checkpoint_every=20, num_test_episodes=10, test_num_queries=10, test_num_steps=1))
  config.update(overrides)
  return config


def final_state(workdir):
  return ocp.CheckpointManager(str(workdir / "maml" / "checkpoints")).restore(60)


def test_same_seed_same_result_bit_for_bit(tmp_path):
  runs = [tmp_path / "a", tmp_path / "b", tmp_path / "other_seed"]
  results = [sinusoid.train_and_evaluate(tiny_config(seed=seed), str(run)) for run, seed in zip(runs, (3, 3, 4))]
  assert results[0] == results[1] and results[0] != results[2]
  for a, b in zip(jax.tree.leaves(final_state(runs[0])), jax.tree.leaves(final_state(runs[1]))):
    np.testing.assert_array_equal(a, b)
  assert (runs[0] / "maml" / "metrics.jsonl").read_text() == (runs[1] / "maml" / "metrics.jsonl").read_text()

  info = json.loads((runs[0] / "run.json").read_text())
  config = tiny_config(seed=3).to_dict()
  assert info["config"]["seed"] == 3
  for name, value in config.items():
    assert info["config"][name] == (list(value) if isinstance(value, tuple) else value), name
  for package in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy"):
    assert info["versions"][package], package
  for field in ("python", "machine", "devices", "process_count", "argv", "time", "git", "environment",
                "jax_config"):
    assert field in info, field
  assert info["jax_config"]["jax_threefry_partitionable"] is True


def test_rerun_keeps_the_earlier_run_record(tmp_path):
  training.write_run_info(str(tmp_path), tiny_config(seed=1))
  training.write_run_info(str(tmp_path), tiny_config(seed=2))
  records = sorted(p.name for p in tmp_path.glob("run*.json"))
  assert len(records) == 2 and "run.json" in records
  seeds = sorted(json.loads((tmp_path / name).read_text())["config"]["seed"] for name in records)
  assert seeds == [1, 2]
