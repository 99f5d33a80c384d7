"""Pieces every experiment entrypoint uses: workdir checks, run records, checkpoints, statistics.

Checkpoints are orbax's; progress bars are tqdm's; flags and configs are absl's
and ml_collections'. This module only wires them together the same way for
every experiment.
"""

import functools
import json
import math
import os
import platform
import sys
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorboardX
import tqdm

PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "ml-collections", "numpy")


def prepare_workdir(workdir: str) -> str:
  """Creates ``workdir`` and checks it is writable, so a bad path fails at start-up.

  Raises:
    ValueError: if ``workdir`` is empty, or exists and is not a writable directory.
  """
  if not workdir:
    raise ValueError("--workdir must name a directory for metrics, checkpoints and plots.")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"--workdir {workdir!r} is not a writable directory: {e}.") from None
  return workdir


def write_run_info(workdir: str, config: Any) -> None:
  """Writes the config, the command line and the package versions into ``workdir/run.json``."""
  from importlib import metadata
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  info = {
      "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
      "argv": sys.argv,
      "python": platform.python_version(),
      "machine": f"{platform.machine()} {platform.processor()} {os.cpu_count()} cpus",
      "devices": [str(d) for d in jax.devices()],
      "versions": versions,
      "time": time.strftime("%Y-%m-%d %H:%M:%S"),
  }
  with open(os.path.join(workdir, "run.json"), "w") as f:
    json.dump(info, f, indent=2, default=str)


def append_jsonl(path: str, record: dict[str, Any]) -> None:
  """Appends one JSON record (numbers converted to floats) as a line of ``path``."""
  record = {k: (float(v) if hasattr(v, "__float__") else v) for k, v in record.items()}
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def run_experiment(train_and_evaluate: Callable[[Any, str], Any], default_config: str) -> None:
  """The absl entrypoint shared by every experiment: ``--config`` (ml_collections) and ``--workdir``.

  Flags are defined here, when a module runs as ``__main__``, so importing
  several experiments in one process (as the tests do) defines no flag twice.
  A ``ValueError`` or ``FileNotFoundError`` (bad config, missing data) ends the
  run with its message, not a traceback.
  """
  from absl import app
  from absl import flags
  from ml_collections import config_flags

  config_flag = config_flags.DEFINE_config_file(
      "config", default_config, "Experiment configuration (a config file, optionally FILE:PRESET); override "
      "fields with --config.FIELD=VALUE.")
  workdir_flag = flags.DEFINE_string("workdir", None, "Directory for results, checkpoints and plots.")

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not workdir_flag.value:
      raise app.UsageError("--workdir is required (where results, checkpoints and plots go).")
    quiet_orbax_logs()
    try:
      train_and_evaluate(config_flag.value, workdir_flag.value)
    except (ValueError, FileNotFoundError) as e:
      raise app.UsageError(str(e)) from None

  app.run(main)


def quiet_orbax_logs() -> None:
  """Keeps orbax's per-save INFO lines out of the console; warnings and errors still show."""
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.converter.STANDARD_WARNING or "orbax" not in record.pathname)


def checkpoint_manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """An orbax manager writing ``directory/<step>/`` atomically (half-written steps are never listed)."""
  return ocp.CheckpointManager(
      os.path.abspath(directory), options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


def restore_or_init(manager: ocp.CheckpointManager, init_state: Any) -> tuple[Any, int]:
  """The latest checkpoint (shaped like ``init_state``) and its step, or ``(init_state, 0)``.

  Raises:
    ValueError: if the checkpoint does not match ``init_state`` (e.g. another model).
  """
  step = manager.latest_step()
  if step is None:
    return init_state, 0
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, init_state)
  try:
    state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(
        f"the checkpoint at {manager.directory}/{step} does not match this configuration (a different "
        f"model or learner?); use another --workdir or remove it. Orbax said: {e}") from None
  logging.info("Resumed from %s at step %d.", manager.directory, step)
  return state, step


