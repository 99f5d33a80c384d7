r"""Multi-task learning experiments: MMoE's synthetic benchmark, GradNorm's toy problem, MultiMNIST.

``--config.experiment`` (or the preset) picks one:

* ``mmoe`` (Ma et al., KDD 2018): shared-bottom, OMoE and MMoE on two synthetic
  regression tasks whose correlation ``p`` is controlled, over ``num_seeds``
  runs (new data, task pair and initialisation per run): the training-loss
  curve averaged over the runs, its mean over the run, and the final training
  and test MSE (mean, std and histogram over the runs) for each ``p``.
* ``gradnorm`` (Chen et al., ICML 2018): ``T`` regression tasks
  ``sigma_i tanh((B + eps_i) x)`` with output scales over two orders of
  magnitude; each method's task weights, the per-task test loss ratios
  ``L_i(t) / L_i(0)`` and their sum (the paper's task-normalised test loss).
* ``multimnist`` (Sener & Koltun, NeurIPS 2018): two overlapping MNIST digits,
  left and right digit classification with a shared LeNet; test accuracies of
  single-task models and of each weighting or aggregation method, and
  ``Delta_m%`` against the single-task models.

Every run trains ``num_seeds`` copies side by side (one ``jax.vmap``), each
method in its own ``<workdir>/<run>/`` with ``metrics.jsonl``, TensorBoard
events and orbax checkpoints (a rerun resumes). Writes ``results.json``, a
plot ``<experiment>.png``, ``run.json``, and prints a results table.

Usage:
  python -m experiments.mtl --workdir=/tmp/mtl_mmoe --config=experiments/configs/mtl.py:mmoe
  python -m experiments.mtl --workdir=/tmp/mtl_gradnorm --config=experiments/configs/mtl.py:gradnorm
  python -m experiments.mtl --workdir=/tmp/mtl_multimnist --config=experiments/configs/mtl.py:multimnist \
      --config.methods=single_0,single_1,equal,pcgrad
"""

import json
import os
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
import optax

import metalax
from experiments import common
from metalax import mtl

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTINGS = ("equal", "uncertainty", "dwa", "rlw", "gradnorm")
AGGREGATORS = ("pcgrad", "mgda", "cagrad", "graddrop", "imtl_g", "nash_mtl", "aligned_mtl", "upgrad")
EXPERIMENTS = ("mmoe", "gradnorm", "multimnist")
MMOE_MODELS = ("shared_bottom", "omoe", "mmoe")


class Problem(NamedTuple):
  """A multi-task model and its losses, as pure functions.

  Attributes:
    init: ``init(key) -> params``, a dict whose top-level keys listed in
      ``shared`` hold the shared parameters and the others the task-specific ones.
    encode: ``encode(params, inputs) -> z``, the shared representation (the
      identity where the model is not split).
    decode: ``decode(params, z) -> outputs``, ``T`` arrays ``[n, ...]``.
    task_losses: ``task_losses(outputs, labels) -> [T]`` mean losses.
    shared: the top-level parameter names that all tasks share.
    last_shared: the path of the last shared layer in ``params`` (GradNorm).
  """

  init: Callable[[jax.Array], Any]
  encode: Callable[[Any, jax.Array], jax.Array]
  decode: Callable[[Any, jax.Array], tuple[jax.Array, ...]]
  task_losses: Callable[[tuple[jax.Array, ...], jax.Array], jax.Array]
  shared: tuple[str, ...]
  last_shared: tuple[str, str] | None = None


def parse_methods(config: ml_collections.ConfigDict, num_tasks: int) -> list[str]:
  names = [n.strip() for n in str(config.methods).split(",") if n.strip()]
  known = WEIGHTINGS + AGGREGATORS + ("mgda_ub",) + tuple(f"single_{t}" for t in range(num_tasks))
  unknown = [n for n in names if n not in known]
  if not names or unknown:
    raise ValueError(f"--config.methods must be a comma-separated list of {', '.join(known)}; got "
                     f"{config.methods!r}.")
  return names


def make_weighting(name: str, config: ml_collections.ConfigDict, num_tasks: int, key: jax.Array):
  """The loss weighting called ``name`` (``single_t`` is a one-hot static weighting)."""
  if name.startswith("single_"):
    return mtl.static_weighting(jax.nn.one_hot(int(name.split("_")[1]), num_tasks))
  if name == "equal":
    return mtl.equal_weighting()
  if name == "uncertainty":
    return mtl.uncertainty_weighting()
  if name == "dwa":
    return mtl.dynamic_weight_average(config.dwa_temperature, steps_per_epoch=config.dwa_steps_per_epoch)
  if name == "rlw":
    return mtl.random_loss_weighting(key)
  if name == "gradnorm":
    return mtl.gradnorm(config.gradnorm_alpha)
  raise ValueError(f"{name!r} is not a loss weighting.")


def make_aggregator(name: str, config: ml_collections.ConfigDict, num_tasks: int, key: jax.Array):
  """The gradient aggregator called ``name``, with the papers' (LibMTL's) default hyperparameters."""
  return {
      "pcgrad": lambda: mtl.pcgrad(key),
      "mgda": lambda: mtl.mgda(),
      "cagrad": lambda: mtl.cagrad(config.cagrad_c),
      "graddrop": lambda: mtl.graddrop(key),
      "imtl_g": lambda: mtl.imtl_g(),
      "nash_mtl": lambda: mtl.nash_mtl(num_tasks, max_norm=config.nash_max_norm),
      "aligned_mtl": lambda: mtl.aligned_mtl(),
      "upgrad": lambda: mtl.upgrad(),
  }[name]()


