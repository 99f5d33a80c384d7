r"""N-way K-shot image classification with any model, learner, loss, dataset and augmentation.

Meta-trains on episodes sampled on device, validates at every checkpoint, keeps the checkpoint with the
best validation accuracy and tests it. Writes into ``--workdir``: ``results.json`` (test accuracy, mean
and 95% interval), ``curves.png``, ``metrics.jsonl`` and ``tb/`` (training and validation metrics),
``run.json`` and orbax checkpoints (a rerun resumes).

Usage:
  python -m experiments.fewshot --workdir=/tmp/protonet_5w1s \
      --config=experiments/configs/fewshot.py:protonet_5w1s
  python -m experiments.fewshot --workdir=/tmp/maml_resnet --config.model=resnet12 \
      --config.dataset=folder:/data/my_classes --config.augment='("random_flip",)'
  python -m experiments.fewshot --help          # every field, its default and what it does
"""

import json
import os
from typing import Any

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

SCHEDULES = ("constant", "step", "cosine")
EPISODES = ("fixed", "variable")


def episode_counts(config: ml_collections.ConfigDict, split: str) -> tuple[int, int, int]:
  """``(num_ways, num_shots, num_queries)`` of training (``split="train"``) or evaluation episodes."""
  if split == "train":
    return config.num_ways, config.num_shots, config.num_queries
  return (config.test_num_ways or config.num_ways, config.test_num_shots or config.num_shots,
          config.test_num_queries or config.num_queries)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError for any field that cannot run, before data is read or anything compiled."""
  training.run_settings(config)
  training.check_positive_int(config, "num_ways", "num_shots", "num_queries", "meta_batch_size", "num_iterations",
                              "steps_per_call", "checkpoint_every", "num_valid_episodes", "num_test_episodes",
                              "eval_batch_size", "hidden", "lr_decay_every", "imaml_cg_steps", "min_ways",
                              "min_shots")
  training.check_nonnegative_int(config, "test_num_ways", "test_num_shots", "test_num_queries", "num_steps",
                                 "test_num_steps", "tasks_per_chunk", "image_size", "num_validation")
  training.check_positive_float(config, "lr", "inner_lr", "imaml_reg")
  training.check_choice(config, "lr_schedule", SCHEDULES)
  training.check_choice(config, "episodes", EPISODES)
  if config.num_ways < 2 or episode_counts(config, "test")[0] < 2:
    raise ValueError(f"--config.num_ways and test_num_ways must be >= 2, got {config.num_ways} and "
                     f"{config.test_num_ways}.")
  if config.tasks_per_chunk and config.meta_batch_size % config.tasks_per_chunk:
    raise ValueError(f"--config.tasks_per_chunk={config.tasks_per_chunk} must divide meta_batch_size="
                     f"{config.meta_batch_size} (0: the whole batch at once).")
  embedding = config.learner in components.EMBEDDING_LEARNERS
  if not embedding and episode_counts(config, "test")[0] != config.num_ways:
    raise ValueError(f"{config.learner} has a {config.num_ways}-way output layer: test_num_ways must equal "
                     f"num_ways, got {config.test_num_ways}.")
  if config.episodes == "variable":
    if not embedding:
      raise ValueError(f"--config.episodes=variable needs a learner without a fixed output layer "
                       f"({', '.join(components.EMBEDDING_LEARNERS)}), got {config.learner!r}.")
    if config.min_ways > config.num_ways or config.min_shots > config.num_shots:
      raise ValueError(f"variable episodes draw min_ways..num_ways ways and min_shots..num_shots shots: got "
                       f"{config.min_ways}..{config.num_ways} and {config.min_shots}..{config.num_shots}.")
  if config.init_encoder and config.learner not in components.EMBEDDING_LEARNERS[:-1]:
    raise ValueError(f"--config.init_encoder needs a learner whose meta-parameters are the encoder "
                     f"({', '.join(components.EMBEDDING_LEARNERS[:-1])}), got {config.learner!r}.")
  components.make_model(config, None)
  components.make_loss(config)
  components.inner_optimizer(config)
  components.augmentation(config)
  training.lookup(components.LEARNERS, config.learner, "--config.learner")


def learning_rate(config: ml_collections.ConfigDict) -> optax.Schedule:
  if config.lr_schedule == "step":
    return optax.exponential_decay(config.lr, config.lr_decay_every, 0.5, staircase=True)
  if config.lr_schedule == "cosine":
    return optax.cosine_decay_schedule(config.lr, config.num_iterations)
  return optax.constant_schedule(config.lr)


def build(config: ml_collections.ConfigDict, image_shape: tuple[int, ...]):
  """``(model, learner(num_ways, num_steps))``: the configured network and learners on it."""
  embedding = config.learner in components.EMBEDDING_LEARNERS
  model = components.make_model(config, None if embedding else config.num_ways)
  apply_fn = metalax.models.from_linen(model)
  dim = components.embedding_dim(model, image_shape) if embedding else None

  def learner(num_ways: int, num_steps: int) -> meta.MetaLearner:
    return components.make_learner(config, apply_fn, num_ways=num_ways, num_steps=num_steps, embedding_dim=dim)

  return model, learner


def make_train_step(config: ml_collections.ConfigDict, make, counts: tuple[int, int, int], optimizer, mesh):
  """``step(state, key, images) -> (state, metrics)``: episodes sampled on device, then the library's meta-step.

  Fixed episodes have ``counts``. Variable episodes (``--config.episodes=variable``) draw ways uniform in
  ``[min_ways, num_ways]`` and shots uniform in ``[min_shots, num_shots]`` per meta-batch, on device:
  ``lax.switch`` selects one of the compiled shapes (every shape is one branch of the one jitted step).
  """
  augment = components.augmentation(config)
  if config.episodes == "variable":
    shapes = metalax.episodes.episode_shapes(config.min_ways, counts[0], config.min_shots, counts[1], counts[2])
  else:
    shapes = (metalax.episodes.EpisodeShape(*counts),)

  def branch(shape):
    # Precision, the library's meta-step, the batch split over devices (jitted with buffer donation by the
    # training loop).
    meta_step = meta.train_step(parallel.with_precision(make(shape.num_ways, config.num_steps), config.precision),
                                optimizer, tasks_per_chunk=config.tasks_per_chunk or None)

    def step(state, key, train_images):
      episodes = metalax.sample_episodes(key, train_images, config.meta_batch_size, *shape, augment=augment)
      meta_params, opt_state, metrics = meta_step(state["meta_params"], state["opt_state"],
                                                  parallel.shard_batch(episodes, mesh))
      return {"meta_params": meta_params, "opt_state": opt_state}, metrics

    return step

  branches = [branch(shape) for shape in shapes]
  if len(branches) == 1:
    return branches[0]

  def variable_step(state, key, train_images):
    index = jax.random.randint(jax.random.fold_in(key, 1), (), 0, len(branches))
    return jax.lax.switch(index, branches, state, key, train_images)

  return variable_step


def make_evaluator(learner: meta.MetaLearner, counts: tuple[int, int, int], batch_size: int):
  """``evaluate(meta_params, images, key, num_episodes) -> accuracies [num_episodes]``, one jitted batch at a time."""
  evaluate = meta.evaluate(learner)

  @jax.jit
  def one_batch(meta_params, images, key):
    return evaluate(meta_params, metalax.sample_episodes(key, images, batch_size, *counts))["accuracy"]

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
  workdir = training.prepare_workdir(workdir)
  training.check_resume(workdir, config)
  training.write_run_info(workdir, config)
  splits = components.load_dataset(config)
  train_counts, test_counts = episode_counts(config, "train"), episode_counts(config, "test")
  components.check_fits(splits, {"train": train_counts, "validation": test_counts, "test": test_counts})
  images = {name: jax.device_put(data.images) for name, data in splits.items()}
  image_shape = splits["train"].image_shape
  key_init, key_train, key_valid, key_test = jax.random.split(jax.random.key(config.seed), 4)

  model, make = build(config, image_shape)
  learner, test_learner = make(train_counts[0], config.num_steps), make(test_counts[0], config.test_num_steps)
  params = components.init_params(model, key_init, image_shape)
  if config.init_encoder:
    params = load_init_encoder(config, params)
  meta_params = learner.init(params)

  optimizer = optax.adam(learning_rate(config))
  mesh = training.make_mesh(config, config.meta_batch_size)
  step = make_train_step(config, make, train_counts, optimizer, mesh)

  evaluate = make_evaluator(test_learner, test_counts, config.eval_batch_size)

  def validate(state, iteration):
    del iteration
    accuracies = evaluate(state["meta_params"], images["validation"], key_valid, config.num_valid_episodes)
    return {"validation_accuracy": float(np.mean(accuracies))}

  state = {"meta_params": meta_params, "opt_state": optimizer.init(meta_params)}
  state = training.train_loop(
      step, state, data=images["train"], key=key_train, num_iterations=config.num_iterations,
      steps_per_call=config.steps_per_call, checkpoint_every=config.checkpoint_every, run_dir=workdir,
      desc=config.learner, on_checkpoint=validate, mesh=mesh, on_nan=config.on_nan,
      best_metric="validation_accuracy", best_mode="max")

  best, best_step, best_metrics = training.restore_best(workdir, training.abstract(state))
  accuracy, interval = training.mean_and_interval(
      evaluate(best["meta_params"], images["test"], key_test, config.num_test_episodes))
  ways, shots, queries = test_counts
  results = {"test_accuracy": float(accuracy), "test_interval": float(interval), "best_step": int(best_step),
             "best_validation_accuracy": float(best_metrics["validation_accuracy"]),
             "num_test_episodes": config.num_test_episodes,
             "test_episodes": f"{ways}-way {shots}-shot, {queries} queries per class"}
  training.write_json(os.path.join(workdir, "results.json"), results)
  reporting.plot_fewshot_curves(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "curves.png"),
                                f"{config.learner}, {config.dataset} {config.num_ways}-way {config.num_shots}-shot")
  print(f"{config.learner} on {config.dataset}, {results['test_episodes']}: test accuracy "
        f"{100 * accuracy:.2f} +- {100 * interval:.2f}% over {config.num_test_episodes} episodes "
        f"(best validation {100 * results['best_validation_accuracy']:.2f}% at iteration {best_step})")
  return results


def load_init_encoder(config: ml_collections.ConfigDict, params: Any) -> Any:
  """The encoder saved by ``experiments.representation`` in ``config.init_encoder``, shaped like ``params``.

  Raises:
    FileNotFoundError: if ``init_encoder`` holds no encoder checkpoint.
    ValueError: if the checkpoint's encoder (its run's model fields, or its array names and shapes) is not
      the configured model.
  """
  fields = ("model", "hidden", "conv4_variant", "norm")
  run_path = os.path.join(config.init_encoder, "run.json")
  stored = json.load(open(run_path)).get("config", {}) if os.path.exists(run_path) else {}
  what = f"--config.init_encoder={config.init_encoder} (expected the workdir of an experiments.representation run)"
  abstract = {"params": training.abstract(params)}
  try:
    restored, mismatch = training.restore_latest(os.path.join(config.init_encoder, "encoder"), abstract, what), None
  except training.CheckpointMismatch as error:
    restored, mismatch = None, error.mismatch
  if mismatch or any(f in stored and stored[f] != config[f] for f in fields):
    found = ", ".join(f"{f}={stored.get(f, '?')}" for f in fields)
    wanted = ", ".join(f"{f}={config[f]}" for f in fields)
    raise ValueError(f"--config.init_encoder={config.init_encoder}: its encoder ({found}) is not the configured "
                     f"model ({wanted}){': ' + mismatch if mismatch else ''}.")
  return restored["params"]


if __name__ == "__main__":
  training.run(train_and_evaluate, os.path.join(os.path.dirname(__file__), "configs", "fewshot.py"))
