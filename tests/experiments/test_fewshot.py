"""The few-shot entrypoint end to end on real Omniglot, tiny configurations."""

import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import fewshot
from experiments.configs import fewshot as fewshot_config

DATA = os.path.join(fewshot.REPO_ROOT, "..", "shared", "data", "omniglot")
pytestmark = pytest.mark.skipif(not os.path.isdir(DATA), reason=f"no Omniglot archives in {DATA}")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("omniglot_cache"))


def tiny_config(cache_dir, preset, **overrides):
  config = fewshot_config.get_config(preset)
  config.update(dict(cache_dir=cache_dir, hidden=16, backbone="strided", num_iterations=60, steps_per_call=30,
                     eval_every=30, num_valid_episodes=20, num_test_episodes=60, eval_batch_size=20))
  config.update(overrides)
  return config


def test_maml_learns_on_omniglot(tmp_path, cache_dir):
  config = tiny_config(cache_dir, "maml_5w1s", meta_batch_size=4, num_queries=5, test_num_steps=3)
  results = fewshot.train_and_evaluate(config, str(tmp_path))
  assert results["test_accuracy"] > 0.35  # chance is 0.2; 60 meta-iterations of a 16-channel net
  for name in ("results.json", "curves.png", "run.json", "metrics.jsonl", "best.json"):
    assert os.path.exists(tmp_path / name), name
  assert os.listdir(tmp_path / "tb")


def test_resumed_run_equals_uninterrupted_run(tmp_path, cache_dir):
  settings = dict(num_ways=10, num_queries=2, steps_per_call=20, eval_every=20)
  config = tiny_config(cache_dir, "protonet_5w1s", num_iterations=40, **settings)
  straight = fewshot.train_and_evaluate(config, str(tmp_path / "straight"))
  fewshot.train_and_evaluate(tiny_config(cache_dir, "protonet_5w1s", num_iterations=20, **settings),
                             str(tmp_path / "resumed"))
  resumed = fewshot.train_and_evaluate(config, str(tmp_path / "resumed"))
  assert resumed == straight
  restore = lambda run: ocp.CheckpointManager(str(tmp_path / run / "checkpoints")).restore(40)
  a, b = restore("straight"), restore("resumed")
  for x, y in zip(jax_leaves(a), jax_leaves(b)):
    np.testing.assert_array_equal(x, y)
  steps = [json.loads(line)["step"] for line in open(tmp_path / "resumed" / "metrics.jsonl")]
  assert steps == [20, 40]


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


@pytest.mark.parametrize("overrides, match", [
    (dict(num_ways=2000), "2000-way"),
    (dict(num_shots=10, num_queries=15), "25 images each"),
    (dict(learner="protonets"), "unknown learner"),
    (dict(num_ways=5, test_num_ways=20), "test_num_ways must equal num_ways"),
])
def test_bad_config_raises(tmp_path, cache_dir, overrides, match):
  with pytest.raises(ValueError, match=match):
    fewshot.train_and_evaluate(tiny_config(cache_dir, "maml_5w1s", **overrides), str(tmp_path))


def test_missing_data_raises(tmp_path, cache_dir):
  with pytest.raises(FileNotFoundError, match="images_background.zip"):
    fewshot.train_and_evaluate(tiny_config(cache_dir, "maml_5w1s", data_dir=str(tmp_path)), str(tmp_path / "w"))