def make_trainer(problem: Problem, method: str, config: ml_collections.ConfigDict, num_tasks: int):
  """``(init_state(key), step(state, key, batch))`` of one method, for one seed.

  The state is ``{"params": {"model", "weighting"}, "opt_state", "method_state"}``.
  Loss weightings differentiate their total loss; aggregators get the per-task
  gradients of all parameters from one :func:`metalax.mtl.task_gradients`
  (``T`` vectorised backward passes), aggregate the shared ones and sum the
  task-specific ones; ``mgda_ub`` solves MGDA on the gradients with respect
  to the shared representation (Sener & Koltun's upper bound, with their
  ``loss+`` normalisation) and trains on ``sum_i w_i L_i``.
  """
  optimizer = optax.adam(config.lr)
  # Keys inside the state are raw uint32 keys so that orbax can checkpoint them.
  dummy_key = jax.random.PRNGKey(0)
  is_aggregator = method in AGGREGATORS

  def losses_of(model_params, batch):
    z = problem.encode(model_params, batch["inputs"])
    return problem.task_losses(problem.decode(model_params, z), batch["labels"])

  def init_state(key):
    key_model, key_method = jax.random.split(key)
    model_params = problem.init(key_model)
    if is_aggregator:
      weighting_params = {}
      method_state = make_aggregator(method, config, num_tasks, jax.random.key_data(key_method)).init(
          {k: model_params[k] for k in problem.shared})
    elif method == "mgda_ub":
      weighting_params, method_state = {}, ()
    else:
      weighting_params, method_state = make_weighting(
          method, config, num_tasks, jax.random.key_data(key_method)).init(num_tasks)
    params = {"model": model_params, "weighting": weighting_params}
    return {"params": params, "opt_state": optimizer.init(params), "method_state": method_state}

  def weighting_grads(params, method_state, batch):
    weighting = make_weighting(method, config, num_tasks, dummy_key)

    def objective(params):
      task_losses = losses_of(params["model"], batch)
      total, (weights, new_state) = weighting.loss(params["weighting"], task_losses, method_state)
      if method == "gradnorm":
        layer, name = problem.last_shared
        model = params["model"]
        replace = lambda last: {**model, layer: {**model[layer], name: last}}
        _, last_grads = mtl.task_gradients(lambda last: losses_of(replace(last), batch), model[layer][name])
        total = total + weighting.balance_loss(params["weighting"], mtl.task_gradient_norms(last_grads),
                                               task_losses, method_state)
      return total, (task_losses, weights, new_state)

    (_, (task_losses, weights, new_state)), grads = jax.value_and_grad(objective, has_aux=True)(params)
    return grads, task_losses, weights, new_state

  def aggregator_grads(params, method_state, batch):
    aggregator = make_aggregator(method, config, num_tasks, dummy_key)
    model = params["model"]
    task_losses, task_grads = mtl.task_gradients(losses_of, model, batch)
    shared = {k: task_grads[k] for k in problem.shared}
    update, new_state = aggregator.update(shared, method_state, {k: model[k] for k in problem.shared},
                                          task_losses=task_losses)
    grads = {k: update[k] if k in problem.shared else jax.tree.map(lambda g: g.sum(0), task_grads[k])
             for k in task_grads}
    return {"model": grads, "weighting": {}}, task_losses, None, new_state

  def mgda_ub_grads(params, method_state, batch):
    model = params["model"]
    z = problem.encode(model, batch["inputs"])
    task_losses, z_grads = mtl.task_gradients(lambda z: problem.task_losses(problem.decode(model, z),
                                                                            batch["labels"]), z)
    flat = z_grads.reshape(num_tasks, -1)
    scale = task_losses * jnp.linalg.norm(flat, axis=1)  # "loss+" normalisation, as the official code
    weights = jax.lax.stop_gradient(mtl.min_norm_solver(flat / jnp.where(scale > 0, scale, 1.0)[:, None]))
    grads = jax.grad(lambda m: jnp.sum(weights * losses_of(m, batch)))(model)
    return {"model": grads, "weighting": {}}, task_losses, weights, method_state

  def step(state, key, batch):
    del key  # the batch is sampled outside; randomised methods keep their own key in method_state
    params = state["params"]
    if is_aggregator:
      compute = aggregator_grads
    elif method == "mgda_ub":
      compute = mgda_ub_grads
    else:
      compute = weighting_grads
    grads, task_losses, weights, method_state = compute(params, state["method_state"], batch)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    params = optax.apply_updates(params, updates)
    if method == "gradnorm":
      params = {**params, "weighting": mtl.gradnorm().renormalize(params["weighting"])}
    metrics = {"loss": jnp.sum(task_losses)}
    metrics.update({f"loss_{t}": task_losses[t] for t in range(num_tasks)})
    if weights is not None:
      metrics.update({f"weight_{t}": weights[t] for t in range(num_tasks)})
    return {"params": params, "opt_state": opt_state, "method_state": method_state}, metrics

  return init_state, step


def train_seeds(problem: Problem, method: str, config: ml_collections.ConfigDict, num_tasks: int,
                sample_batch: Callable[[jax.Array, Any], dict[str, jax.Array]], data: Any, data_axis: Any,
                run_dir: str, key: jax.Array, desc: str,
                on_checkpoint: Callable[[Any, int], dict[str, float]] | None = None,
                checkpoint_every: int | None = None) -> Any:
  """Trains ``num_seeds`` copies of ``method`` side by side; returns the state, leaves ``[S, ...]``.

  ``sample_batch(key, data) -> batch`` samples one seed's batch from its data
  (``data`` mapped over ``data_axis``: 0 where every seed has its own data, None where
  they share it). Seed ``s`` is initialised from ``fold_in(key, s)``. ``on_checkpoint``
  runs every ``checkpoint_every`` iterations (default: only at the end).
  """
  init_state, step = make_trainer(problem, method, config, num_tasks)
  state = init_seeds(init_state, key, config.num_seeds)

  mesh = common.make_mesh(config, config.batch_size)

  def seed_step(state, key, data):
    batch = metalax.parallel.shard_batch(sample_batch(key, data), mesh)  # examples split across the devices
    return step(state, key, batch)

  def all_seeds(state, key, data):
    keys = jax.random.split(key, config.num_seeds)
    state, metrics = jax.vmap(seed_step, in_axes=(0, 0, data_axis))(state, keys, data)
    return state, jax.tree.map(jnp.mean, metrics)  # metrics averaged over seeds

  return common.train_loop(all_seeds, state, data=data, key=jax.random.fold_in(key, 10_000),
                           num_iterations=config.num_iterations, steps_per_call=config.steps_per_call,
                           checkpoint_every=checkpoint_every or config.num_iterations, run_dir=run_dir, desc=desc,
                           on_checkpoint=on_checkpoint, mesh=mesh, on_nan=common.run_settings(config)["on_nan"])


