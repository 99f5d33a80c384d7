r"""Few-shot sinusoid regression (MAML paper, Section 5.1) with any gradient-based learner.

Trains each learner in ``--config.learners`` (default MAML and the pretrained
baseline), evaluates on 600 held-out tasks after 0..10 inner steps, prints a
results table and writes into ``--workdir``::

  results.json            MSE after each number of steps: mean and 95% interval
  sinusoid.png            example fits and MSE against gradient steps
  run.json                config, command line, package versions
  <learner>/metrics.jsonl training metrics every ``steps_per_call`` iterations (also <learner>/tb/)
  <learner>/checkpoints/  orbax checkpoints; a rerun resumes from the latest

Usage:
  python -m experiments.sinusoid --workdir=/tmp/sinusoid
  python -m experiments.sinusoid --workdir=/tmp/sinusoid_k5 --config.num_shots=5 \
      --config.learners=maml,metasgd,pretrained
"""

import json
import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
import optax

import metalax
from metalax import meta
from experiments import common

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LEARNERS = ("maml", "fomaml", "metasgd", "anil", "reptile", "imaml", "pretrained")



def make_learner(name: str, config: ml_collections.ConfigDict, apply_fn: metalax.types.ApplyFn,
                 inner_lr: float | None = None) -> meta.MetaLearner:
  """The learner called ``name``, configured from ``config``."""
  loss_fn = metalax.losses.squared_error
  inner_lr = config.inner_lr if inner_lr is None else inner_lr
  num_steps = config.num_steps
  if name in ("maml", "fomaml", "anil"):
    constructor = {"maml": meta.maml, "fomaml": meta.fomaml, "anil": meta.anil}[name]
    return constructor(apply_fn, loss_fn, inner_lr=inner_lr, num_steps=num_steps)
  if name == "metasgd":
    return meta.metasgd(apply_fn, loss_fn, init_lr=inner_lr, num_steps=num_steps)
  if name == "reptile":
    return meta.reptile(apply_fn, loss_fn, inner_lr=inner_lr, num_steps=num_steps)
  if name == "imaml":
    return meta.imaml(apply_fn, loss_fn, inner_lr=inner_lr, num_steps=num_steps, reg=config.imaml_reg,
                      cg_steps=config.imaml_cg_steps)
  if name == "pretrained":  # joint training: no adaptation while training, fine-tuning at test time
    return meta.maml(apply_fn, loss_fn, inner_lr=inner_lr, num_steps=0)
  raise ValueError(f"unknown learner {name!r}; expected one of {', '.join(LEARNERS)}.")


def parse_learners(config: ml_collections.ConfigDict) -> list[str]:
  names = [n.strip() for n in str(config.learners).split(",") if n.strip()]
  unknown = [n for n in names if n not in LEARNERS]
  if not names or unknown:
    raise ValueError(f"--config.learners must be a comma-separated list of {', '.join(LEARNERS)}; "
                     f"got {config.learners!r}.")
  return names


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for settings that cannot run, before anything is compiled."""
  for field in ("num_shots", "num_queries", "meta_batch_size", "num_iterations", "steps_per_call",
                "checkpoint_every", "num_eval_tasks", "num_eval_queries"):
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"--config.{field} must be an int >= 1, got {value!r}.")
  if not isinstance(config.eval_steps, int) or config.eval_steps < 1:
    raise ValueError(f"--config.eval_steps must be an int >= 1, got {config.eval_steps!r}.")
  if config.num_eval_tasks < 2:
    raise ValueError("--config.num_eval_tasks must be >= 2 to give a confidence interval.")
  parse_learners(config)


def train(name: str, config: ml_collections.ConfigDict, workdir: str, apply_fn, params, key_train):
  """Meta-trains one learner, resuming from ``workdir/name/checkpoints``; returns its meta-parameters."""
  learner = make_learner(name, config, apply_fn)
  optimizer = optax.adam(config.outer_lr)
  mesh = common.make_mesh(config, config.meta_batch_size)
  train_step = common.meta_train_step(learner, optimizer, config, mesh)

  def step(state, key, data):
    del data  # sinusoid tasks are sampled from the key alone
    episodes = metalax.data.sample_sinusoid(key, config.meta_batch_size, config.num_shots, config.num_queries)
    meta_params, opt_state, metrics = train_step(state["meta_params"], state["opt_state"], episodes)
    return {"meta_params": meta_params, "opt_state": opt_state}, metrics

  meta_params = learner.init(params)
  state = common.train_loop(
      step, {"meta_params": meta_params, "opt_state": optimizer.init(meta_params)}, data=None,
      key=key_train, num_iterations=config.num_iterations, steps_per_call=config.steps_per_call,
      checkpoint_every=config.checkpoint_every, run_dir=os.path.join(workdir, name), desc=f"{name:>10}",
      mesh=mesh, on_nan=common.run_settings(config)["on_nan"])
  return metalax.parallel.local_copy(state["meta_params"])


def validation_mse(learner: meta.MetaLearner, meta_params, episodes, num_steps: int) -> float:
  """Mean query MSE after ``num_steps`` inner steps; inf where fine-tuning diverged (a NaN or inf loss)."""
  metrics = jax.jit(meta.evaluate(learner, num_steps=(num_steps,)))(meta_params, episodes)
  losses = np.asarray(metrics["loss"][0], np.float64)
  return float(losses.mean()) if np.all(np.isfinite(losses)) else float("inf")


def evaluate(learner: meta.MetaLearner, meta_params, episodes, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
  """Mean query MSE and its 95% interval after 0..num_steps inner steps: two ``[num_steps + 1]`` arrays."""
  metrics = jax.jit(meta.evaluate(learner, num_steps=tuple(range(num_steps + 1))))(meta_params, episodes)
  return common.mean_and_interval(np.asarray(metrics["loss"]), axis=-1)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains every configured learner, evaluates on held-out tasks and writes the results.

  Returns:
    ``{learner: {"mse": [eval_steps + 1], "interval": [...], "inner_lr": float}}``.
  """
  check_config(config)
  workdir = common.prepare_workdir(workdir)
  common.write_run_info(workdir, config)
  key_init, key_train, key_valid, key_eval = jax.random.split(jax.random.key(config.seed), 4)
  model = metalax.models.MLP(features=tuple(config.hidden), num_outputs=1)
  params = jax.jit(model.init)(key_init, jnp.zeros((1, 1)))["params"]  # one compile, not one per op
  apply_fn = metalax.models.from_linen(model)

  def held_out(key):
    key_tasks, key_points = jax.random.split(key)
    tasks = metalax.data.sample_sinusoid_tasks(key_tasks, config.num_eval_tasks)
    return tasks, metalax.data.sinusoid_episodes(key_points, tasks, config.num_shots, config.num_eval_queries)

  eval_tasks, eval_episodes = held_out(key_eval)
  results, trained = {}, {}
  for name in parse_learners(config):
    meta_params = train(name, config, workdir, apply_fn, params, key_train)
    inner_lr = config.inner_lr
    if name == "pretrained":
      _, valid_episodes = held_out(key_valid)
      scores = {lr: validation_mse(make_learner(name, config, apply_fn, lr), meta_params, valid_episodes,
                                   config.eval_steps) for lr in config.pretrained_lr_grid}
      inner_lr = min(scores, key=scores.get)  # a step size that diverges scores inf
      logging.info("pretrained: fine-tuning step size %g (validation MSE %s).", inner_lr, scores)
    learner = make_learner(name, config, apply_fn, inner_lr)
    mse, interval = evaluate(learner, meta_params, eval_episodes, config.eval_steps)
    results[name] = {"mse": mse.tolist(), "interval": interval.tolist(), "inner_lr": inner_lr}
    trained[name] = (learner, meta_params)

  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"num_shots": config.num_shots, "num_eval_tasks": config.num_eval_tasks,
               "results": results}, f, indent=2)
  plot(os.path.join(workdir, "sinusoid.png"), trained, results, eval_tasks, eval_episodes, config)
  print(results_table(results, config))
  return results


