r"""MMoE's synthetic benchmark (Ma et al., KDD 2018, Section 4): how do architectures cope with less related tasks?

Two regression tasks whose label correlation is set by ``p`` (``mmoe.correlations``); each of
``--config.architectures`` (shared-bottom ``hard_sharing``, ``omoe``, ``mmoe``, or any other) is trained with
``--config.method`` on ``--config.trunk`` over ``num_seeds`` runs side by side, each run with new data, a new
task pair and a new initialisation. Every ``checkpoint_every`` iterations each run's training MSE (on the first
``mmoe.num_curve`` examples) and validation MSE are recorded (``curves.jsonl``): the loss curve averaged over
the runs (the paper's Fig. 4) and its mean over the run; at the end the training and test MSE of every run
(Fig. 5's histograms). Writes ``results.json``, ``mmoe.png``, ``run.json``, per correlation and architecture
``p<p>/<architecture>/`` with ``metrics.jsonl``, ``curves.jsonl``, TensorBoard events and orbax checkpoints (a
rerun resumes), and prints the table.

Usage:
  python -m experiments.mmoe --workdir=/tmp/mmoe
  python -m experiments.mmoe --workdir=/tmp/mmoe_pcgrad --config.method=pcgrad --config.num_seeds=10
"""

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import metalax
from experiments import multitask
from experiments import reporting
from metalax import training
from metalax.types import Batch