def init_seeds(init_state: Callable[[jax.Array], Any], key: jax.Array, num_seeds: int) -> Any:
  """The initial states of ``num_seeds`` seeds, seed ``s`` from ``fold_in(key, s)``; leaves ``[S, ...]``."""
  return jax.vmap(lambda s: init_state(jax.random.fold_in(key, s)))(jnp.arange(num_seeds))


def random_batch(batch_size: int, to_inputs: Callable[[jax.Array], jax.Array] = lambda x: x):
  """``sample_batch(key, data)``: ``batch_size`` random training examples (with replacement)."""

  def sample(key, data):
    index = jax.random.randint(key, (batch_size,), 0, data["inputs"].shape[0])
    return {"inputs": to_inputs(data["inputs"][index]), "labels": data["labels"][index]}

  return sample


# ---------------------------------------------------------------------------
# MMoE synthetic benchmark.


def mmoe_data(key: jax.Array, split: int, num_examples: int, p: float, mmoe: ml_collections.ConfigDict):
  """Ma et al.'s two regression tasks with correlation set by ``p``: inputs ``[n, d]``, labels ``[n, 2]``.

  ``u1, u2`` orthonormal; ``w1 = c u1``, ``w2 = c (p u1 + sqrt(1 - p^2) u2)``;
  ``y_t = w_t^T x + sum_i sin(alpha_i w_t^T x + beta_i) + noise``. The paper
  does not give ``alpha, beta``; here ``alpha_i = i`` and ``beta_i = (i - 1)^2``
  (a fixed choice, source unconfirmed). ``key`` fixes ``u1, u2`` (one
  task pair per seed); the examples of split number ``split`` come from ``fold_in(key, split)``.
  """
  key_basis, key_x, key_noise = jax.random.split(jax.random.fold_in(key, 0), 3)
  basis, _ = jnp.linalg.qr(jax.random.normal(key_basis, (mmoe.dim, 2)))
  u1, u2 = basis[:, 0], basis[:, 1]
  w = mmoe.scale * jnp.stack([u1, p * u1 + np.sqrt(1.0 - p**2) * u2], axis=1)  # [d, 2]
  key_x, key_noise = jax.random.fold_in(key_x, split), jax.random.fold_in(key_noise, split)
  x = jax.random.normal(key_x, (num_examples, mmoe.dim))
  dots = x @ w  # [n, 2]
  alphas = jnp.arange(1, mmoe.num_sinusoids + 1, dtype=jnp.float32)
  betas = jnp.arange(mmoe.num_sinusoids, dtype=jnp.float32) ** 2
  y = dots + jnp.sum(jnp.sin(alphas * dots[..., None] + betas), axis=-1)
  return x, y + mmoe.noise_std * jax.random.normal(key_noise, y.shape)


def mmoe_problem(name: str, mmoe: ml_collections.ConfigDict) -> Problem:
  if name == "shared_bottom":
    module = mtl.HardParameterSharing(num_outputs=(1, 1), trunk_features=(mmoe.shared_bottom_features,),
                                      head_features=(mmoe.tower_features,))
  elif name in ("omoe", "mmoe"):
    module = mtl.MMoE(num_outputs=(1, 1), num_experts=mmoe.num_experts, expert_features=(mmoe.expert_features,),
                      tower_features=(mmoe.tower_features,), single_gate=name == "omoe")
  else:
    raise ValueError(f"unknown MMoE-benchmark model {name!r}; expected one of {', '.join(MMOE_MODELS)}.")

  def task_losses(outputs, labels):
    return jnp.stack([jnp.mean(metalax.losses.squared_error(o, labels[:, t:t + 1])) for t, o in enumerate(outputs)])

  return Problem(init=lambda key: module.init(key, jnp.zeros((1, mmoe.dim)))["params"],
                 encode=lambda params, x: x, decode=lambda params, x: module.apply({"params": params}, x),
                 task_losses=task_losses, shared=())


def mmoe_models(config: ml_collections.ConfigDict) -> list[str]:
  """The models of ``mmoe.models`` (comma-separated); raises ValueError for a name not in ``MMOE_MODELS``."""
  names = [m.strip() for m in config.mmoe.models.split(",")]
  if any(name not in MMOE_MODELS for name in names):
    raise ValueError(f"--config.mmoe.models must list {', '.join(MMOE_MODELS)}; got {config.mmoe.models!r}.")
  return names


def mmoe_learning_rates(config: ml_collections.ConfigDict) -> dict[str, float]:
  """Each model's Adam learning rate: ``mmoe.learning_rates`` ("model=lr,...") where it lists the model, else
  ``config.lr``; raises ValueError for bad models or rates."""
  models = mmoe_models(config)
  given = {}
  for item in filter(None, (i.strip() for i in config.mmoe.learning_rates.split(","))):
    model, _, value = item.partition("=")
    try:
      rate = float(value)
    except ValueError:
      rate = float("nan")  # reported below
    if model.strip() not in MMOE_MODELS or not rate > 0:
      raise ValueError(f"--config.mmoe.learning_rates must be 'model=lr,...' with models from "
                       f"{', '.join(MMOE_MODELS)} and lr > 0; got {config.mmoe.learning_rates!r}.")
    given[model.strip()] = rate
  return {model: given.get(model, config.lr) for model in models}


