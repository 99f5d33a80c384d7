"""The few-shot entrypoint end to end on generated data (a user's own dataset by import path)."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import fewshot
from experiments.configs import fewshot as fewshot_config

SYNTHETIC = "tests.experiments.synthetic:load"


def tiny_config(preset="default", **overrides):
  config = fewshot_config.get_config(preset)
  config.update(dict(dataset=SYNTHETIC, hidden=8, conv4_variant="strided", num_ways=3, num_shots=1,
                     num_queries=2, meta_batch_size=4, num_iterations=40, steps_per_call=20, checkpoint_every=20,
                     num_valid_episodes=20, num_test_episodes=40, eval_batch_size=20, test_num_steps=2))
  config.update(overrides)
  return config


def test_maml_learns_and_writes_its_records(tmp_path):
  results = fewshot.train_and_evaluate(tiny_config(), str(tmp_path))
  assert results["test_accuracy"] > 0.5  # chance is 1/3: each generated class is a noisy fixed pattern
  for name in ("results.json", "curves.png", "run.json", "metrics.jsonl"):
    assert os.path.exists(tmp_path / name), name
  assert os.listdir(tmp_path / "tb")
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in records if "validation_accuracy" in r] == [20, 40]
  assert json.load(open(tmp_path / "results.json"))["best_step"] in (20, 40)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  settings = dict(learner="protonet", num_ways=4, steps_per_call=10, checkpoint_every=10, conv_impl="xla")
  straight = fewshot.train_and_evaluate(tiny_config(num_iterations=20, **settings), str(tmp_path / "straight"))
  fewshot.train_and_evaluate(tiny_config(num_iterations=10, **settings), str(tmp_path / "resumed"))
  resumed = fewshot.train_and_evaluate(tiny_config(num_iterations=20, **settings), str(tmp_path / "resumed"))
  assert resumed == straight
  restore = lambda run: ocp.CheckpointManager(str(tmp_path / run / "checkpoints")).restore(20)
  for x, y in zip(jax.tree.leaves(restore("straight")), jax.tree.leaves(restore("resumed"))):
    np.testing.assert_array_equal(x, y)
  steps = [json.loads(line)["step"] for line in open(tmp_path / "resumed" / "metrics.jsonl")]
  assert sorted(set(steps)) == [10, 20]


def test_composed_run_resnet12_augmented_variable_episodes(tmp_path):
  # 2-3 ways, 1 shot: two episode shapes, each a branch of the compiled step (compile time grows with them).
  config = tiny_config(learner="protonet", model="resnet12", resnet_channels=(2, 3, 4, 4), conv_impl="xla",
                       num_ways=3, augment=("random_flip", "random_rotation(10.0)"), episodes="variable",
                       min_ways=2, min_shots=1, num_shots=1, test_num_ways=3, test_num_shots=1, num_iterations=4,
                       steps_per_call=2, checkpoint_every=2)
  results = fewshot.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(results["test_accuracy"])


@pytest.mark.parametrize("overrides, match", [
    (dict(num_ways=2000), "2000-way"),
    (dict(num_shots=9, num_queries=2), "11 images each"),
    (dict(learner="protonets"), "unknown 'protonets'"),
    (dict(num_ways=3, test_num_ways=5), "test_num_ways must equal num_ways"),
    (dict(lr=-1e-3), "lr"),
    (dict(lr=0.0), "lr"),
    (dict(test_num_shots=-1), "test_num_shots"),
    (dict(lr_decay_every=0), "lr_decay_every"),
    (dict(model="resnet50"), "unknown 'resnet50'"),
    (dict(augment=("random_flop",)), "unknown operation"),
    (dict(augment=("mixup(0.2)",)), "mixes images and labels"),
    (dict(tasks_per_chunk=3), "tasks_per_chunk=3 must divide"),
    (dict(episodes="variable"), "needs a learner without a fixed output layer"),
    (dict(dataset="tests.experiments.nowhere:load"), "cannot import module"),
])
def test_bad_config_raises_before_training(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    fewshot.train_and_evaluate(tiny_config(**overrides), str(tmp_path))


def test_protonet_starts_from_a_pretrained_encoder(tmp_path):
  from experiments import representation
  from experiments.configs import representation as representation_config
  encoder_config = representation_config.get_config("random")   # seed 1: not the few-shot run's own init
  encoder_config.update(dict(dataset=SYNTHETIC, hidden=8, seed=1, episodes=((3, 1),), num_test_episodes=10,
                             num_queries=2, probe_steps=2, review_k=4, conv_impl="xla"))
  representation.train_and_evaluate(encoder_config, str(tmp_path / "encoder_run"))
  pretrained = representation.load_encoder(str(tmp_path / "encoder_run"), encoder_config, image_shape=(16, 16, 1))
  settings = dict(learner="protonet", num_iterations=2, steps_per_call=2, checkpoint_every=2, conv_impl="xla")
  # lr 1e-12: the trained meta-parameters stay the initial ones, so the checkpoint shows what was loaded.
  config = tiny_config(lr=1e-12, init_encoder=str(tmp_path / "encoder_run"), **settings)
  fewshot.train_and_evaluate(config, str(tmp_path / "loaded"))
  fewshot.train_and_evaluate(tiny_config(lr=1e-12, **settings), str(tmp_path / "fresh"))
  restore = lambda run: ocp.CheckpointManager(str(tmp_path / run / "checkpoints")).restore(2)["meta_params"]
  loaded, fresh = jax.tree.leaves(restore("loaded")["params"]), jax.tree.leaves(restore("fresh")["params"])
  assert len(loaded) == len(jax.tree.leaves(pretrained))
  for x, y in zip(loaded, jax.tree.leaves(pretrained)):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9)  # lr 1e-12: moved by ~1e-12 at most
  assert any(not np.allclose(x, y) for x, y in zip(fresh, loaded))
  # Another model, or a gradient-based learner: one clear error naming both encoders.
  with pytest.raises(ValueError, match=r"its encoder \(model=conv4, hidden=8, .*\) is not the configured model "
                                       r"\(model=conv4, hidden=16, .*\): .*shape"):
    fewshot.train_and_evaluate(tiny_config(hidden=16, init_encoder=config.init_encoder, **settings),
                               str(tmp_path / "wider"))
  with pytest.raises(ValueError, match="init_encoder needs a learner whose meta-parameters are the encoder"):
    fewshot.train_and_evaluate(tiny_config(init_encoder=config.init_encoder), str(tmp_path / "maml"))
