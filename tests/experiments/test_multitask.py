"""The multi-task entrypoints (experiments.gradnorm, .mmoe, .multimnist) end to end on tiny configurations."""

import json
import os

import jax
import numpy as np
import pytest

from experiments import gradnorm
from experiments import mmoe
from experiments import multimnist
from experiments import multitask
from experiments.configs import gradnorm as gradnorm_config
from experiments.configs import mmoe as mmoe_config
from experiments.configs import multimnist as multimnist_config
from metalax import training

GENERATED = "tests.experiments.multitask_user:generated"


def tiny_gradnorm(**overrides):
  config = gradnorm_config.get_config()
  config.update(dict(num_seeds=2, num_iterations=20, steps_per_call=10, checkpoint_every=10, batch_size=16,
                     mlp_features=(8, 8), gradnorm_layer="trunk/Dense_1"))
  config.toy.update(dict(num_tasks=3, input_dim=12, output_dim=4, num_test=64))
  config.update(overrides)
  return config


def tiny_mmoe(**overrides):
  config = mmoe_config.get_config()
  config.update(dict(num_seeds=2, num_iterations=20, steps_per_call=10, checkpoint_every=10, batch_size=16,
                     num_experts=2, mlp_features=(4,), head_features=(4,)))
  config.mmoe.update(dict(correlations=(1.0, 0.5), num_train=200, num_valid=50, num_test=50, shared_bottom_features=8,
                          num_curve=100))
  config.update(overrides)
  return config


def tiny_multimnist(**overrides):
  config = multimnist_config.get_config()
  config.update(dict(num_seeds=2, num_iterations=10, steps_per_call=10, checkpoint_every=10, batch_size=16,
                     mlp_features=(8,), head_features=(4,), dataset=GENERATED))
  config.update(overrides)
  return config


def test_gradnorm_toy(tmp_path):
  config = tiny_gradnorm(methods=("equal", "gradnorm", "pcgrad"))
  results = gradnorm.train_and_evaluate(config, str(tmp_path))
  assert set(results) == {"equal", "gradnorm", "pcgrad"}
  weights = np.array(results["gradnorm"]["weights"])
  np.testing.assert_allclose(weights.sum(1), 3.0, rtol=1e-4)  # projected to sum to T
  assert not np.allclose(weights, 1.0)
  assert np.array(results["gradnorm"]["loss_ratio"]).shape == (2, 3)
  assert np.all(np.isnan(results["pcgrad"]["weights"]))  # an aggregator alone logs no weights
  # The task-normalised test loss sum_i L_i(t)/L_i(0) every checkpoint_every iterations; the last one is the final
  # state's.
  for r in results.values():
    assert r["eval_steps"] == [10, 20]
    assert np.array(r["test_ratio_curve"]).shape == (2, 3)
    np.testing.assert_allclose(r["test_normalized_loss_curve"][-1], np.sum(r["loss_ratio"], axis=1).mean(), rtol=1e-4)
  assert results["equal"]["loss_ratio"] != results["gradnorm"]["loss_ratio"]  # the weights reach training
  for name in ("results.json", "gradnorm.png", "run.json", "gradnorm/metrics.jsonl"):
    assert os.path.exists(tmp_path / name), name


def test_mmoe_benchmark_honours_the_method(tmp_path):
  config = tiny_mmoe(architectures=("hard_sharing", "mmoe"), method="uncertainty")
  results = mmoe.train_and_evaluate(config, str(tmp_path))
  assert set(results) == {"hard_sharing", "mmoe"}
  for by_p in results.values():
    assert set(by_p) == {"1", "0.5"}
    assert np.all(np.isfinite(by_p["0.5"]["test_mse"])) and len(by_p["0.5"]["test_mse"]) == 2
  assert results["mmoe"]["1"]["label_correlation"] > results["mmoe"]["0.5"]["label_correlation"]
  r = results["hard_sharing"]["0.5"]
  assert r["curve_steps"] == [10, 20]
  curve = np.array(r["curve_train_mse"])
  assert curve.shape == (2, 2) and np.all(curve > 0)
  np.testing.assert_allclose(r["mean_train_mse"], curve.mean(0), rtol=1e-6)
  assert not np.allclose(curve[0], curve[1])
  assert results["hard_sharing"]["1"]["lr"] == 1e-3 and results["mmoe"]["0.5"]["lr"] == 1e-2  # the preset's grid
  # The method reaches training: uncertainty weighting logs its weights.
  records = training.read_jsonl(str(tmp_path / "p0.5" / "mmoe" / "metrics.jsonl"))
  assert "weight_0" in records[-1] and records[-1]["weight_0"] != 0.5
  assert "mmoe 0.01" in reporting_table(results, config)
  for name in ("results.json", "mmoe.png", "run.json", "p0.5/mmoe/curves.jsonl"):
    assert os.path.exists(tmp_path / name), name


