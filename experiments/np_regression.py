r"""Neural processes on Gaussian-process regression: CNP, NP and ANP beside the exact GP posterior.

Trains each learner of ``--config.learners`` on functions drawn from a GP (``metalax.data.sample_gp``),
then on held-out tasks reports, per target point (the targets exclude the context): the predictive
negative log-likelihood (for latent models ``-log mean_s p(y | x, z_s)``, ``z_s ~ q(z | C)``,
``num_eval_samples`` samples), the coverage of the central 95% interval (of the Gaussian with the
predictive's mean and variance) and the MSE of the predictive mean, each with a 95% interval over tasks,
beside the same numbers for the exact GP posterior predictive (the ceiling: the data come from that GP).
Writes into ``--workdir``: ``results.json``, ``np_regression.png`` (predictive bands of one held-out task),
``run.json`` and per learner ``<learner>/metrics.jsonl`` and orbax checkpoints (a rerun resumes).

Usage:
  python -m experiments.np_regression --workdir=/tmp/np_regression
  python -m experiments.np_regression --workdir=/tmp/np_matern --config.kernel=matern52
  python -m experiments.np_regression --workdir=/tmp/np_paper --config=experiments/configs/np_regression.py:paper
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import metalax
from metalax import meta
from metalax import training

LEARNERS = ("cnp", "np", "anp")


def make_learner(name: str, config: ml_collections.ConfigDict) -> meta.MetaLearner:
  """The learner ``name`` with the config's widths."""
  common = dict(hidden_dim=config.hidden_dim, seed=config.seed)
  if name == "cnp":
    return meta.cnp(**common)
  if name == "np":
    return meta.latent_np(latent_dim=config.latent_dim, deterministic_path=config.np_deterministic_path, **common)
  if name == "anp":
    return meta.anp(latent_dim=config.latent_dim, num_heads=config.num_heads,
                    self_attention_layers=config.self_attention_layers, **common)
  raise ValueError(f"--config.learners: unknown learner {name!r}; expected one of {', '.join(LEARNERS)}.")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for any field that cannot run, before anything is compiled."""
  training.run_settings(config)
  training.check_positive_int(config, "num_context", "num_targets", "hidden_dim", "latent_dim", "num_heads",
                              "meta_batch_size", "num_test_episodes", "test_num_targets", "num_eval_samples",
                              "plot_points")
  training.check_nonnegative_int(config, "self_attention_layers")
  training.check_positive_float(config, "lr", "noise", "period")
  training.check_choice(config, "kernel", metalax.data.gp.KERNELS)
  if not config.learners or any(name not in LEARNERS for name in config.learners):
    raise ValueError(f"--config.learners must be a non-empty tuple of {', '.join(LEARNERS)}, got "
                     f"{config.learners!r}.")
  for name in config.learners:
    make_learner(name, config)
  tasks(config, jax.random.key(0), 1)   # checks the kernel ranges


def tasks(config: ml_collections.ConfigDict, key: jax.Array, num_tasks: int) -> metalax.data.GPTasks:
  return metalax.data.sample_gp_tasks(key, num_tasks, kernel=config.kernel, lengthscale=tuple(config.lengthscale),
                                      signal_scale=tuple(config.signal_scale), period=config.period,
                                      noise=config.noise)


def train(learner: meta.MetaLearner, config: ml_collections.ConfigDict, run_dir: str, key: jax.Array,
          desc: str) -> Any:
  """Trains ``learner`` on fresh GP episodes, resuming from ``run_dir``; returns its meta-parameters."""
  optimizer = optax.adam(config.lr)
  meta_step = meta.train_step(learner, optimizer)

  def step(state, key, data):
    del data  # episodes are sampled from the key alone
    key_tasks, key_points, key_step = jax.random.split(key, 3)
    episodes = metalax.data.gp_episodes(key_points, tasks(config, key_tasks, config.meta_batch_size),
                                        config.num_context, config.num_targets)
    meta_params, opt_state, metrics = meta_step(state["meta_params"], state["opt_state"], episodes, key_step)
    return {"meta_params": meta_params, "opt_state": opt_state}, metrics

  meta_params = learner.init(None)
  state = training.train_loop(
      step, {"meta_params": meta_params, "opt_state": optimizer.init(meta_params)}, data=None, key=key,
      num_iterations=config.num_iterations, steps_per_call=config.steps_per_call,
      checkpoint_every=config.checkpoint_every, run_dir=run_dir, desc=desc, on_nan=config.on_nan)
  return state["meta_params"]


def predictive_moments(learner: meta.MetaLearner, meta_params: Any, support: metalax.Batch, inputs: jax.Array,
                       key: jax.Array, num_samples: int) -> tuple[jax.Array, jax.Array]:
  """Mean and standard deviation ``[n, 1]`` of the predictive (a mixture over ``num_samples`` latents)."""
  task_params = learner.adapt(meta_params, support)
  samples = jax.vmap(lambda k: learner.predict(task_params, inputs, key=k))(jax.random.split(key, num_samples))
  mean = jnp.mean(samples.mean, axis=0)
  variance = jnp.mean(jnp.square(samples.scale) + jnp.square(samples.mean), axis=0) - jnp.square(mean)
  return mean, jnp.sqrt(jnp.maximum(variance, 0.0))


def evaluate(learner: meta.MetaLearner, meta_params: Any, episodes: metalax.Episode, key: jax.Array,
             num_samples: int) -> dict[str, np.ndarray]:
  """Per-task NLL, 95% coverage and MSE per target point: ``{metric: [B]}``."""

  @jax.jit
  def run(meta_params, episodes, key):
    def one(episode, key):
      key_nll, key_moments = jax.random.split(key)
      _, aux = learner.loss(meta_params, episode, key=key_nll, num_samples=num_samples)
      mean, scale = predictive_moments(learner, meta_params, episode.support, episode.query.inputs, key_moments,
                                       num_samples)
      coverage = jnp.mean(metalax.metrics.interval_coverage(mean, scale, episode.query.labels))
      return {"nll": aux["nll"], "coverage": coverage, "mse": aux["mse"]}

    num_tasks = episodes.support.inputs.shape[0]
    return jax.lax.map(lambda args: one(*args), (episodes, jax.random.split(key, num_tasks)))

  return jax.tree.map(np.asarray, run(meta_params, episodes, key))


def gp_ceiling(gp_tasks: metalax.data.GPTasks, episodes: metalax.Episode) -> dict[str, np.ndarray]:
  """The same per-task metrics for the exact GP posterior predictive."""
  mean, scale = metalax.data.gp_predictive(gp_tasks, episodes.support, episodes.query.inputs)
  labels = episodes.query.labels
  nll = jax.vmap(metalax.metrics.gaussian_nll)(mean, scale, labels)
  coverage = jax.vmap(metalax.metrics.interval_coverage)(mean, scale, labels)
  return {"nll": np.asarray(jnp.mean(nll, -1)), "coverage": np.asarray(jnp.mean(coverage, -1)),
          "mse": np.asarray(jnp.mean(jnp.square(mean - labels), (-2, -1)))}


def summarise(per_task: dict[str, np.ndarray]) -> dict[str, list[float]]:
  out = {}
  for name, values in per_task.items():
    mean, interval = training.mean_and_interval(np.asarray(values, np.float64))
    out[name] = [float(mean), float(interval)]
  return out


def plot(path: str, trained: dict[str, tuple[meta.MetaLearner, Any]], gp_tasks: metalax.data.GPTasks,
         episodes: metalax.Episode, config: ml_collections.ConfigDict, key: jax.Array) -> None:
  """Predictive mean and 95% band of every learner and of the GP on one held-out task."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  task = jax.tree.map(lambda x: x[:1], gp_tasks)
  support = jax.tree.map(lambda x: x[0], episodes.support)
  grid = jnp.linspace(*metalax.data.gp.INPUT_RANGE, config.plot_points)[:, None]
  panels = [("GP (exact)", metalax.data.gp_predictive(task, jax.tree.map(lambda x: x[None], support),
                                                      grid[None]))]
  panels = [(name, (m[0], s[0])) for name, (m, s) in panels]
  for name, (learner, meta_params) in trained.items():
    moments = jax.jit(predictive_moments, static_argnums=(0, 5))(learner, meta_params, support, grid, key,
                                                                  config.num_eval_samples)
    panels.append((name.upper(), moments))
  figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), sharey=True)
  for axis, (title, (mean, scale)) in zip(np.atleast_1d(axes), panels):
    x, mean, scale = np.asarray(grid[:, 0]), np.asarray(mean[:, 0]), np.asarray(scale[:, 0])
    axis.fill_between(x, mean - 1.96 * scale, mean + 1.96 * scale, alpha=0.25, color="tab:blue")
    axis.plot(x, mean, color="tab:blue", linewidth=1.5)
    axis.plot(np.asarray(episodes.query.inputs[0, :, 0]), np.asarray(episodes.query.labels[0, :, 0]), ".",
              color="0.6", markersize=3)
    axis.plot(np.asarray(support.inputs[:, 0]), np.asarray(support.labels[:, 0]), "ko", markersize=4)
    axis.set_title(title)
    axis.set_xlabel("x")
  np.atleast_1d(axes)[0].set_ylabel("y (mean and 95% band)")
  figure.tight_layout()
  figure.savefig(path, dpi=120)
  plt.close(figure)


