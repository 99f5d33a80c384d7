r"""N-way K-shot image classification (Omniglot, MNIST) with any metalax learner.

Loads the dataset from local files, splits it by class, meta-trains with
episodes sampled on device, validates every ``eval_every`` iterations, keeps
the checkpoint with the best validation accuracy, and tests it on
``num_test_episodes`` episodes from the test classes. Writes into ``--workdir``::

  results.json          test accuracy: mean and 95% interval; best validation step
  curves.png            training loss and validation accuracy against iterations
  metrics.jsonl, tb/    training and validation metrics (JSON lines, TensorBoard events)
  run.json              config, command line, package versions
  checkpoints/, best/   orbax checkpoints: latest (a rerun resumes from it) and best-validation

Usage:
  python -m experiments.fewshot --workdir=/tmp/protonet_5w1s \
      --config=experiments/configs/fewshot.py:protonet_5w1s
  python -m experiments.fewshot --workdir=/tmp/maml_5w1s \
      --config=experiments/configs/fewshot.py:maml_5w1s --config.num_iterations=5000
  # A metric learner started from a pretrained encoder (the workdir of an experiments.representation run,
  # with the same hidden, backbone and norm):
  python -m experiments.fewshot --workdir=/tmp/protonet_simclr \
      --config=experiments/configs/fewshot.py:protonet_5w1s --config.init_encoder=/tmp/simclr \
      --config.hidden=32 --config.backbone=strided
"""

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np
import optax

import metalax
from experiments import common
from metalax import meta

matplotlib.use("Agg")
import matplotlib.pyplot as plt

GRADIENT_LEARNERS = ("maml", "fomaml", "metasgd", "anil", "reptile", "imaml")
METRIC_LEARNERS = ("protonet", "matching", "knn", "r2d2", "blackbox")
# Learners whose meta_params["params"] is the Conv-4 embedding network itself (the layout of a representation
# run's encoder checkpoint, experiments.representation): --config.init_encoder can start them from one.
ENCODER_LEARNERS = ("protonet", "matching", "knn", "r2d2")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def episode_counts(config: ml_collections.ConfigDict, split: str) -> tuple[int, int, int]:
  """``(num_ways, num_shots, num_queries)`` of training or evaluation episodes."""
  if split == "train":
    return config.num_ways, config.num_shots, config.num_queries
  return (config.test_num_ways or config.num_ways, config.test_num_shots or config.num_shots,
          config.test_num_queries or config.num_queries)


def make_learner(config: ml_collections.ConfigDict, num_ways: int, num_steps: int
                 ) -> tuple[meta.MetaLearner, Any]:
  """The configured learner for ``num_ways``-way episodes, and its backbone module."""
  name = config.learner
  gradient_based = name in GRADIENT_LEARNERS
  backbone = metalax.models.Conv4(num_outputs=num_ways if gradient_based else None, hidden=config.hidden,
                                  variant=config.backbone, norm=config.norm, conv_impl=config.conv_impl)
  apply_fn = metalax.models.from_linen(backbone)
  loss_fn = metalax.losses.cross_entropy
  if name in ("maml", "fomaml", "anil"):
    constructor = {"maml": meta.maml, "fomaml": meta.fomaml, "anil": meta.anil}[name]
    return constructor(apply_fn, loss_fn, inner_lr=config.inner_lr, num_steps=num_steps), backbone
  if name == "metasgd":
    return meta.metasgd(apply_fn, loss_fn, init_lr=config.inner_lr, num_steps=num_steps), backbone
  if name == "reptile":
    return meta.reptile(apply_fn, loss_fn, inner_lr=config.inner_lr, num_steps=num_steps), backbone
  if name == "imaml":
    return meta.imaml(apply_fn, loss_fn, inner_lr=config.inner_lr, num_steps=num_steps,
                      reg=config.imaml_reg), backbone
  if name == "protonet":
    return meta.protonet(apply_fn, num_ways=num_ways), backbone
  if name == "matching":
    return meta.matching_net(apply_fn, num_ways=num_ways), backbone
  if name == "knn":
    return meta.nearest_neighbour(apply_fn, num_ways=num_ways), backbone
  if name == "r2d2":
    return meta.r2d2(apply_fn, num_ways=num_ways), backbone
  if name == "blackbox":
    sample = jnp.zeros((2, 28, 28, 1) if config.dataset in ("omniglot", "mnist") else ())
    embedding_dim = jax.eval_shape(lambda: backbone.init_with_output(jax.random.key(0), sample)[0]).shape[-1]
    return meta.blackbox(apply_fn, num_ways=num_ways, embedding_dim=embedding_dim, seed=config.seed), backbone
  raise ValueError(f"unknown learner {name!r}; expected one of "
                   f"{', '.join(GRADIENT_LEARNERS + METRIC_LEARNERS)}.")