def reporting_table(results, config):
  from experiments import reporting
  return reporting.mmoe_table(results, config)


def test_mmoe_learning_rates_and_curves(tmp_path):
  config = tiny_mmoe(lr=3e-4)
  config.mmoe.learning_rates.omoe = 0.02
  config.mmoe.learning_rates.mmoe = 0.0
  assert mmoe.learning_rates(config) == {"hard_sharing": 1e-3, "omoe": 0.02, "mmoe": 3e-4}
  path = tmp_path / "curves.jsonl"
  lines = [{"step": 10, "train_mse": [1.0, 2.0]}, {"step": 20, "train_mse": [3.0, 4.0]},
           {"step": 20, "train_mse": [5.0, 6.0]}, {"step": 30, "train_mse": [7.0, 8.0]}]  # 20 again: a resumed run
  path.write_text("".join(json.dumps(line) + "\n" for line in lines))
  steps, values = mmoe.read_curve(str(path), last_step=20)
  assert steps == [10, 20]
  np.testing.assert_array_equal(values, [[1.0, 2.0], [5.0, 6.0]])


def test_multimnist_table_on_a_users_dataset(tmp_path):
  # A dataset and a trunk by import path, single-task baselines, MGDA-UB (encode/decode) and a combined method.
  config = tiny_multimnist(methods=("single_0", "single_1", "mgda_ub", "uncertainty+graddrop"),
                           trunk="tests.experiments.multitask_user:TinyTrunk")
  results = multimnist.train_and_evaluate(config, str(tmp_path))
  methods = results["methods"]
  assert len(results["single_task"]) == 2
  assert "delta_m" not in methods["single_0"]
  for name in ("mgda_ub", "uncertainty+graddrop"):
    accuracy = np.array(methods[name]["accuracy"])
    assert accuracy.shape == (2, 2) and np.all(np.isnan(accuracy[:, 1]))  # task 1 is a regression task
    assert np.all((accuracy[:, 0] >= 0) & (accuracy[:, 0] <= 1))
    assert len(methods[name]["delta_m"]) == 2 and np.all(np.isfinite(methods[name]["delta_m"]))
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["results"]["methods"]["mgda_ub"]["loss"] == methods["mgda_ub"]["loss"]
  assert os.path.exists(tmp_path / "multimnist.png")


@pytest.mark.skipif(not os.environ.get("METALAX_DATA_DIR"), reason="MNIST only with METALAX_DATA_DIR set")
def test_multimnist_on_mnist(tmp_path):
  config = tiny_multimnist(methods=("pcgrad",), dataset="multimnist", architecture="cross_stitch", download=False,
                           data_dir=os.path.join(os.environ["METALAX_DATA_DIR"], "mnist"))
  config.multimnist.update(dict(num_train=256, num_test=100, eval_batch_size=50))
  accuracy = np.array(multimnist.train_and_evaluate(config, str(tmp_path))["methods"]["pcgrad"]["accuracy"])
  assert accuracy.shape == (2, 2) and np.all(accuracy > 0.05)


def test_scheduling_trains_the_drawn_tasks():
  config = tiny_multimnist(tasks_per_step=1, scheduling="proportional", method="nash_mtl", methods=())
  data = multitask.load_dataset(config)
  architecture = multitask.make_architecture(config, data.num_outputs)
  trainer = multitask.make_trainer(config, architecture, data, config.method, multitask.input_shape(data))
  state = trainer.init(jax.random.key(0))
  step = jax.jit(trainer.step)
  for i in range(2):
    state, metrics = step(state, {"batch": data.train, "key": jax.random.key(0)}, jax.random.key(i))
    assert float(metrics["scheduled"].sum()) == 1.0 and np.isfinite(metrics["loss"])


def test_multi_mnist_images_and_toy_inputs():
  images = np.zeros((3, 28, 28, 1), np.uint8)
  images[:, 0, 0] = 255  # top-left pixel of every digit
  combined, labels = multitask.multi_mnist(images, np.arange(3), 3, seed=0)
  assert combined.shape == (3, 28, 28, 1) and combined.dtype == np.uint8 and labels.shape == (3, 2)
  assert combined[:, 0, 0, 0].tolist() == [255] * 3  # the left digit's corner survives the resize
  toy = tiny_gradnorm().toy
  tasks = multitask.toy_tasks(jax.random.key(0), toy)
  unit = multitask.toy_batch(jax.random.key(1), tasks, 32, 12, "unit_uniform")
  np.testing.assert_allclose(np.linalg.norm(unit.inputs, axis=1), 1.0, rtol=1e-5)
  assert len(unit.labels) == 3 and unit.labels[0].shape == (32, 4)
  normal = multitask.toy_batch(jax.random.key(1), tasks, 32, 12, "normal")
  assert np.linalg.norm(normal.inputs, axis=1).mean() > 2.0  # ~sqrt(12)
  with pytest.raises(ValueError, match="toy.inputs"):
    multitask.toy_batch(jax.random.key(1), tasks, 32, 12, "uniform")


