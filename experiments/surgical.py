r"""Surgical fine-tuning (Lee et al. 2023) on MNIST: which block to tune depends on the kind of shift.

1. Pretrains a Conv-4 classifier on the MNIST training set (labels optionally
   corrected by a reviewed CSV, ``--config.corrections``) and writes the
   hard-example review of its training set (``review.png``, ``review.csv``:
   the ``review_k`` highest-loss training images, ready for relabelling).
2. For each shift (``inverted``: ``1 - x``, an input-level shift; ``noisy``:
   Gaussian pixel noise, input-level; ``permuted``: a fixed permutation of the
   ten labels, an output-level shift) draws ``target_shots`` labelled shifted
   training images per class, fine-tunes the pretrained network on them with
   only one selection of parameters trainable (``none``, ``all``, ``block1``
   .. ``block4``, ``head``: :data:`metalax.transfer.CONV4_BLOCKS`, through
   ``metalax.transfer.finetune_optimizer``), and tests it on the whole
   shifted test set; ``num_seeds`` draws of the target examples. Each
   selection's learning rate is chosen from ``finetune_lrs`` by accuracy on
   ``validation_shots`` other shifted training images per class.

Writes ``results.json`` (the table: accuracy mean and std over seeds per shift
and selection), ``surgical.md`` (the same as a markdown table),
``surgical.png``, the pretraining checkpoints and metrics, and the review.

Usage:
  python -m experiments.surgical --workdir=/tmp/surgical \
      --config=experiments/configs/surgical.py
"""

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

import metalax
from experiments import reporting
from metalax import losses
from metalax import models
from metalax import training
from metalax import transfer

SHIFTS = ("inverted", "noisy", "permuted")
SELECTIONS = ("none", "all") + tuple(transfer.CONV4_BLOCKS)
EVAL_BATCH = 2000


def shift_data(shift: str, images: np.ndarray, labels: np.ndarray, key: jax.Array, noise_level: float
               ) -> tuple[np.ndarray, np.ndarray]:
  """Applies a shift to float images ``[n, 28, 28, 1]`` in [0, 1] and int labels ``[n]``."""
  if shift == "inverted":
    return 1.0 - images, labels
  if shift == "noisy":
    noise = np.asarray(jax.random.normal(key, images.shape))
    return np.clip(images + noise_level * noise, 0.0, 1.0).astype(np.float32), labels
  if shift == "permuted":
    permutation = np.roll(np.arange(10), 3)   # a fixed derangement: label y becomes (y - 3) mod 10
    return images, permutation[labels]
  raise ValueError(f"unknown shift {shift!r}; expected one of {SHIFTS}.")


def check_config(config: ml_collections.ConfigDict) -> None:
  settings = training.run_settings(config)
  if settings["precision"] != "float32":
    raise ValueError(f"--config.precision={settings['precision']}: the surgical experiment trains in float32 only.")
  for shift in config.shifts:
    if shift not in SHIFTS:
      raise ValueError(f"--config.shifts: unknown shift {shift!r}; expected some of {SHIFTS}.")
  for selection in config.selections:
    if selection not in SELECTIONS:
      raise ValueError(f"--config.selections: unknown selection {selection!r}; expected some of {SELECTIONS}.")
  training.check_positive_int(config, "num_iterations", "batch_size", "steps_per_call", "checkpoint_every",
                              "finetune_steps", "num_seeds", "target_shots", "validation_shots", "hidden", "review_k")
  training.check_nonnegative_int(config, "num_train_examples", "num_test_examples")
  training.check_positive_float(config, "lr")
  if not config.finetune_lrs or min(config.finetune_lrs) <= 0:
    raise ValueError(f"--config.finetune_lrs must be a non-empty tuple of positive rates, got {config.finetune_lrs!r}.")


def accuracy_on(apply_fn, params, images: np.ndarray, labels: np.ndarray) -> float:
  """Accuracy over ``images`` in batches of :data:`EVAL_BATCH` (batch statistics per batch)."""
  run = _predict(apply_fn)
  correct = 0
  for begin in range(0, images.shape[0], EVAL_BATCH):
    predictions = run(params, jnp.asarray(images[begin:begin + EVAL_BATCH]))
    correct += int(np.sum(np.asarray(predictions) == labels[begin:begin + EVAL_BATCH]))
  return correct / images.shape[0]