def architectures(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The architectures compared: ``config.architectures``, else ``(config.architecture,)``.

  Raises:
    ValueError: if both or neither are set.
  """
  if config.architectures and config.architecture:
    raise ValueError(f"--config.architecture={config.architecture!r} and --config.architectures="
                     f"{tuple(config.architectures)!r} are exclusive (add --config.architectures='()' to train one "
                     "architecture from this preset).")
  names = tuple(config.architectures) or ((config.architecture,) if config.architecture else ())
  if not names:
    raise ValueError("set --config.architecture (one) or --config.architectures (a tuple).")
  return names


def learning_rates(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Each architecture's Adam learning rate: ``mmoe.learning_rates.<name>`` where set (> 0), else ``lr``."""
  rates = config.mmoe.learning_rates
  return {name: rates.get(name, 0.0) or config.lr for name in architectures(config)}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for any field that cannot run, before anything is compiled."""
  training.check_positive_int(config, "num_iterations", "steps_per_call", "checkpoint_every", "mmoe.dim",
                              "mmoe.num_sinusoids", "mmoe.num_train", "mmoe.num_valid", "mmoe.num_test",
                              "mmoe.shared_bottom_features", "mmoe.num_curve")
  training.check_positive_float(config, "mmoe.scale")
  training.check_nonnegative_float(config, "mmoe.noise_std", *(f"mmoe.learning_rates.{name}"
                                                                for name in config.mmoe.learning_rates))
  training.check_choice(config, "dataset", ("mmoe",))
  if not config.mmoe.correlations or not all(-1.0 <= p <= 1.0 for p in config.mmoe.correlations):
    raise ValueError(f"--config.mmoe.correlations must be a non-empty tuple in [-1, 1], got "
                     f"{config.mmoe.correlations!r}.")
  multitask.check_config(config, (config.method,), 2, architectures(config))


def per_seed_splits(config: ml_collections.ConfigDict, p: float) -> dict[str, Batch]:
  """``{"train", "valid", "test"}``: one task pair per seed (``fold_in(key(seed), s)``), leaves ``[S, n, ...]``."""
  mmoe = config.mmoe
  seed_keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(config.seed), s))(jnp.arange(config.num_seeds))
  sizes = {"train": mmoe.num_train, "valid": mmoe.num_valid, "test": mmoe.num_test}
  return {split: jax.vmap(lambda k, i=i, n=n: multitask.regression_batch(*multitask.mmoe_data(k, i, n, p, mmoe)))(
      seed_keys) for i, (split, n) in enumerate(sizes.items())}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains every architecture at every correlation; returns ``{architecture: {p: {"test_mse": [S], ...}}}``."""
  check_config(config)
  workdir = training.prepare_workdir(workdir)
  training.check_resume(workdir, config)
  training.write_run_info(workdir, config)
  mmoe = config.mmoe
  se = metalax.losses.squared_error
  models = {}
  for name, rate in learning_rates(config).items():
    arch_config = config.copy_and_resolve_references()
    if name == "hard_sharing":
      arch_config.mlp_features = (mmoe.shared_bottom_features,)
    architecture = multitask.make_architecture(arch_config, (1, 1), name)

    @jax.jit
    def mse(params, batch, module=architecture.module):  # [S, 2] per seed and task, each seed its own data
      def one(p, b):
        outputs = module.apply({"params": p}, b.inputs)
        return jnp.stack([jnp.mean(se(o, y)) for o, y in zip(outputs, b.labels)])
      return jax.vmap(one)(params, batch)

    models[name] = (arch_config, architecture, rate, mse)

  results = {}
  for p in mmoe.correlations:
    splits = per_seed_splits(config, p)
    curve_data = jax.tree.map(lambda a: a[:, :mmoe.num_curve], splits["train"])
    labels = np.concatenate([np.asarray(y) for y in splits["train"].labels], axis=-1)  # [S, n, 2]
    correlation = float(np.mean([np.corrcoef(y[:, 0], y[:, 1])[0, 1] for y in labels]))
    first = jax.tree.map(lambda a: a[0], splits)
    data = multitask.MultitaskData(first["train"], first["test"], (se, se), (1, 1), (False, False))
    for name, (arch_config, architecture, rate, mse) in models.items():
      trainer = multitask.make_trainer(arch_config, architecture, data, config.method, (mmoe.dim,), lr=rate)
      run_dir = os.path.join(workdir, f"p{p:g}", name)
      curve_path = os.path.join(run_dir, "curves.jsonl")

      def on_checkpoint(state, iteration, mse=mse, curve_path=curve_path, curve_data=curve_data,
                        valid=splits["valid"]):
        train = np.asarray(mse(state.params["model"], curve_data)).mean(1)  # [S]
        valid = np.asarray(mse(state.params["model"], valid)).mean(1)
        training.append_jsonl(curve_path, {"step": iteration, "train_mse": train.tolist(), "valid_mse": valid.tolist()})
        return {"train_mse": float(train.mean()), "valid_mse": float(valid.mean())}

      if not os.path.exists(os.path.join(run_dir, "checkpoints")) and os.path.exists(curve_path):
        os.remove(curve_path)  # a fresh run: drop the curve of an earlier, unfinished one
      state = multitask.train_seeds(arch_config, trainer, data, run_dir, jax.random.key(config.seed + 1),
                                    desc=f"{name} p={p:g}", train_data=splits["train"], data_axis=0,
                                    on_checkpoint=on_checkpoint)
      test = np.asarray(mse(state.params["model"], splits["test"]))  # [S, 2]
      train = np.asarray(mse(state.params["model"], splits["train"]))
      steps, curve = read_curve(curve_path, config.num_iterations)  # [K], [K, S]
      results.setdefault(name, {})[f"{p:g}"] = {
          "test_mse": test.mean(1).tolist(), "test_mse_per_task": test.tolist(), "train_mse": train.mean(1).tolist(),
          "curve_steps": steps, "curve_train_mse": curve.tolist(), "mean_train_mse": curve.mean(0).tolist(),
          "label_correlation": correlation, "lr": rate}
  training.write_json(os.path.join(workdir, "results.json"),
                      {"experiment": "mmoe", "num_seeds": config.num_seeds, "results": results})
  reporting.plot_mmoe(os.path.join(workdir, "mmoe.png"), results, config)
  print(reporting.mmoe_table(results, config))
  return results


def read_curve(path: str, last_step: int) -> tuple[list[int], np.ndarray]:
  """``(steps [K], values [K, S])`` of a ``curves.jsonl``; a step recorded twice (a resumed run) keeps its last."""
  by_step = {}
  for line in open(path):
    record = json.loads(line)
    if record["step"] <= last_step:
      by_step[record["step"]] = record["train_mse"]
  steps = sorted(by_step)
  return steps, np.array([by_step[s] for s in steps])


if __name__ == "__main__":
  training.run(train_and_evaluate, os.path.join(os.path.dirname(__file__), "configs", "mmoe.py"))