def results_table(results: dict[str, Any], config: ml_collections.ConfigDict) -> str:
  steps = config.eval_steps
  header = (f"Sinusoid, K={config.num_shots}, {config.num_eval_tasks} held-out tasks: query MSE "
            "(mean +- 95% interval)\n"
            f"{'learner':<11}{'inner lr':>9}{'pre-update':>18}{'1 step':>18}{f'{steps} steps':>18}")
  rows = [header]
  for name, r in results.items():
    cells = "".join(f"{r['mse'][k]:>10.3f} +- {r['interval'][k]:.3f}" for k in (0, 1, steps))
    rows.append(f"{name:<11}{r['inner_lr']:>9g}{cells}")
  return "\n".join(rows)


def plot(path: str, trained, results, tasks, episodes, config) -> None:
  """The MAML paper's sinusoid figure: example fits per learner, then MSE against gradient steps."""
  names = list(trained)
  columns = min(len(names) + 1, 4)
  rows = -(-(len(names) + 1) // columns)
  fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
  axes = axes.ravel()
  for ax in axes[len(names) + 1:]:
    ax.axis("off")
  grid = jnp.linspace(-5.0, 5.0, 200)[:, None]
  example = 0
  support = jax.tree.map(lambda x: x[example], episodes.support)
  truth = tasks(grid[None])[example]
  for ax, name in zip(axes, names):
    learner, meta_params = trained[name]
    fit = jax.jit(lambda mp, steps, learner=learner: learner.predict(
        learner.adapt(mp, support, num_steps=steps), grid), static_argnums=1)
    ax.plot(grid, truth, color="tab:red", label="ground truth")
    for steps, style in ((0, ":"), (1, "--"), (config.eval_steps, "-")):
      label = "pre-update" if steps == 0 else f"{steps} grad step{'s' if steps > 1 else ''}"
      ax.plot(grid, fit(meta_params, steps), style, color="tab:green", label=label)
    ax.scatter(support.inputs[:, 0], support.labels[:, 0], marker="^", color="black", zorder=3,
               label="used for grad")
    ax.set_title(f"{name}, K={config.num_shots}")
    ax.set_ylim(-6, 6)
    ax.legend(fontsize=7, loc="lower right")
  ax = axes[len(names)]
  steps = np.arange(config.eval_steps + 1)
  for name in names:
    mse, interval = np.array(results[name]["mse"]), np.array(results[name]["interval"])
    ax.plot(steps, mse, marker="o", label=name)
    ax.fill_between(steps, mse - interval, mse + interval, alpha=0.2)
  pre_update = [results[name]["mse"][0] for name in names]
  ax.set_ylim(0.0, 1.2 * np.nanmax(pre_update))  # a diverging fine-tune must not hide the rest
  ax.set_xlabel("number of gradient steps")
  ax.set_ylabel("mean squared error")
  ax.set_title(f"K={config.num_shots}, {config.num_eval_tasks} held-out tasks")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


if __name__ == "__main__":
  common.run_experiment(train_and_evaluate, os.path.join(os.path.dirname(__file__), "configs", "sinusoid.py"))