_PREDICT_CACHE: dict[Any, Any] = {}


def _predict(apply_fn):
  if apply_fn not in _PREDICT_CACHE:
    _PREDICT_CACHE[apply_fn] = jax.jit(lambda p, x: jnp.argmax(apply_fn(p, x), -1))
  return _PREDICT_CACHE[apply_fn]


def per_example_losses(apply_fn, params, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  run = jax.jit(lambda p, x, y: (losses.cross_entropy(apply_fn(p, x), y), jnp.argmax(apply_fn(p, x), -1)))
  values, predictions = [], []
  for begin in range(0, images.shape[0], EVAL_BATCH):
    v, p = run(params, jnp.asarray(metalax.data.to_float32(images[begin:begin + EVAL_BATCH])),
               jnp.asarray(labels[begin:begin + EVAL_BATCH]))
    values.append(np.asarray(v))
    predictions.append(np.asarray(p))
  return np.concatenate(values), np.concatenate(predictions)


def make_finetune(apply_fn, params, selection: str, config: ml_collections.ConfigDict):
  """``finetune(params, inputs, labels, lr) -> params``: ``finetune_steps`` full-batch Adam steps on the selection.

  The optimizer is ``optax.adam(1)`` restricted by
  :func:`metalax.transfer.finetune_optimizer`, its updates scaled by ``lr``
  (exactly ``optax.adam(lr)``, with ``lr`` a traced argument so that one
  compiled program serves every learning rate).
  """
  trainable = None if selection == "none" else ("all" if selection == "all" else transfer.CONV4_BLOCKS[selection])
  tx = transfer.finetune_optimizer(optax.adam(1.0), params, trainable)
  objective = lambda p, x, y: jnp.mean(losses.cross_entropy(apply_fn(p, x), y))

  @jax.jit
  def finetune(params, inputs, labels, lr):
    def step(state, _):
      params, opt_state = state
      updates, opt_state = tx.update(jax.grad(objective)(params, inputs, labels), opt_state, params)
      return (optax.apply_updates(params, jax.tree.map(lambda u: lr * u, updates)), opt_state), None
    return jax.lax.scan(step, (params, tx.init(params)), None, length=config.finetune_steps)[0][0]

  return finetune


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Pretrains on MNIST, reviews its hardest training examples, then fine-tunes per shift and selection."""
  check_config(config)
  workdir = training.prepare_workdir(workdir)
  training.check_resume(workdir, config)
  training.write_run_info(workdir, config)
  data_dir = config.data_dir or None  # None: metalax.data.resolve_data_dir's convention
  train_images, train_labels = metalax.data.load_mnist(data_dir, "train", download=config.download)
  test_images, test_labels = metalax.data.load_mnist(data_dir, "test", download=config.download)
  if config.num_train_examples:
    train_images, train_labels = train_images[:config.num_train_examples], train_labels[:config.num_train_examples]
  if config.num_test_examples:
    test_images, test_labels = test_images[:config.num_test_examples], test_labels[:config.num_test_examples]
  corrections = transfer.read_corrections(config.corrections) if config.corrections else {}
  train_labels = transfer.apply_corrections(train_labels, corrections, num_classes=10)
  init_key, train_key, target_key = jax.random.split(jax.random.key(config.seed), 3)
  model = models.Conv4(num_outputs=10, hidden=config.hidden, variant=config.conv4_variant, norm=config.norm)
  apply_fn = models.from_linen(model)
  params = jax.jit(model.init)(init_key, jnp.zeros((2, 28, 28, 1)))["params"]
  optimizer = optax.adam(config.lr)

  mesh = training.make_mesh(config, config.batch_size)

  def step(state, key, data):
    images, labels = data
    index = jax.random.randint(key, (config.batch_size,), 0, images.shape[0])
    inputs, targets = metalax.parallel.shard_batch((metalax.data.to_float32(images[index]), labels[index]), mesh)
    value, grads = jax.value_and_grad(lambda p: jnp.mean(losses.cross_entropy(apply_fn(p, inputs),
                                                                              targets)))(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, {"loss": value}

  begin = time.perf_counter()
  state = training.train_loop(step, {"params": params, "opt_state": optimizer.init(params)},
                              data=(jax.device_put(train_images), jax.device_put(train_labels)), key=train_key,
                              num_iterations=config.num_iterations, steps_per_call=config.steps_per_call,
                              checkpoint_every=config.checkpoint_every, run_dir=workdir, desc="pretrain", mesh=mesh,
                              on_nan=config.on_nan)
  pretrain_seconds = time.perf_counter() - begin
  params = metalax.parallel.local_copy(state["params"])
  train_losses, train_predictions = per_example_losses(apply_fn, params, train_images, train_labels)
  transfer.write_review(workdir, train_images, train_labels, train_losses, config.review_k,
                        predictions=train_predictions)
  rank = np.argsort(np.argsort(-train_losses))
  corrected = {int(i): {"label": int(train_labels[i]), "loss": float(train_losses[i]), "rank": int(rank[i])}
               for i in corrections}
  test_float = metalax.data.to_float32(test_images)
  clean_accuracy = accuracy_on(apply_fn, params, test_float, test_labels)

  begin = time.perf_counter()
  finetunes = {selection: make_finetune(apply_fn, params, selection, config) for selection in config.selections}
  by_class = [np.flatnonzero(train_labels == c) for c in range(10)]
  table: dict[str, dict[str, dict[str, Any]]] = {}
  for shift_index, shift in enumerate(config.shifts):
    shift_key = jax.random.fold_in(target_key, shift_index)
    shifted_test, shifted_test_labels = shift_data(shift, test_float, test_labels, jax.random.fold_in(shift_key, 0),
                                                   config.noise_level)
    accuracies = {selection: [] for selection in config.selections}
    chosen_lrs = {selection: [] for selection in config.selections}
    for seed in range(config.num_seeds):
      seed_key = jax.random.fold_in(shift_key, seed + 1)
      rng = np.random.default_rng([config.seed, shift_index, seed])
      picks = [rng.choice(indices, config.target_shots + config.validation_shots, replace=False)
               for indices in by_class]
      target = np.concatenate([p[:config.target_shots] for p in picks])
      validation = np.concatenate([p[config.target_shots:] for p in picks])
      inputs, labels = shift_data(shift, metalax.data.to_float32(train_images[target]), train_labels[target],
                                  seed_key, config.noise_level)
      valid_inputs, valid_labels = shift_data(shift, metalax.data.to_float32(train_images[validation]),
                                              train_labels[validation], jax.random.fold_in(seed_key, 1),
                                              config.noise_level)
      for selection in config.selections:
        if selection == "none":
          tuned, lr = params, 0.0
        else:
          # The learning rate with the best accuracy on held-out shifted training images (never the test set).
          candidates = [(finetunes[selection](params, jnp.asarray(inputs), jnp.asarray(labels), lr), lr)
                        for lr in config.finetune_lrs]
          scores = [accuracy_on(apply_fn, p, valid_inputs, valid_labels) for p, _ in candidates]
          tuned, lr = candidates[int(np.argmax(scores))]
        accuracies[selection].append(accuracy_on(apply_fn, tuned, shifted_test, shifted_test_labels))
        chosen_lrs[selection].append(lr)
    table[shift] = {s: {"mean": float(np.mean(a)), "std": float(np.std(a)), "runs": a, "lrs": chosen_lrs[s]}
                    for s, a in accuracies.items()}
    print(f"{shift}: " + ", ".join(f"{s} {100 * v['mean']:.1f}" for s, v in table[shift].items()))
  results = {"clean_test_accuracy": clean_accuracy, "table": table, "pretrain_seconds": round(pretrain_seconds, 1),
             "finetune_seconds": round(time.perf_counter() - begin, 1),
             "target_examples": f"{config.target_shots} per class (x10)", "finetune_steps": config.finetune_steps,
             "corrected_examples": corrected}
  training.write_json(os.path.join(workdir, "results.json"), results)
  reporting.write_surgical_table(table, config, clean_accuracy, os.path.join(workdir, "surgical.md"))
  reporting.plot_surgical(table, os.path.join(workdir, "surgical.png"), config.target_shots)
  print(f"clean test accuracy after pretraining {100 * clean_accuracy:.2f}%")
  return results


if __name__ == "__main__":
  training.run(train_and_evaluate, os.path.join(os.path.dirname(__file__), "configs", "surgical.py"))