def train_loop(step: Callable[[Any, jax.Array, Any], tuple[Any, dict[str, jax.Array]]], state: Any, *,
               data: Any, key: jax.Array, num_iterations: int, steps_per_call: int, checkpoint_every: int,
               run_dir: str, desc: str,
               on_checkpoint: Callable[[Any, int], dict[str, float]] | None = None) -> Any:
  """Runs ``num_iterations`` training steps, resuming from ``run_dir/checkpoints``.

  Iteration ``i`` gets the key ``fold_in(key, i)``, so a resumed run sees the
  same data as an uninterrupted one. ``steps_per_call`` iterations run in one
  jitted ``lax.scan``; their mean metrics go to ``run_dir/metrics.jsonl``,
  TensorBoard event files in ``run_dir/tb/`` and the progress bar.

  Args:
    step: ``step(state, key, data) -> (state, metrics)``, pure; ``metrics`` must
      hold ``"loss"`` (shown in the progress bar) and may hold anything else.
    state: the initial training state (a pytree); replaced by the latest
      checkpoint when there is one.
    data: arrays the step reads (passed to ``jit`` as an argument, never baked
      into the program), or None.
    key: the data key.
    num_iterations: the total number of iterations.
    steps_per_call: iterations per jitted call.
    checkpoint_every: save (and call ``on_checkpoint``) every this many iterations and at the end.
    run_dir: where ``metrics.jsonl`` and ``checkpoints/`` go.
    desc: the progress bar's label.
    on_checkpoint: ``on_checkpoint(state, iteration) -> metrics`` called before
      each save (e.g. validation); its metrics are logged too.

  Returns:
    The final state.

  Raises:
    FloatingPointError: if a loss is not finite; checkpoints stay as they were.
  """
  manager = checkpoint_manager(os.path.join(run_dir, "checkpoints"))
  state, start = restore_or_init(manager, state)

  @functools.partial(jax.jit, static_argnums=3)
  def run_chunk(state, data, begin, length):
    def body(state, iteration):
      return step(state, jax.random.fold_in(key, iteration), data)

    state, metrics = jax.lax.scan(body, state, begin + jnp.arange(length))
    return state, jax.tree.map(jnp.mean, metrics)

  metrics_path = os.path.join(run_dir, "metrics.jsonl")
  writer = tensorboardX.SummaryWriter(os.path.join(run_dir, "tb"))
  with writer, tqdm.tqdm(total=num_iterations, initial=start, desc=desc, unit="it", dynamic_ncols=True) as bar:
    for begin, length in chunks(start, num_iterations, steps_per_call):
      state, metrics = run_chunk(state, data, begin, length)
      end = begin + length
      metrics = {k: float(v) for k, v in metrics.items()}
      if not all(math.isfinite(v) for v in metrics.values()):
        raise FloatingPointError(
            f"{desc.strip()}: a training metric is not finite in iterations {begin}-{end} ({metrics}); "
            f"the last finite checkpoint is kept in {manager.directory}.")
      bar.update(length)
      bar.set_postfix(loss=f"{metrics['loss']:.4f}")
      record = {"step": end, **metrics}
      if end % checkpoint_every == 0 or end == num_iterations:
        if on_checkpoint is not None:
          record.update(on_checkpoint(state, end))
        manager.save(end, args=ocp.args.StandardSave(state))
      append_jsonl(metrics_path, record)
      for name, value in record.items():
        if name != "step":
          writer.add_scalar(name, value, end)
  manager.wait_until_finished()
  return state


def mean_and_interval(values: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
  """Mean and the half-width of its 95% normal confidence interval, ``1.96 * std / sqrt(n)``."""
  values = np.asarray(values, np.float64)
  n = values.shape[axis]
  return values.mean(axis), 1.96 * values.std(axis, ddof=1) / math.sqrt(n)


def chunks(start: int, stop: int, size: int) -> list[tuple[int, int]]:
  """``[(begin, length), ...]`` covering ``[start, stop)`` in pieces of at most ``size``."""
  return [(b, min(size, stop - b)) for b in range(start, stop, size)]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  """``(fn(), seconds)`` with the result's arrays ready."""
  begin = time.perf_counter()
  result = jax.block_until_ready(fn())
  return result, time.perf_counter() - begin
