r"""MultiMNIST (Sener & Koltun, NeurIPS 2018): which multi-task method loses least against single-task models?

Two overlapping MNIST digits per image, left- and right-digit classification with a shared trunk. Trains each
method of ``--config.methods`` (or the one ``--config.method``) on ``--config.architecture`` /
``--config.trunk`` over ``--config.dataset``, ``num_seeds`` seeds side by side, and reports each method's test
accuracy per task (the loss for a regression task) and ``Delta_m%`` against the single-task models
(``single_<t>``, when they are among the methods). Writes ``results.json``, ``multimnist.png``, ``run.json``,
per method ``<method>/metrics.jsonl``, TensorBoard events and orbax checkpoints (a rerun resumes), and prints
the table.

Usage:
  python -m experiments.multimnist --workdir=/tmp/multimnist --config.data_dir=/path/to/mnist
  python -m experiments.multimnist --workdir=/tmp/pcgrad_cross_stitch --config.data_dir=/path/to/mnist \
      --config.methods='()' --config.method=pcgrad --config.architecture=cross_stitch
"""

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments import multitask
from experiments import reporting
from metalax import mtl
from metalax import training


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for any field that cannot run, before anything is compiled (the data are not read)."""
  training.check_positive_int(config, "num_iterations", "steps_per_call", "checkpoint_every",
                              "multimnist.num_train", "multimnist.num_test", "multimnist.eval_batch_size")
  training.check_nonnegative_int(config, "multimnist.data_seed")
  multitask.check_config(config, multitask.methods_of(config), 2 if config.dataset == "multimnist" else None)


def single_task_baselines(results: dict[str, Any], classification: tuple[bool, ...]) -> np.ndarray | None:
  """``[T]`` each single-task model's score on its own task (mean over seeds: accuracy, or the loss for a
  regression task), if every ``single_<t>`` ran."""
  num_tasks = len(classification)
  if not all(f"single_{t}" in results for t in range(num_tasks)):
    return None
  return np.array([np.mean(score(results[f"single_{t}"], classification)[:, t]) for t in range(num_tasks)])


def score(result: dict[str, Any], classification: tuple[bool, ...]) -> np.ndarray:
  """``[S, T]`` accuracy for a classification task, loss for a regression task."""
  return np.where(np.asarray(classification, bool), np.asarray(result["accuracy"], float),
                  np.asarray(result["loss"], float))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains every method; returns ``{"methods": {method: {"accuracy": [S, T], "loss": [S, T], "delta_m": [S]}},
  "single_task": [T] or None}``."""
  check_config(config)
  workdir = training.prepare_workdir(workdir)
  training.check_resume(workdir, config)
  training.write_run_info(workdir, config)
  data = multitask.load_dataset(config)
  architecture = multitask.make_architecture(config, data.num_outputs)
  evaluate = multitask.evaluator(architecture, data, config.multimnist.eval_batch_size)
  results = {}
  for method in multitask.methods_of(config):
    trainer = multitask.make_trainer(config, architecture, data, method, multitask.input_shape(data))
    label = method.rpartition(":")[2]
    state = multitask.train_seeds(config, trainer, data, os.path.join(workdir, label), jax.random.key(config.seed),
                                  desc=label)
    metrics = evaluate(state.params["model"])
    results[label] = {"accuracy": metrics["accuracy"].tolist(), "loss": metrics["loss"].tolist()}
  baselines = single_task_baselines(results, data.classification)
  if baselines is not None:
    for method, r in results.items():
      if not method.startswith("single_"):
        r["delta_m"] = [mtl.delta_m(s, baselines, list(data.classification))
                        for s in score(r, data.classification)]
  summary = {"methods": results, "single_task": None if baselines is None else baselines.tolist()}
  training.write_json(os.path.join(workdir, "results.json"),
                      {"experiment": "multimnist", "num_seeds": config.num_seeds, "results": summary})
  reporting.plot_multimnist(os.path.join(workdir, "multimnist.png"), results, baselines, config)
  print(reporting.multimnist_table(results, baselines, config))
  return summary


if __name__ == "__main__":
  training.run(train_and_evaluate, os.path.join(os.path.dirname(__file__), "configs", "multimnist.py"))