def table(results: dict[str, dict[str, list[float]]]) -> str:
  lines = [f"{'model':>8} {'NLL/point':>18} {'95% coverage':>18} {'MSE':>18}"]
  for name, row in results.items():
    cells = [f"{row[m][0]:8.3f} +- {row[m][1]:6.3f}" for m in ("nll", "coverage", "mse")]
    lines.append(f"{name:>8} " + " ".join(f"{c:>18}" for c in cells))
  return "\n".join(lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains every configured learner, evaluates it and the exact GP on held-out tasks, writes the results.

  Returns:
    ``{model: {"nll": [mean, interval], "coverage": [...], "mse": [...]}}``, with the GP as ``"gp"``.
  """
  check_config(config)
  workdir = training.prepare_workdir(workdir)
  training.check_resume(workdir, config)
  training.write_run_info(workdir, config)
  key_train, key_test, key_eval = jax.random.split(jax.random.key(config.seed), 3)
  key_tasks, key_points = jax.random.split(key_test)
  test_tasks = tasks(config, key_tasks, config.num_test_episodes)
  test_episodes = metalax.data.gp_episodes(key_points, test_tasks, config.num_context, config.test_num_targets)
  results = {"gp": summarise(gp_ceiling(test_tasks, test_episodes))}
  trained = {}
  for name in config.learners:
    learner = make_learner(name, config)
    meta_params = train(learner, config, os.path.join(workdir, name), key_train, f"{name:>4}")
    results[name] = summarise(evaluate(learner, meta_params, test_episodes, key_eval, config.num_eval_samples))
    trained[name] = (learner, meta_params)
  training.write_json(os.path.join(workdir, "results.json"),
                      {"num_context": config.num_context, "num_test_episodes": config.num_test_episodes,
                       "test_num_targets": config.test_num_targets, "results": results})
  plot(os.path.join(workdir, "np_regression.png"), trained, test_tasks, test_episodes, config, key_eval)
  print(table(results))
  return results


if __name__ == "__main__":
  training.run(train_and_evaluate, os.path.join(os.path.dirname(__file__), "configs", "np_regression.py"))
