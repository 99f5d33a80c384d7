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


def test_protonet_starts_from_a_pretrained_encoder(tmp_path, cache_dir):
  from experiments import representation
  from experiments.configs import representation as representation_config
  encoder_config = representation_config.get_config("random")   # seed 1: not the few-shot run's own init
  encoder_config.update(dict(cache_dir=cache_dir, hidden=16, backbone="strided", seed=1, num_eval_classes=10,
                             episodes=((5, 1),), num_test_episodes=10, probe_steps=2, review_k=4))
  representation.train_and_evaluate(encoder_config, str(tmp_path / "encoder_run"))
  pretrained = representation.load_encoder(str(tmp_path / "encoder_run"), encoder_config)
  settings = dict(learner="protonet", num_ways=5, num_queries=2, num_iterations=2, steps_per_call=2, eval_every=2)
  # outer_lr 0: the trained meta-parameters stay the initial ones, so the checkpoint shows what was loaded.
  config = tiny_config(cache_dir, "protonet_5w1s", outer_lr=0.0, init_encoder=str(tmp_path / "encoder_run"),
                       **settings)
  fewshot.train_and_evaluate(config, str(tmp_path / "loaded"))
  fewshot.train_and_evaluate(tiny_config(cache_dir, "protonet_5w1s", outer_lr=0.0, **settings),
                             str(tmp_path / "fresh"))
  restore = lambda run: ocp.CheckpointManager(str(tmp_path / run / "checkpoints")).restore(2)["meta_params"]
  loaded, fresh = jax_leaves(restore("loaded")["params"]), jax_leaves(restore("fresh")["params"])
  assert len(loaded) == len(jax_leaves(pretrained))
  for x, y in zip(loaded, jax_leaves(pretrained)):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, y) for x, y in zip(fresh, loaded))
  # Another backbone, or a gradient-based learner: one clear error naming both encoders.
  with pytest.raises(ValueError, match=r"its encoder \(hidden=16, backbone=strided, norm=batch\) is not the "
                                       r"configured backbone \(hidden=32, backbone=strided, norm=batch\): .*shape"):
    fewshot.train_and_evaluate(tiny_config(cache_dir, "protonet_5w1s", hidden=32, init_encoder=config.init_encoder,
                                           **settings), str(tmp_path / "wider"))
  with pytest.raises(ValueError, match=r"backbone=strided.*backbone=maxpool"):
    fewshot.train_and_evaluate(tiny_config(cache_dir, "protonet_5w1s", backbone="maxpool",
                                           init_encoder=config.init_encoder, **settings), str(tmp_path / "maxpool"))
  with pytest.raises(ValueError, match="init_encoder needs a learner whose meta-parameters are the encoder"):
    fewshot.train_and_evaluate(tiny_config(cache_dir, "maml_5w1s", init_encoder=config.init_encoder),
                               str(tmp_path / "maml"))