def test_presets_keep_the_published_configurations():
  g = gradnorm_config.get_config("gradnorm")
  assert (g.num_seeds, g.num_iterations, g.batch_size, g.lr, g.gradnorm_alpha, g.checkpoint_every, g.seed) == (
      3, 30_000, 100, 1e-3, 0.12, 500, 0)
  assert g.methods == ("equal", "uncertainty", "gradnorm") and g.gradnorm_layer == "trunk/Dense_3"
  assert (g.architecture, g.trunk, g.mlp_features, g.head_features) == ("hard_sharing", "mlp", (100,) * 4, ())
  assert dict(g.toy) == dict(num_tasks=10, max_sigma=100.0, input_dim=250, output_dim=100, b_std=10.0, eps_std=3.5,
                             num_test=2_000, inputs="unit_uniform")
  m = mmoe_config.get_config("mmoe")
  assert (m.num_seeds, m.num_iterations, m.batch_size, m.checkpoint_every, m.method) == (100, 3000, 128, 100, "equal")
  assert m.architectures == ("hard_sharing", "omoe", "mmoe") and m.mmoe.correlations == (1.0, 0.9, 0.5)
  assert (m.mmoe.shared_bottom_features, m.mlp_features, m.head_features, m.num_experts) == (113, (16,), (8,), 8)
  assert dict(m.mmoe.learning_rates) == dict(hard_sharing=1e-3, omoe=1e-2, mmoe=1e-2)
  assert (m.mmoe.dim, m.mmoe.scale, m.mmoe.num_sinusoids, m.mmoe.noise_std) == (100, 0.3, 5, 0.01)
  mm = multimnist_config.get_config("multimnist")
  assert (mm.num_seeds, mm.num_iterations, mm.batch_size, mm.lr, mm.dwa_steps_per_epoch) == (5, 2000, 128, 1e-3, 469)
  assert (mm.mlp_features, mm.head_features, mm.trunk, mm.architecture) == ((256, 128), (50,), "mlp", "hard_sharing")
  assert len(mm.methods) == 16 and mm.methods[:2] == ("single_0", "single_1")


@pytest.mark.parametrize("module", [gradnorm_config, mmoe_config, multimnist_config])
def test_every_config_field_has_a_description(module):
  config = module.get_config()
  described = {**training.HELP, **module.HELP}
  missing = [name for name in training.cli.fields(config) if name not in described]
  assert not missing, missing


@pytest.mark.parametrize("experiment, overrides, match", [
    (gradnorm, dict(method="pcgrad"), "exclusive"),
    (gradnorm, dict(methods=()), "set --config.method"),
    (gradnorm, dict(methods=("equal", "sgd")), "unknown 'sgd'"),
    (gradnorm, dict(methods=("equal+uncertainty",)), "two loss weightings"),
    (gradnorm, dict(methods=("pcgrad+mgda",)), "two aggregators"),
    (gradnorm, dict(methods=("single_3",)), "task 3 does not exist"),
    (gradnorm, dict(methods=("mgda_ub",), architecture="mmoe"), "shared representation"),
    (gradnorm, dict(architecture="transformer"), "architecture"),
    (gradnorm, dict(trunk="vgg"), "trunk"),
    (gradnorm, dict(scheduling="random"), "scheduling"),
    (gradnorm, dict(tasks_per_step=4), "tasks_per_step=4"),
    (gradnorm, dict(expert_dropout=1.0), "expert_dropout"),
    (gradnorm, dict(gradnorm_layer="trunk Dense"), "gradnorm_layer"),
    (gradnorm, dict(num_seeds=0), "num_seeds"),
    (mmoe, dict(architecture="mmoe"), "exclusive"),
    (mmoe, dict(method="nash"), "unknown 'nash'"),
    (multimnist, dict(mlp_features=(8, 0)), "mlp_features"),
])
def test_bad_config_raises(tmp_path, experiment, overrides, match):
  tiny = {gradnorm: tiny_gradnorm, mmoe: tiny_mmoe, multimnist: tiny_multimnist}[experiment]
  with pytest.raises(ValueError, match=match):
    experiment.train_and_evaluate(tiny(**overrides), str(tmp_path))
