"""The multi-task entrypoint end to end on tiny configurations."""

import json
import os

import jax
import numpy as np
import pytest

from experiments import mtl
from experiments.configs import mtl as mtl_config

MNIST_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data", "mnist")


def tiny_config(preset, **overrides):
  config = mtl_config.get_config(preset)
  config.update(dict(num_seeds=2, num_iterations=20, steps_per_call=20, batch_size=16))
  config.mmoe.update(dict(correlations=(1.0, 0.5), num_train=200, num_valid=50, num_test=50, num_experts=2,
                          expert_features=4, tower_features=4, shared_bottom_features=8, eval_every=10, num_curve=100))
  config.toy.update(dict(num_tasks=3, input_dim=12, output_dim=4, hidden=8, num_layers=2, num_test=64,
                         eval_every=10))
  config.multimnist.update(dict(data_dir=MNIST_DIR, num_train=256, num_test=100, eval_batch_size=50,
                                mlp_features=(16, 8)))
  config.update(dict(steps_per_call=10))
  config.update(overrides)
  return config


def test_mmoe_benchmark(tmp_path):
  config = tiny_config("mmoe")
  config.mmoe.models = "shared_bottom,mmoe"
  results = mtl.train_and_evaluate(config, str(tmp_path))
  assert set(results) == {"shared_bottom", "mmoe"}
  for by_p in results.values():
    assert set(by_p) == {"1", "0.5"}
    assert np.all(np.isfinite(by_p["0.5"]["test_mse"])) and len(by_p["0.5"]["test_mse"]) == 2
  # Label correlation follows p (the sinusoids keep it below p).
  assert results["mmoe"]["1"]["label_correlation"] > results["mmoe"]["0.5"]["label_correlation"]
  # The training-loss curve: one point per seed every eval_every iterations; its mean over the run per seed.
  r = results["shared_bottom"]["0.5"]
  assert r["curve_steps"] == [10, 20]
  curve = np.array(r["curve_train_mse"])
  assert curve.shape == (2, 2) and np.all(curve > 0)
  np.testing.assert_allclose(r["mean_train_mse"], curve.mean(0), rtol=1e-6)
  assert not np.allclose(curve[0], curve[1])  # training moved the loss
  # The preset's per-model learning rates (the paper's grid search).
  assert results["shared_bottom"]["1"]["lr"] == 1e-3 and results["mmoe"]["0.5"]["lr"] == 1e-2
  table = mtl.mmoe_table(results, config)
  assert "curve" in table and "final test" in table and "mmoe 0.01" in table
  for name in ("results.json", "mmoe.png", "run.json", "p0.5/mmoe/metrics.jsonl", "p0.5/mmoe/curves.jsonl"):
    assert os.path.exists(tmp_path / name), name


def test_mmoe_learning_rates():
  config = tiny_config("mmoe", lr=3e-4)
  config.mmoe.learning_rates = "omoe=0.02"
  assert mtl.mmoe_learning_rates(config) == {"shared_bottom": 3e-4, "omoe": 0.02, "mmoe": 3e-4}
  config.mmoe.models = "mmoe"
  assert mtl.mmoe_learning_rates(config) == {"mmoe": 3e-4}
  for bad in ("moe=1e-2", "mmoe=fast", "mmoe=0", "mmoe"):
    config.mmoe.learning_rates = bad
    with pytest.raises(ValueError, match="mmoe.learning_rates must be 'model=lr"):
      mtl.check_config(config)


def test_mmoe_learning_rate_reaches_training(tmp_path):
  finals = {}
  for rate in ("1e-4", "1e-2"):
    config = tiny_config("mmoe", lr=1e-3)
    config.mmoe.update(dict(models="mmoe", correlations=(1.0,), learning_rates=f"mmoe={rate}"))
    finals[rate] = np.asarray(mtl.train_and_evaluate(config, str(tmp_path / rate))["mmoe"]["1"]["train_mse"])
  assert np.all(finals["1e-2"] < finals["1e-4"])  # 20 Adam steps at 1e-4 barely move the loss


def test_read_curve_keeps_the_last_record_of_a_step(tmp_path):
  path = tmp_path / "curves.jsonl"
  lines = [{"step": 10, "train_mse": [1.0, 2.0]}, {"step": 20, "train_mse": [3.0, 4.0]},
           {"step": 20, "train_mse": [5.0, 6.0]}, {"step": 30, "train_mse": [7.0, 8.0]}]  # 20 again: a resumed run
  path.write_text("".join(json.dumps(line) + "\n" for line in lines))
  steps, values = mtl.read_curve(str(path), last_step=20)
  assert steps == [10, 20]
  np.testing.assert_array_equal(values, [[1.0, 2.0], [5.0, 6.0]])


