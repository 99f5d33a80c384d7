"""The sinusoid entrypoint end to end on a tiny configuration."""

import json
import os

import pytest

from experiments import sinusoid
from experiments.configs import sinusoid as sinusoid_config


def tiny_config(**overrides):
  config = sinusoid_config.get_config()
  config.update(dict(learners=("maml", "pretrained"), mlp_features=(16, 16), num_iterations=1000, steps_per_call=500,
                     checkpoint_every=500, num_test_episodes=50, test_num_steps=2,
                     pretrained_lr_grid=(0.003, 0.01), lr=3e-3))
  config.update(overrides)
  return config


def test_train_evaluate_write_and_resume(tmp_path):
  results = sinusoid.train_and_evaluate(tiny_config(), str(tmp_path))
  for name in ("results.json", "sinusoid.png", "run.json", "maml/metrics.jsonl"):
    assert os.path.exists(tmp_path / name), name
  maml = results["maml"]
  assert len(maml["mse"]) == 3
  assert maml["mse"][1] < 0.8 * maml["mse"][0]  # one inner step helps after meta-training
  assert results["pretrained"]["inner_lr"] in (0.003, 0.01)
  assert json.loads((tmp_path / "results.json").read_text())["results"]["maml"]["mse"] == maml["mse"]

  # A second run with more iterations resumes from the checkpoint at 1000.
  sinusoid.train_and_evaluate(tiny_config(num_iterations=1500, learners=("maml",), allow_changes=("learners",)),
                              str(tmp_path))
  steps = [json.loads(line)["step"] for line in (tmp_path / "maml/metrics.jsonl").read_text().splitlines()]
  assert steps == [500, 1000, 1500]


@pytest.mark.parametrize("overrides, match", [
    (dict(learners=("maml", "protonet")), "learners"),
    (dict(num_shots=0), "num_shots"),
    (dict(num_test_episodes=1), "num_test_episodes"),
])
def test_bad_config_raises(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    sinusoid.train_and_evaluate(tiny_config(**overrides), str(tmp_path))


def test_unwritable_workdir_fails_at_start(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="not a writable directory"):
    sinusoid.train_and_evaluate(tiny_config(), str(blocker / "workdir"))
