r"""Few-shot sinusoid regression (MAML paper, Section 5.1) with any gradient-based learner.

Trains each learner of ``--config.learners`` (default MAML and the pretrained baseline), evaluates on
held-out tasks after 0..``test_num_steps`` inner steps, prints a results table and writes into
``--workdir``: ``results.json`` (MSE after each number of steps: mean and 95% interval), ``sinusoid.png``,
``run.json``, and per learner ``<learner>/metrics.jsonl``, ``<learner>/tb/`` and orbax checkpoints (a rerun
resumes).

Usage:
  python -m experiments.sinusoid --workdir=/tmp/sinusoid
  python -m experiments.sinusoid --workdir=/tmp/sinusoid_k5 --config.num_shots=5 \
      --config.learners='("maml", "metasgd", "pretrained")' --config.inner_optimizer=adam
"""

import os
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
import optax

import metalax
from experiments import components
from experiments import reporting
from metalax import meta
from metalax import parallel
from metalax import training

MODELS = {"mlp": components.MODELS["mlp"]}


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for any field that cannot run, before anything is compiled."""
  training.run_settings(config)
  training.check_positive_int(config, "num_shots", "num_queries", "meta_batch_size", "num_iterations",
                              "steps_per_call", "checkpoint_every", "num_test_episodes", "test_num_queries",
                              "test_num_steps", "imaml_cg_steps")
  training.check_nonnegative_int(config, "num_steps", "tasks_per_chunk")
  training.check_positive_float(config, "lr", "inner_lr", "imaml_reg")
  if config.num_test_episodes < 2:
    raise ValueError("--config.num_test_episodes must be >= 2 to give a confidence interval.")
  if config.tasks_per_chunk and config.meta_batch_size % config.tasks_per_chunk:
    raise ValueError(f"--config.tasks_per_chunk={config.tasks_per_chunk} must divide meta_batch_size="
                     f"{config.meta_batch_size} (0: the whole batch at once).")
  if not config.learners or not all(isinstance(name, str) for name in config.learners):
    raise ValueError(f"--config.learners must be a non-empty tuple of learner names, got {config.learners!r}.")
  for name in config.learners:
    training.lookup(components.LEARNERS, name, "--config.learners")
    if name in components.EMBEDDING_LEARNERS:
      raise ValueError(f"--config.learners: {name} classifies embeddings; sinusoid regression needs a "
                       f"gradient-based learner ({', '.join(n for n in components.LEARNERS if n not in components.EMBEDDING_LEARNERS)}).")
  if not config.pretrained_lr_grid or min(config.pretrained_lr_grid) <= 0:
    raise ValueError(f"--config.pretrained_lr_grid must be a non-empty tuple of positive rates, got "
                     f"{config.pretrained_lr_grid!r}.")
  components.make_model(config, 1, MODELS)
  components.make_loss(config)
  components.inner_optimizer(config)


def train(learner: meta.MetaLearner, config: ml_collections.ConfigDict, run_dir: str, params: Any,
          key: jax.Array, desc: str) -> Any:
  """Meta-trains ``learner``, resuming from ``run_dir``; returns its meta-parameters."""
  optimizer = optax.adam(config.lr)
  mesh = training.make_mesh(config, config.meta_batch_size)
  meta_step = meta.train_step(parallel.with_precision(learner, config.precision), optimizer,
                              tasks_per_chunk=config.tasks_per_chunk or None)

  def step(state, key, data):
    del data  # sinusoid tasks are sampled from the key alone
    episodes = metalax.data.sample_sinusoid(key, config.meta_batch_size, config.num_shots, config.num_queries)
    meta_params, opt_state, metrics = meta_step(state["meta_params"], state["opt_state"],
                                                parallel.shard_batch(episodes, mesh))
    return {"meta_params": meta_params, "opt_state": opt_state}, metrics

  meta_params = learner.init(params)
  state = training.train_loop(
      step, {"meta_params": meta_params, "opt_state": optimizer.init(meta_params)}, data=None, key=key,
      num_iterations=config.num_iterations, steps_per_call=config.steps_per_call,
      checkpoint_every=config.checkpoint_every, run_dir=run_dir, desc=desc, mesh=mesh, on_nan=config.on_nan)
  return parallel.local_copy(state["meta_params"])


def query_mse(learner: meta.MetaLearner, meta_params: Any, episodes: metalax.Episode, num_steps: int
              ) -> tuple[np.ndarray, np.ndarray]:
  """Mean query MSE and its 95% interval after 0..num_steps inner steps: two ``[num_steps + 1]`` arrays."""
  metrics = jax.jit(meta.evaluate(learner, num_steps=tuple(range(num_steps + 1))))(meta_params, episodes)
  return training.mean_and_interval(np.asarray(metrics["loss"], np.float64), axis=-1)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains every configured learner, evaluates on held-out tasks and writes the results.

  Returns:
    ``{learner: {"mse": [test_num_steps + 1], "interval": [...], "inner_lr": float}}``.
  """
  check_config(config)
  workdir = training.prepare_workdir(workdir)
  training.check_resume(workdir, config)
  training.write_run_info(workdir, config)
  key_init, key_train, key_valid, key_test = jax.random.split(jax.random.key(config.seed), 4)
  model = components.make_model(config, 1, MODELS)
  params = components.init_params(model, key_init, (1,))
  apply_fn = metalax.models.from_linen(model)

  def held_out(key):
    key_tasks, key_points = jax.random.split(key)
    tasks = metalax.data.sample_sinusoid_tasks(key_tasks, config.num_test_episodes)
    return tasks, metalax.data.sinusoid_episodes(key_points, tasks, config.num_shots, config.test_num_queries)

  def learner(name, inner_lr=None, num_steps=None):
    return components.make_learner(config, apply_fn, name=name, num_ways=None, inner_lr=inner_lr,
                                   num_steps=config.num_steps if num_steps is None else num_steps)

  test_tasks, test_episodes = held_out(key_test)
  results, trained = {}, {}
  for name in config.learners:
    label = name.rpartition(":")[2]
    meta_params = train(learner(name), config, os.path.join(workdir, label), params, key_train, f"{label:>10}")
    inner_lr = config.inner_lr
    if name == "pretrained":  # the fine-tuning rate with the lowest validation MSE after test_num_steps steps
      _, valid_episodes = held_out(key_valid)
      scores = {}
      for lr in config.pretrained_lr_grid:
        with np.errstate(invalid="ignore", over="ignore"):  # a diverging rate's losses are inf
          mse = query_mse(learner(name, lr), meta_params, valid_episodes, config.test_num_steps)[0][-1]
        scores[lr] = float(mse) if np.isfinite(mse) else float("inf")  # a rate that diverges scores inf
      inner_lr = min(scores, key=scores.get)
      logging.info("pretrained: fine-tuning step size %g (validation MSE %s).", inner_lr, scores)
    test_learner = learner(name, inner_lr)
    mse, interval = query_mse(test_learner, meta_params, test_episodes, config.test_num_steps)
    results[label] = {"mse": mse.tolist(), "interval": interval.tolist(), "inner_lr": inner_lr}
    trained[label] = (test_learner, meta_params)

  training.write_json(os.path.join(workdir, "results.json"),
                      {"num_shots": config.num_shots, "num_test_episodes": config.num_test_episodes,
                       "results": results})
  reporting.plot_sinusoid(os.path.join(workdir, "sinusoid.png"), trained, results, test_tasks, test_episodes, config)
  print(reporting.sinusoid_table(results, config))
  return results


if __name__ == "__main__":
  training.run(train_and_evaluate, os.path.join(os.path.dirname(__file__), "configs", "sinusoid.py"))