def test_presets_change_only_their_own_nested_fields():
  assert mtl_config.get_config("mmoe").mmoe.shared_bottom_features == 113
  assert mtl_config.get_config("gradnorm").mmoe.shared_bottom_features == 128


def test_toy_inputs():
  tasks = mtl.toy_tasks(jax.random.key(0), tiny_config("gradnorm").toy)
  unit = mtl.toy_batch(jax.random.key(1), tasks, 32, 12, "unit_uniform")
  np.testing.assert_allclose(np.linalg.norm(unit["inputs"], axis=1), 1.0, rtol=1e-5)
  assert unit["labels"].shape == (32, 3, 4)
  normal = mtl.toy_batch(jax.random.key(1), tasks, 32, 12, "normal")
  assert np.linalg.norm(normal["inputs"], axis=1).mean() > 2.0  # ~sqrt(12)
  with pytest.raises(ValueError, match="toy inputs"):
    mtl.toy_batch(jax.random.key(1), tasks, 32, 12, "uniform")


def test_gradnorm_toy(tmp_path):
  config = tiny_config("gradnorm", methods="equal,gradnorm,pcgrad")
  results = mtl.train_and_evaluate(config, str(tmp_path))
  assert set(results) == {"equal", "gradnorm", "pcgrad"}
  gradnorm_weights = np.array(results["gradnorm"]["weights"])
  np.testing.assert_allclose(gradnorm_weights.sum(1), 3.0, rtol=1e-4)  # renormalised to sum to T
  assert np.array(results["gradnorm"]["loss_ratio"]).shape == (2, 3)
  assert np.all(np.isnan(results["pcgrad"]["weights"]))  # aggregators log no weights
  # The task-normalised test loss sum_i L_i(t)/L_i(0) every eval_every iterations; the last one is the final state's.
  for r in results.values():
    assert r["eval_steps"] == [10, 20]
    assert np.array(r["test_ratio_curve"]).shape == (2, 3)
    np.testing.assert_allclose(r["test_normalized_loss_curve"][-1], np.sum(r["loss_ratio"], axis=1).mean(), rtol=1e-4)
  assert "sum_i L_i/L_i(0)" in mtl.gradnorm_table(results, np.ones(3), config)
  assert os.path.exists(tmp_path / "gradnorm.png")


@pytest.mark.skipif(not os.path.exists(os.path.join(MNIST_DIR, "t10k-images-idx3-ubyte.gz")),
                    reason="MNIST files not found")
def test_multimnist_table_and_delta_m(tmp_path):
  config = tiny_config("multimnist", methods="single_0,single_1,mgda_ub,graddrop")
  results = mtl.train_and_evaluate(config, str(tmp_path))
  methods = results["methods"]
  assert len(results["single_task"]) == 2
  assert "delta_m" not in methods["single_0"]
  for name in ("mgda_ub", "graddrop"):
    assert np.array(methods[name]["accuracy"]).shape == (2, 2)
    assert len(methods[name]["delta_m"]) == 2
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["results"]["methods"]["mgda_ub"]["accuracy"] == methods["mgda_ub"]["accuracy"]


def test_multimnist_images():
  images = np.zeros((3, 28, 28, 1), np.uint8)
  images[:, 0, 0] = 255  # top-left pixel of every digit
  combined, labels = mtl.multi_mnist(images, np.arange(3), 3, seed=0)
  assert combined.shape == (3, 28, 28, 1) and combined.dtype == np.uint8
  assert labels.shape == (3, 2)
  assert combined[:, 0, 0, 0].tolist() == [255] * 3  # the left digit's corner survives the resize


@pytest.mark.parametrize("overrides, match", [
    (dict(experiment="cifar"), "experiment"),
    (dict(methods="equal,sgd"), "methods"),
    (dict(num_seeds=0), "num_seeds"),
    (dict(precision="bfloat16"), "float32 only"),
])
def test_bad_config_raises(tmp_path, overrides, match):
  with pytest.raises(ValueError, match=match):
    mtl.train_and_evaluate(tiny_config("gradnorm", **overrides), str(tmp_path))


def test_bad_toy_inputs_raise(tmp_path):
  config = tiny_config("gradnorm")
  config.toy.inputs = "uniform"
  with pytest.raises(ValueError, match="toy.inputs"):
    mtl.train_and_evaluate(config, str(tmp_path))
