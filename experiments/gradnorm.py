r"""GradNorm's toy problem (Chen et al., ICML 2018, Section 4): do the weightings balance tasks of different scales?

``T`` regression tasks ``sigma_i tanh((B + eps_i) x)`` whose output scales ``sigma_i`` span two orders of
magnitude, fresh examples every step. Trains each method of ``--config.methods`` (or the one
``--config.method``) on ``--config.architecture`` / ``--config.trunk``, ``num_seeds`` seeds side by side, and
records every ``checkpoint_every`` iterations the per-task test loss ratios ``L_i(t) / L_i(0)`` and their sum
(the paper's task-normalised test loss). Writes ``results.json``, ``gradnorm.png``, ``run.json``, per method
``<method>/metrics.jsonl`` (with the task weights), TensorBoard events and orbax checkpoints (a rerun resumes),
and prints the table.

Usage:
  python -m experiments.gradnorm --workdir=/tmp/gradnorm
  python -m experiments.gradnorm --workdir=/tmp/gradnorm_pcgrad --config.methods='()' --config.method=uncertainty+pcgrad
"""

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from experiments import multitask
from experiments import reporting
from metalax import training


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for any field that cannot run, before anything is compiled."""
  training.check_positive_int(config, "num_iterations", "steps_per_call", "checkpoint_every", "toy.num_tasks",
                              "toy.input_dim", "toy.output_dim", "toy.num_test")
  training.check_positive_float(config, "toy.max_sigma", "toy.b_std")
  training.check_nonnegative_float(config, "toy.eps_std")
  training.check_choice(config, "toy.inputs", multitask.TOY_INPUTS)
  num_tasks = config.toy.num_tasks if config.dataset == "gradnorm" else None
  multitask.check_config(config, multitask.methods_of(config), num_tasks)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains every method; returns ``{method: {"loss_ratio": [S, T], "test_loss", "weights", curves...}}``."""
  check_config(config)
  workdir = training.prepare_workdir(workdir)
  training.check_resume(workdir, config)
  training.write_run_info(workdir, config)
  data = multitask.load_dataset(config)
  num_tasks = len(data.task_losses)
  architecture = multitask.make_architecture(config, data.num_outputs)
  evaluate = multitask.evaluator(architecture, data)
  results = {}
  for method in multitask.methods_of(config):
    trainer = multitask.make_trainer(config, architecture, data, method, multitask.input_shape(data))
    key = jax.random.key(config.seed)
    initial = evaluate(multitask.init_seeds(trainer, key, config.num_seeds).params["model"])["loss"]  # [S, T]

    def on_checkpoint(state, iteration, initial=initial):
      del iteration
      ratios = evaluate(state.params["model"])["loss"] / initial  # [S, T]
      return {"test_normalized_loss": float(ratios.sum(1).mean()),
              **{f"test_ratio_{t}": float(ratios[:, t].mean()) for t in range(num_tasks)}}

    label = method.rpartition(":")[2]
    run_dir = os.path.join(workdir, label)
    state = multitask.train_seeds(config, trainer, data, run_dir, key, desc=label, on_checkpoint=on_checkpoint)
    final = evaluate(state.params["model"])["loss"]
    records = training.read_jsonl(os.path.join(run_dir, training.loop.METRICS_FILE))
    evaluated = [r for r in records if "test_normalized_loss" in r]
    results[label] = {
        "loss_ratio": (final / initial).tolist(), "test_loss": final.tolist(),
        "steps": [r["step"] for r in records],
        "weights": [[r.get(f"weight_{t}", np.nan) for t in range(num_tasks)] for r in records],
        "eval_steps": [r["step"] for r in evaluated],
        "test_ratio_curve": [[r[f"test_ratio_{t}"] for t in range(num_tasks)] for r in evaluated],
        "test_normalized_loss_curve": [r["test_normalized_loss"] for r in evaluated]}
  scales = (np.asarray(multitask.toy_tasks(jax.random.key(config.seed + 7), config.toy)[2])
            if config.dataset == "gradnorm" else np.arange(1, num_tasks + 1, dtype=float))
  training.write_json(os.path.join(workdir, "results.json"),
                      {"experiment": "gradnorm", "num_seeds": config.num_seeds, "results": results})
  reporting.plot_gradnorm(os.path.join(workdir, "gradnorm.png"), results, scales, config)
  print(reporting.gradnorm_table(results, scales, config))
  return results


if __name__ == "__main__":
  training.run(train_and_evaluate, os.path.join(os.path.dirname(__file__), "configs", "gradnorm.py"))