def load_splits(config: ml_collections.ConfigDict) -> dict[str, metalax.data.ClassImages]:
  """``{"train", "validation", "test"}`` images as uint8 ``[classes, per_class, 28, 28, 1]``."""
  data_dir = config.data_dir or os.path.join(REPO_ROOT, "..", "shared", "data", config.dataset)
  if config.dataset == "omniglot":
    characters = metalax.data.load_omniglot(data_dir, dtype=np.uint8, cache_dir=config.cache_dir or None)
    splits = metalax.data.omniglot_splits(characters, config.split, num_validation=config.num_validation)
  elif config.dataset == "mnist":
    # Digits 0-4 train, 5-9 test (validation: 5-9 of the official test images): 5-way at most.
    train = metalax.data.to_dense(metalax.data.mnist_class_images(data_dir, "train", dtype=np.uint8),
                                  num_per_class=5421)
    test = metalax.data.to_dense(metalax.data.mnist_class_images(data_dir, "test", dtype=np.uint8),
                                 num_per_class=892)
    splits = {"train": metalax.data.select_classes(train, range(5)),
              "validation": metalax.data.select_classes(test, range(5, 10)),
              "test": metalax.data.select_classes(train, range(5, 10))}
  else:
    raise ValueError(f"unknown dataset {config.dataset!r}; expected omniglot or mnist.")
  if "validation" not in splits:
    raise ValueError(f"split {config.split!r} has no validation classes; set --config.num_validation > 0.")
  for split, data in splits.items():
    ways, shots, queries = episode_counts(config, "train" if split == "train" else "test")
    if ways > data.num_classes or shots + queries > data.num_per_class:
      raise ValueError(
          f"{ways}-way {shots}-shot episodes with {queries} queries per class need {ways} classes with "
          f"{shots + queries} images each, but the {split} split has {data.num_classes} classes of "
          f"{data.num_per_class} images.")
  return splits


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for settings that cannot run, before any data is read."""
  for field in ("num_ways", "num_shots", "num_queries", "meta_batch_size", "num_iterations", "steps_per_call",
                "eval_every", "num_valid_episodes", "num_test_episodes", "eval_batch_size", "hidden"):
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"--config.{field} must be an int >= 1, got {value!r}.")
  if config.num_ways < 2:
    raise ValueError(f"--config.num_ways must be >= 2, got {config.num_ways}.")
  if (config.learner in GRADIENT_LEARNERS + ("blackbox",)
      and episode_counts(config, "test")[0] != config.num_ways):
    raise ValueError(f"{config.learner} has a {config.num_ways}-way output layer: test_num_ways must equal "
                     f"num_ways, got {config.test_num_ways}.")
  if config.lr_schedule not in ("constant", "step", "cosine"):
    raise ValueError(f"--config.lr_schedule must be constant, step or cosine, got {config.lr_schedule!r}.")
  if config.init_encoder and config.learner not in ENCODER_LEARNERS:
    raise ValueError(f"--config.init_encoder needs a learner whose meta-parameters are the encoder "
                     f"({', '.join(ENCODER_LEARNERS)}), got {config.learner!r}.")
  make_learner(config, config.num_ways, config.num_steps)


def load_init_encoder(config: ml_collections.ConfigDict, params: Any) -> Any:
  """The encoder params saved by ``experiments.representation`` in ``config.init_encoder``, shaped like ``params``.

  Args:
    config: the few-shot config; ``init_encoder`` is a representation run's
      workdir (holding ``encoder/<step>/``, an orbax checkpoint of
      ``{"params": encoder params}``, and ``run.json``).
    params: the freshly initialised backbone params (``Conv4(None, hidden,
      backbone, norm)``), the tree to restore into.

  Returns:
    The checkpoint's params, replacing ``params``.

  Raises:
    FileNotFoundError: if ``init_encoder`` holds no encoder checkpoint.
    ValueError: if the checkpoint's encoder (its run's ``hidden``,
      ``backbone``, ``norm``, or its array names and shapes) is not the
      configured backbone.
  """
  fields = ("hidden", "backbone", "norm")
  run_path = os.path.join(config.init_encoder, "run.json")
  stored = json.load(open(run_path)).get("config", {}) if os.path.exists(run_path) else {}
  what = f"--config.init_encoder={config.init_encoder} (expected the workdir of an experiments.representation run)"
  abstract = {"params": jax.tree.map(common.ocp.utils.to_shape_dtype_struct, params)}
  try:
    restored, mismatch = common.restore_latest(os.path.join(config.init_encoder, "encoder"), abstract, what), None
  except common.CheckpointMismatch as error:
    restored, mismatch = None, error.mismatch
  if mismatch or any(f in stored and stored[f] != config[f] for f in fields):
    found = ", ".join(f"{f}={stored.get(f, '?')}" for f in fields)
    wanted = ", ".join(f"{f}={config[f]}" for f in fields)
    raise ValueError(f"--config.init_encoder={config.init_encoder}: its encoder ({found}) is not the configured "
                     f"backbone ({wanted}){': ' + mismatch if mismatch else ''}.")
  return restored["params"]


def learning_rate(config: ml_collections.ConfigDict) -> optax.Schedule:
  if config.lr_schedule == "step":
    return optax.exponential_decay(config.outer_lr, config.lr_decay_every, 0.5, staircase=True)
  if config.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(config.outer_lr, config.num_iterations)
  return optax.constant_schedule(config.outer_lr)


def as_float(episodes: metalax.Episode) -> metalax.Episode:
  convert = lambda batch: batch.replace(inputs=metalax.data.to_float32(batch.inputs))
  return episodes.replace(support=convert(episodes.support), query=convert(episodes.query))


def make_evaluator(learner: meta.MetaLearner, counts: tuple[int, int, int], batch_size: int):
  """``evaluate(meta_params, images, key, num_episodes) -> accuracies [num_episodes]``.

  One jitted program evaluates ``batch_size`` episodes; validation and test
  share it, batch after batch.
  """
  evaluate = meta.evaluate(learner)

  @jax.jit
  def one_batch(meta_params, images, key):
    return evaluate(meta_params, as_float(metalax.sample_episodes(key, images, batch_size, *counts)))["accuracy"]

  def run(meta_params, images, key, num_episodes):
    keys = jax.random.split(key, -(-num_episodes // batch_size))
    return np.concatenate([np.asarray(one_batch(meta_params, images, k)) for k in keys])[:num_episodes]

  return run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Meta-trains, validates, tests the best-validation checkpoint and writes the results.

  Returns:
    ``{"test_accuracy", "test_interval", "best_step", "best_validation_accuracy", ...}``.
  """
  check_config(config)
  workdir = common.prepare_workdir(workdir)
  common.write_run_info(workdir, config)
  splits = load_splits(config)
  images = {name: jax.device_put(data.images) for name, data in splits.items()}
  key_init, key_train, key_valid, key_test = jax.random.split(jax.random.key(config.seed), 4)

  train_counts, test_counts = episode_counts(config, "train"), episode_counts(config, "test")
  learner, backbone = make_learner(config, train_counts[0], config.num_steps)
  test_learner, _ = make_learner(config, test_counts[0], config.test_num_steps)
  params = jax.jit(backbone.init)(key_init, jnp.zeros((2, *splits["train"].image_shape)))["params"]  # one compile, not one per op
  if config.init_encoder:
    params = load_init_encoder(config, params)
  optimizer = optax.adam(learning_rate(config))
  mesh = common.make_mesh(config, config.meta_batch_size)
  train_step = common.meta_train_step(learner, optimizer, config, mesh)

  def step(state, key, train_images):
    episodes = as_float(metalax.sample_episodes(key, train_images, config.meta_batch_size, *train_counts))
    meta_params, opt_state, metrics = train_step(state["meta_params"], state["opt_state"], episodes)
    return {"meta_params": meta_params, "opt_state": opt_state}, metrics

  evaluate = make_evaluator(test_learner, test_counts, config.eval_batch_size)
  best_manager = common.checkpoint_manager(os.path.join(workdir, "best"), max_to_keep=1)
  best_path = os.path.join(workdir, "best.json")

  def on_checkpoint(state, iteration):
    accuracy = float(np.mean(evaluate(state["meta_params"], images["validation"], key_valid,
                                      config.num_valid_episodes)))
    best = json.load(open(best_path)) if os.path.exists(best_path) else {"accuracy": -1.0}
    if accuracy > best["accuracy"]:
      best_manager.save(iteration, args=common.ocp.args.StandardSave(state["meta_params"]), force=True)
      best_manager.wait_until_finished()
      with open(best_path, "w") as f:
        json.dump({"step": iteration, "accuracy": accuracy}, f)
    return {"validation_accuracy": accuracy}

  meta_params = learner.init(params)
  state = common.train_loop(
      step, {"meta_params": meta_params, "opt_state": optimizer.init(meta_params)}, data=images["train"],
      key=key_train, num_iterations=config.num_iterations, steps_per_call=config.steps_per_call,
      checkpoint_every=config.eval_every, run_dir=workdir, desc=config.learner,
      on_checkpoint=on_checkpoint, mesh=mesh, on_nan=common.run_settings(config)["on_nan"])

  best = json.load(open(best_path))
  best_params = best_manager.restore(best["step"], args=common.ocp.args.StandardRestore(
      jax.tree.map(common.ocp.utils.to_shape_dtype_struct, state["meta_params"])))
  accuracy, interval = common.mean_and_interval(
      evaluate(best_params, images["test"], key_test, config.num_test_episodes))
  ways, shots, queries = test_counts
  results = {"test_accuracy": float(accuracy), "test_interval": float(interval), "best_step": best["step"],
             "best_validation_accuracy": best["accuracy"], "num_test_episodes": config.num_test_episodes,
             "test_episodes": f"{ways}-way {shots}-shot, {queries} queries per class"}
  with open(os.path.join(workdir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  plot_curves(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "curves.png"), config)
  print(f"{config.learner} on {config.dataset} ({config.split}), {results['test_episodes']}: test accuracy "
        f"{100 * accuracy:.2f} +- {100 * interval:.2f}% over {config.num_test_episodes} episodes "
        f"(best validation {100 * best['accuracy']:.2f}% at iteration {best['step']})")
  return results


def plot_curves(metrics_path: str, path: str, config: ml_collections.ConfigDict) -> None:
  records = [json.loads(line) for line in open(metrics_path)]
  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
  left.plot([r["step"] for r in records], [r["loss"] for r in records])
  left.set_xlabel("iteration")
  left.set_ylabel("training query loss")
  valid = [r for r in records if "validation_accuracy" in r]
  right.plot([r["step"] for r in valid], [100 * r["validation_accuracy"] for r in valid], marker="o")
  right.set_xlabel("iteration")
  right.set_ylabel("validation accuracy (%)")
  fig.suptitle(f"{config.learner}, {config.dataset} {config.num_ways}-way {config.num_shots}-shot training")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  common.run_experiment(train_and_evaluate, os.path.join(os.path.dirname(__file__), "configs", "fewshot.py"))