def run_mmoe(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Training-loss curves, final training and test MSE of each model and correlation, per seed.

  Every ``mmoe.eval_every`` iterations each seed's MSE (mean of the 2 tasks) on
  the first ``mmoe.num_curve`` training examples is recorded (``curves.jsonl``
  in the run directory, so a resumed run keeps the earlier points): the loss
  curve of the paper's Figure 4, averaged over seeds, and its mean over the run
  (the area under the curve, per seed). The final MSE on the whole training set
  is the quantity of the paper's trainability histograms (Figure 5).
  """
  mmoe = config.mmoe
  model_configs = {}
  for model, learning_rate in mmoe_learning_rates(config).items():
    model_configs[model] = config.copy_and_resolve_references()
    model_configs[model].lr = learning_rate
  results = {}
  for p in mmoe.correlations:
    if not -1.0 <= p <= 1.0:
      raise ValueError(f"correlations must lie in [-1, 1], got {p}.")
    seed_keys = jax.vmap(lambda s, p=p: jax.random.fold_in(jax.random.key(config.seed), s))(
        jnp.arange(config.num_seeds))
    sizes = {"train": mmoe.num_train, "valid": mmoe.num_valid, "test": mmoe.num_test}
    # One task pair per seed: the same u1, u2 (from the seed's key) in train, validation and test.
    splits = {split: jax.vmap(lambda k, i=i, n=n, p=p: mmoe_data(k, i, n, p, mmoe))(seed_keys)
              for i, (split, n) in enumerate(sizes.items())}
    data = {name: {"inputs": x, "labels": y} for name, (x, y) in splits.items()}
    curve_data = jax.tree.map(lambda a: a[:, :mmoe.num_curve], data["train"])
    correlation = float(np.mean([np.corrcoef(y[:, 0], y[:, 1])[0, 1] for y in np.asarray(data["train"]["labels"])]))
    for model, model_config in model_configs.items():
      problem = mmoe_problem(model, mmoe)
      losses = jax.jit(jax.vmap(lambda params, d, problem=problem: problem.task_losses(
          problem.decode(params, d["inputs"]), d["labels"])))
      run_dir = os.path.join(workdir, f"p{p:g}", model)
      curve_path = os.path.join(run_dir, "curves.jsonl")

      def evaluate(state, iteration, losses=losses, curve_path=curve_path, curve_data=curve_data,
                   valid_data=data["valid"]):
        params = state["params"]["model"]
        train = np.asarray(losses(params, curve_data)).mean(1)  # [S]
        valid = np.asarray(losses(params, valid_data)).mean(1)
        common.append_jsonl(curve_path, {"step": iteration, "train_mse": train.tolist(), "valid_mse": valid.tolist()})
        return {"train_mse": float(train.mean()), "valid_mse": float(valid.mean())}

      if not os.path.exists(os.path.join(run_dir, "checkpoints")) and os.path.exists(curve_path):
        os.remove(curve_path)  # a fresh run: drop the curve of an earlier, unfinished one
      state = train_seeds(problem, "equal", model_config, 2, random_batch(config.batch_size), data["train"], 0,
                          run_dir, jax.random.key(config.seed + 1), desc=f"{model} p={p:g}",
                          on_checkpoint=evaluate, checkpoint_every=mmoe.eval_every)
      test = np.asarray(losses(state["params"]["model"], data["test"]))  # [S, 2]
      train = np.asarray(losses(state["params"]["model"], data["train"]))
      steps, curve = read_curve(curve_path, config.num_iterations)  # [K], [K, S]
      results.setdefault(model, {})[f"{p:g}"] = {
          "test_mse": test.mean(1).tolist(), "test_mse_per_task": test.tolist(), "train_mse": train.mean(1).tolist(),
          "curve_steps": steps, "curve_train_mse": curve.tolist(), "mean_train_mse": curve.mean(0).tolist(),
          "label_correlation": correlation, "lr": model_config.lr}
  plot_mmoe(os.path.join(workdir, "mmoe.png"), results, config)
  print(mmoe_table(results, config))
  return results


def read_curve(path: str, last_step: int) -> tuple[list[int], np.ndarray]:
  """``(steps [K], values [K, S])`` of a ``curves.jsonl``; a step recorded twice (a resumed run) keeps its last record."""
  by_step = {}
  for line in open(path):
    record = json.loads(line)
    if record["step"] <= last_step:
      by_step[record["step"]] = record["train_mse"]
  steps = sorted(by_step)
  return steps, np.array([by_step[s] for s in steps])


def mmoe_table(results: dict[str, Any], config: ml_collections.ConfigDict) -> str:
  """Per model and measure: mean +- std over seeds at each correlation, and the change from the first
  correlation to the last (absolute, with its standard error, and relative); then the interquartile ranges."""
  ps = [f"{p:g}" for p in config.mmoe.correlations]
  measures = (("mean_train_mse", "curve"), ("train_mse", "final train"), ("test_mse", "final test"))
  rows = [f"MMoE synthetic benchmark, {config.num_iterations} iterations: MSE (mean of the 2 tasks), mean +- std over "
          f"{config.num_seeds} seeds; 'curve' = training MSE averaged over the run (area under the loss curve); "
          f"change from p={ps[0]} to p={ps[-1]}, +- its standard error",
          "Adam learning rates: " + ", ".join(f"{model} {by_p[ps[0]]['lr']:g}" for model, by_p in results.items()),
          f"{'model':<15}{'measure':<12}" + "".join(f"{'p=' + p:>20}" for p in ps) + f"{'change':>28}"]
  first = next(iter(results.values()))
  rows.append(f"{'(labels)':<15}{'corr.':<12}" + "".join(f"{first[p]['label_correlation']:>20.2f}" for p in ps))
  for key, name in measures:
    for model, by_p in results.items():
      values = [np.asarray(by_p[p][key]) for p in ps]
      change = values[-1].mean() - values[0].mean()
      error = (np.sqrt(values[-1].var(ddof=1) / values[-1].size + values[0].var(ddof=1) / values[0].size)
               if min(values[0].size, values[-1].size) > 1 else float("nan"))  # one seed: no error estimate
      rows.append(f"{model:<15}{name:<12}" + "".join(f"{v.mean():>11.4f} +- {v.std():.4f}" for v in values)
                  + f"{change:>+13.4f} +- {error:.4f} ({100 * change / values[0].mean():+.0f}%)")
  rows.append("spread across seeds, interquartile range:")
  for key, name in measures:
    for model, by_p in results.items():
      rows.append(f"{model:<15}{name:<12}" + "".join(
          f"{np.subtract(*np.percentile(by_p[p][key], [75, 25])):>20.4f}" for p in ps))
  return "\n".join(rows)


def plot_mmoe(path: str, results: dict[str, Any], config: ml_collections.ConfigDict) -> None:
  """Top: the mean training-loss curve of each model per correlation (paper Fig. 4); bottom: histograms of the
  seeds' final training MSE per correlation (paper Fig. 5)."""
  ps = [f"{p:g}" for p in config.mmoe.correlations]
  models = list(results)
  width = max(len(models), len(ps))
  fig, axes = plt.subplots(2, width, figsize=(4.0 * width, 7.2), squeeze=False)
  colors = {p: f"C{i}" for i, p in enumerate(ps)}
  mean_curves = [np.mean(results[m][p]["curve_train_mse"], axis=1) for m in models for p in ps]
  high = max(curve[len(curve) // 10] for curve in mean_curves)  # one scale for all models: the gaps compare
  low = 0.8 * min(curve.min() for curve in mean_curves)
  for ax, model in zip(axes[0], models):
    for p in ps:
      r = results[model][p]
      ax.plot(r["curve_steps"], np.mean(r["curve_train_mse"], axis=1), color=colors[p], label=f"p={p}")
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training MSE (mean over seeds, log)")
    ax.set_title(f"{model} (Adam {results[model][ps[0]]['lr']:g})")
    ax.legend(fontsize=8)
  finals = np.concatenate([results[m][p]["train_mse"] for m in models for p in ps])
  bins = np.linspace(finals.min(), np.quantile(finals, 0.99), 30)
  for ax, p in zip(axes[1], ps):
    for i, model in enumerate(models):
      values = np.asarray(results[model][p]["train_mse"])
      ax.hist(np.clip(values, None, bins[-1]), bins=bins, histtype="step", linewidth=1.5, color=f"C{i}",
              label=f"{model} (median {np.median(values):.4f}, IQR {np.subtract(*np.percentile(values, [75, 25])):.4f})")
    ax.set_xlabel("final training MSE")
    ax.set_ylabel("runs")
    ax.set_title(f"p={p}: final loss of {config.num_seeds} runs")
    ax.legend(fontsize=7)
  for ax in list(axes[0, len(models):]) + list(axes[1, len(ps):]):
    ax.axis("off")
  fig.suptitle(f"MMoE synthetic benchmark (Ma et al. 2018), {config.num_iterations} iterations, "
               f"{config.num_seeds} runs (new data, task pair and initialisation each)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ---------------------------------------------------------------------------
# GradNorm toy problem.


def toy_tasks(key: jax.Array, toy: ml_collections.ConfigDict):
  """``(B [out, in], eps [T, out, in], sigmas [T])`` of GradNorm's toy problem (fixed for all seeds)."""
  key_b, key_eps = jax.random.split(key)
  b = toy.b_std * jax.random.normal(key_b, (toy.output_dim, toy.input_dim))
  eps = toy.eps_std * jax.random.normal(key_eps, (toy.num_tasks, toy.output_dim, toy.input_dim))
  sigmas = jnp.logspace(0.0, np.log10(toy.max_sigma), toy.num_tasks)
  return b, eps, sigmas


TOY_INPUTS = ("normal", "unit_uniform")


def toy_batch(key: jax.Array, tasks, num_examples: int, input_dim: int, inputs: str = "unit_uniform"
              ) -> dict[str, jax.Array]:
  """Inputs ``x`` ``[n, in]`` and targets ``sigma_t tanh((B + eps_t) x)`` ``[n, T, out]``.

  ``inputs="unit_uniform"``: ``x ~ U(-1, 1)^in`` scaled to unit norm (the
  input of the public PyTorch reimplementation ``brianlan/pytorch-grad-norm``;
  the paper does not give it), so the pre-activations ``(B + eps_t) x`` have a
  standard deviation of about ``sqrt(b_std^2 + eps_std^2)``; ``"normal"``:
  ``x ~ N(0, I)``, pre-activations ``sqrt(in)`` times larger.
  """
  b, eps, sigmas = tasks
  if inputs == "normal":
    x = jax.random.normal(key, (num_examples, input_dim))
  elif inputs == "unit_uniform":
    x = jax.random.uniform(key, (num_examples, input_dim), minval=-1.0, maxval=1.0)
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
  else:
    raise ValueError(f"toy inputs must be one of {', '.join(TOY_INPUTS)}, got {inputs!r}.")
  y = sigmas[:, None, None] * jnp.tanh(jnp.einsum("toi,ni->tno", b + eps, x))
  return {"inputs": x, "labels": jnp.moveaxis(y, 0, 1)}


def toy_problem(toy: ml_collections.ConfigDict) -> Problem:
  module = mtl.HardParameterSharing(num_outputs=(toy.output_dim,) * toy.num_tasks,
                                    trunk_features=(toy.hidden,) * toy.num_layers)

  def task_losses(outputs, labels):
    return jnp.stack([jnp.mean(metalax.losses.squared_error(o, labels[:, t])) for t, o in enumerate(outputs)])

  return Problem(init=lambda key: module.init(key, jnp.zeros((1, toy.input_dim)))["params"],
                 encode=lambda params, x: x, decode=lambda params, x: module.apply({"params": params}, x),
                 task_losses=task_losses, shared=("trunk",),
                 last_shared=("trunk", f"Dense_{toy.num_layers - 1}"))


def run_gradnorm(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Per-task test loss ratios ``L_i(t) / L_i(0)`` during and after training, and the weights of every method.

  Every ``toy.eval_every`` iterations the test loss ratios (mean over seeds) and
  the paper's task-normalised test loss ``sum_i L_i(t) / L_i(0)`` are logged.
  """
  toy = config.toy
  methods = parse_methods(config, toy.num_tasks)
  tasks = toy_tasks(jax.random.key(config.seed + 7), toy)
  test = toy_batch(jax.random.key(config.seed + 8), tasks, toy.num_test, toy.input_dim, toy.inputs)
  problem = toy_problem(toy)
  test_losses = jax.jit(jax.vmap(lambda params: problem.task_losses(problem.decode(params, test["inputs"]),
                                                                    test["labels"])))
  sample = lambda key, data: toy_batch(key, data, config.batch_size, toy.input_dim, toy.inputs)
  results = {}
  for method in methods:
    key = jax.random.key(config.seed)
    init_state, _ = make_trainer(problem, method, config, toy.num_tasks)
    initial = np.asarray(test_losses(init_seeds(init_state, key, config.num_seeds)["params"]["model"]))

    def evaluate(state, iteration, initial=initial):
      del iteration
      ratios = np.asarray(test_losses(state["params"]["model"])) / initial  # [S, T]
      return {"test_normalized_loss": float(ratios.sum(1).mean()),
              **{f"test_ratio_{t}": float(ratios[:, t].mean()) for t in range(toy.num_tasks)}}

    run_dir = os.path.join(workdir, method)
    state = train_seeds(problem, method, config, toy.num_tasks, sample, tasks, None, run_dir, key, desc=method,
                        on_checkpoint=evaluate, checkpoint_every=toy.eval_every)
    final = np.asarray(test_losses(state["params"]["model"]))  # [S, T]
    ratios = final / initial
    records = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl"))]
    weights = [[r.get(f"weight_{t}", np.nan) for t in range(toy.num_tasks)] for r in records]
    evaluated = [r for r in records if "test_normalized_loss" in r]
    results[method] = {"loss_ratio": ratios.tolist(), "test_loss": final.tolist(),
                       "steps": [r["step"] for r in records], "weights": weights,
                       "eval_steps": [r["step"] for r in evaluated],
                       "test_ratio_curve": [[r[f"test_ratio_{t}"] for t in range(toy.num_tasks)] for r in evaluated],
                       "test_normalized_loss_curve": [r["test_normalized_loss"] for r in evaluated]}
  plot_gradnorm(os.path.join(workdir, "gradnorm.png"), results, np.asarray(tasks[2]), config)
  print(gradnorm_table(results, np.asarray(tasks[2]), config))
  return results


def balance(ratios: np.ndarray) -> float:
  """Spread of the per-task loss ratios, ``max_i r_i / min_i r_i`` (1 = perfectly balanced)."""
  return float(np.max(ratios) / np.min(ratios))


def gradnorm_table(results: dict[str, Any], sigmas: np.ndarray, config: ml_collections.ConfigDict) -> str:
  """Mean over seeds of the ratios at three sigmas; max/min and sum_i L_i/L_i(0) (the paper's task-normalised
  test loss) per seed, mean +- std over seeds."""
  mid = len(sigmas) // 2
  rows = [f"GradNorm toy problem, T={len(sigmas)} tasks, sigma {sigmas[0]:g}..{sigmas[-1]:g}, "
          f"{config.num_iterations} iterations: test loss ratio L_i(end)/L_i(0), mean over {config.num_seeds} seeds; "
          f"max/min and sum over tasks per seed, mean +- std",
          f"{'method':<13}{'sigma=' + format(sigmas[0], 'g'):>12}{'sigma=' + format(sigmas[mid], '.3g'):>13}"
          f"{'sigma=' + format(sigmas[-1], 'g'):>12}{'max/min':>16}{'sum_i L_i/L_i(0)':>20}"]
  for method, r in results.items():
    per_seed = np.asarray(r["loss_ratio"])  # [S, T]
    ratios = per_seed.mean(0)
    spread = [balance(x) for x in per_seed]
    total = per_seed.sum(1)
    rows.append(f"{method:<13}{ratios[0]:>12.4f}{ratios[mid]:>13.4f}{ratios[-1]:>12.4f}"
                f"{np.mean(spread):>9.2f} +- {np.std(spread):.2f}{np.mean(total):>13.3f} +- {np.std(total):.3f}")
  return "\n".join(rows)


def plot_gradnorm(path: str, results: dict[str, Any], sigmas: np.ndarray, config: ml_collections.ConfigDict) -> None:
  weighted = [m for m in results if not np.all(np.isnan(results[m]["weights"]))
              and m not in ("equal",) and not m.startswith("single_")]
  fig, axes = plt.subplots(1, len(weighted) + 2, figsize=(4.2 * (len(weighted) + 2), 3.6), squeeze=False)
  axes = axes.ravel()
  colors = plt.cm.viridis(np.linspace(0, 1, len(sigmas)))
  for ax, method in zip(axes, weighted):
    weights = np.array(results[method]["weights"])
    for t in range(len(sigmas)):
      ax.plot(results[method]["steps"], weights[:, t], color=colors[t], label=f"sigma={sigmas[t]:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("task weight")
    ax.set_title(f"{method}: weights (mean over seeds)")
  axes[0].legend(fontsize=6, ncol=2)
  ax = axes[-2]
  for method, r in results.items():
    ax.plot(r["eval_steps"], r["test_normalized_loss_curve"], label=method)
  ax.set_xlabel("iteration")
  ax.set_ylabel("sum_i L_i(t) / L_i(0) (test)")
  ax.set_title("task-normalised test loss (mean over seeds)")
  ax.legend(fontsize=8)
  ax = axes[-1]
  for method, r in results.items():
    ax.plot(sigmas, np.mean(r["loss_ratio"], axis=0), marker="o", label=method)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("task output scale sigma_i")
  ax.set_ylabel("test loss ratio L_i(end) / L_i(0)")
  ax.set_title("per-task progress (flat = balanced)")
  ax.legend(fontsize=8)
  fig.suptitle(f"GradNorm toy problem (Chen et al. 2018), {config.num_iterations} iterations")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ---------------------------------------------------------------------------
# MultiMNIST.


def multi_mnist(images: np.ndarray, labels: np.ndarray, num_examples: int, seed: int):
  """Two digits per image, as Sener & Koltun's loader: ``images [n, 28, 28, 1]`` uint8, ``labels [n, 2]``.

  Digit ``i`` at the top left of a 36x36 canvas and a random other digit
  shifted by 6 pixels down and right, overlapping with a pixel-wise max, then
  resized to 28x28 by nearest neighbour. Labels: (left digit, right digit).
  """
  rng = np.random.default_rng(seed)
  left = rng.permutation(images.shape[0])[:num_examples]
  right = rng.integers(0, images.shape[0], num_examples)
  canvas = np.zeros((num_examples, 36, 36), np.uint8)
  canvas[:, :28, :28] = images[left, :, :, 0]
  canvas[:, 6:34, 6:34] = np.maximum(canvas[:, 6:34, 6:34], images[right, :, :, 0])
  rows = np.floor((np.arange(28) + 0.5) * 36 / 28).astype(int)
  return canvas[:, rows][:, :, rows][..., None], np.stack([labels[left], labels[right]], axis=1).astype(np.int32)


class LeNetTrunk(nn.Module):
  """Sener & Koltun's MultiLeNet encoder: conv 10@5x5, pool, conv 20@5x5, pool, dense 50 (ReLUs)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(nn.max_pool(nn.Conv(10, (5, 5), padding="VALID")(x), (2, 2), (2, 2)))
    x = nn.relu(nn.max_pool(nn.Conv(20, (5, 5), padding="VALID")(x), (2, 2), (2, 2)))
    return nn.relu(nn.Dense(50, name="last")(x.reshape(x.shape[0], -1)))


class DigitHeads(nn.Module):
  """One MultiLeNet decoder per task: dense 50, ReLU, dense 10."""

  num_tasks: int = 2

  @nn.compact
  def __call__(self, z: jax.Array) -> tuple[jax.Array, ...]:
    return tuple(metalax.models.MLP(features=(50,), num_outputs=10, name=f"head_{t}")(z)
                 for t in range(self.num_tasks))


class MLPTrunk(nn.Module):
  """A fully connected encoder, ``Dense -> ReLU`` per width (the last one named ``"last"``)."""

  features: tuple[int, ...] = (256, 128)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.features):
      x = nn.relu(nn.Dense(width, name="last" if i == len(self.features) - 1 else f"Dense_{i}")(x))
    return x


def multimnist_problem(trunk_name: str = "lenet", mlp_features: tuple[int, ...] = (256, 128)) -> Problem:
  """The shared trunk (``"lenet"``: :class:`LeNetTrunk`; ``"mlp"``: :class:`MLPTrunk`) and two digit heads."""
  if trunk_name not in ("lenet", "mlp"):
    raise ValueError(f"--config.multimnist.trunk must be lenet or mlp, got {trunk_name!r}.")
  trunk = LeNetTrunk() if trunk_name == "lenet" else MLPTrunk(tuple(mlp_features))
  width = 50 if trunk_name == "lenet" else mlp_features[-1]
  heads = DigitHeads()

  def init(key):
    key_trunk, key_heads = jax.random.split(key)
    return {"trunk": trunk.init(key_trunk, jnp.zeros((1, 28, 28, 1)))["params"],
            "heads": heads.init(key_heads, jnp.zeros((1, width)))["params"]}

  def task_losses(outputs, labels):
    return jnp.stack([jnp.mean(metalax.losses.cross_entropy(o, labels[:, t])) for t, o in enumerate(outputs)])

  return Problem(init=init, encode=lambda params, x: trunk.apply({"params": params["trunk"]}, x),
                 decode=lambda params, z: heads.apply({"params": params["heads"]}, z),
                 task_losses=task_losses, shared=("trunk",), last_shared=("trunk", "last"))


def run_multimnist(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Test accuracies of every method and ``Delta_m%`` against the single-task models."""
  settings = config.multimnist
  methods = parse_methods(config, 2)
  data_dir = settings.data_dir or os.path.join(REPO_ROOT, "..", "shared", "data", "mnist")
  train = multi_mnist(*metalax.data.load_mnist(data_dir, "train"), settings.num_train, settings.data_seed)
  test = multi_mnist(*metalax.data.load_mnist(data_dir, "test"), settings.num_test, settings.data_seed + 1)
  train = {"inputs": jnp.asarray(train[0]), "labels": jnp.asarray(train[1])}
  problem = multimnist_problem(settings.trunk, tuple(settings.mlp_features))

  @jax.jit
  def correct(params, inputs, labels):  # [S, T] correct counts on one test batch
    def one(p):
      outputs = problem.decode(p, problem.encode(p, metalax.data.to_float32(inputs)))
      return jnp.stack([jnp.sum(jnp.argmax(o, -1) == labels[:, t]) for t, o in enumerate(outputs)])
    return jax.vmap(one)(params)

  def accuracy(params):
    total = sum(np.asarray(correct(params, test[0][i:i + settings.eval_batch_size],
                                   test[1][i:i + settings.eval_batch_size]))
                for i in range(0, test[0].shape[0], settings.eval_batch_size))
    return total / test[0].shape[0]

  results = {}
  for method in methods:
    state = train_seeds(problem, method, config, 2, random_batch(config.batch_size, metalax.data.to_float32),
                        train, None, os.path.join(workdir, method), jax.random.key(config.seed), desc=method)
    results[method] = {"accuracy": accuracy(state["params"]["model"]).tolist()}  # [S, 2]
  baselines = single_task_baselines(results)
  for method, r in results.items():
    acc = np.asarray(r["accuracy"])
    if baselines is not None and not method.startswith("single_"):
      r["delta_m"] = [mtl.delta_m(a, baselines, [True, True]) for a in acc]
  with_single = baselines is not None
  plot_multimnist(os.path.join(workdir, "multimnist.png"), results, baselines, config)
  print(multimnist_table(results, baselines, config))
  return {"methods": results, "single_task": None if not with_single else baselines.tolist()}


def single_task_baselines(results: dict[str, Any]) -> np.ndarray | None:
  """``[T]`` the single-task models' accuracies on their own task (mean over seeds), if both ran."""
  if not all(f"single_{t}" in results for t in range(2)):
    return None
  return np.array([np.mean(np.asarray(results[f"single_{t}"]["accuracy"])[:, t]) for t in range(2)])


def multimnist_table(results: dict[str, Any], baselines: np.ndarray | None, config: ml_collections.ConfigDict) -> str:
  rows = [f"MultiMNIST, {config.num_iterations} iterations of batch {config.batch_size}: test accuracy (%), "
          f"mean +- std over {config.num_seeds} seeds; Delta_m% against the single-task models",
          f"{'method':<13}{'left':>16}{'right':>16}{'Delta_m%':>16}"]
  for method, r in results.items():
    acc = 100 * np.asarray(r["accuracy"])
    if method.startswith("single_"):
      t = int(method.split("_")[1])
      cells = ["-" * 3] * 2
      cells[t] = f"{acc[:, t].mean():.2f} +- {acc[:, t].std():.2f}"
      rows.append(f"{method:<13}{cells[0]:>16}{cells[1]:>16}{'(baseline)':>16}")
      continue
    delta = (f"{np.mean(r['delta_m']):+.2f} +- {np.std(r['delta_m']):.2f}" if "delta_m" in r else "-")
    rows.append(f"{method:<13}{acc[:, 0].mean():>9.2f} +- {acc[:, 0].std():.2f}"
                f"{acc[:, 1].mean():>9.2f} +- {acc[:, 1].std():.2f}{delta:>16}")
  return "\n".join(rows)


def plot_multimnist(path: str, results: dict[str, Any], baselines: np.ndarray | None,
                    config: ml_collections.ConfigDict) -> None:
  methods = [m for m in results if not m.startswith("single_")]
  fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(methods) + 2), 3.6))
  positions = np.arange(len(methods))
  for t, (offset, name) in enumerate(((-0.2, "left"), (0.2, "right"))):
    acc = np.array([100 * np.asarray(results[m]["accuracy"])[:, t] for m in methods])  # [M, S]
    ax.bar(positions + offset, acc.mean(1), 0.4, yerr=acc.std(1), capsize=2, label=name)
    if baselines is not None:
      ax.axhline(100 * baselines[t], color=f"C{t}", linestyle="--", linewidth=1, label=f"single-task {name}")
  ax.set_xticks(positions, methods, rotation=45, ha="right")
  low = min(100 * np.asarray(results[m]["accuracy"]).min() for m in methods)  # single-task models score ~10%
  high = max(100 * np.asarray(results[m]["accuracy"]).max() for m in methods)  # on the task they did not train
  if baselines is not None:
    low, high = min(low, 100 * baselines.min()), max(high, 100 * baselines.max())
  ax.set_ylim(low - 1, high + 1)
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"MultiMNIST, mean +- std over {config.num_seeds} seeds")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


# ---------------------------------------------------------------------------
# Entry point.


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for settings that cannot run, before anything is compiled."""
  if config.experiment not in EXPERIMENTS:
    raise ValueError(f"--config.experiment must be one of {', '.join(EXPERIMENTS)}, got {config.experiment!r}.")
  for field in ("num_seeds", "batch_size", "num_iterations", "steps_per_call"):
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"--config.{field} must be an int >= 1, got {value!r}.")
  common.require_float32(config, "mtl")
  if config.experiment == "gradnorm":
    parse_methods(config, config.toy.num_tasks)
    if config.toy.inputs not in TOY_INPUTS:
      raise ValueError(f"--config.toy.inputs must be one of {', '.join(TOY_INPUTS)}, got {config.toy.inputs!r}.")
  elif config.experiment == "multimnist":
    parse_methods(config, 2)
  else:
    mmoe_learning_rates(config)  # checks mmoe.models as well


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs the configured experiment, writes ``results.json`` and its plot, and returns the results."""
  check_config(config)
  workdir = common.prepare_workdir(workdir)
  common.write_run_info(workdir, config)
  run = {"mmoe": run_mmoe, "gradnorm": run_gradnorm, "multimnist": run_multimnist}[config.experiment]
  results = run(config, workdir)
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump({"experiment": config.experiment, "num_seeds": config.num_seeds, "results": results}, f, indent=2)
  return results


if __name__ == "__main__":
  common.run_experiment(train_and_evaluate, os.path.join(os.path.dirname(__file__), "configs", "mtl.py"))
