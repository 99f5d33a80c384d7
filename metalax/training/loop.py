"""The training loop: jitted chunks of steps, orbax checkpoints with exact resume, metric files and progress.

A step is a pure function ``step(state, key, data) -> (state, metrics)``;
:func:`train_loop` runs many of them in one jitted ``lax.fori_loop`` (the
state's buffers donated), saves and validates at every multiple of
``checkpoint_every``, and writes the metrics to ``metrics.jsonl`` and
TensorBoard. Iteration ``i`` gets the key ``fold_in(key, i)``, so a resumed run
trains exactly as an uninterrupted one.
"""

import os
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import tensorboardX
import tqdm

from metalax import parallel
from metalax.training import checkpoints
from metalax.training import records

METRICS_FILE = "metrics.jsonl"
"""The JSONL file of a run's metrics, one record per chunk: ``{"step", <training means>, <on_checkpoint>}``."""


def chunks(start: int, stop: int, size: int, *, every: int = 0) -> list[tuple[int, int]]:
  """``[(begin, length), ...]`` covering ``[start, stop)`` in pieces of at most ``size``.

  With ``every > 0``, no piece crosses a multiple of ``every``: one ends at
  each multiple (e.g. ``size=100, every=250``: pieces end at 100, 200, 250,
  350, 450, 500, ...).
  """
  pieces, begin = [], start
  while begin < stop:
    end = min(begin + size, stop)
    if every:
      end = min(end, (begin // every + 1) * every)
    pieces.append((begin, end - begin))
    begin = end
  return pieces


def _no_nan(tree: Any) -> jax.Array:
  """Whether no floating leaf of ``tree`` holds a NaN (an infinity may be a legitimate state, e.g. a best-so-far)."""
  leaves = [~jnp.any(jnp.isnan(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class MetricWriter:
  """Writes metric records to ``run_dir/metrics.jsonl`` and TensorBoard event files in ``run_dir/tb/``.

  Resuming at step ``start`` first drops the records after ``start`` (from the
  JSONL file; TensorBoard's ``purge_step``), so the records are those of one
  uninterrupted run. On any process but the main one it writes nothing.
  """

  def __init__(self, run_dir: str, start: int = 0):
    self._main = records.is_main_process()
    self._path = os.path.join(run_dir, METRICS_FILE)
    self._writer = None
    if self._main:
      records.truncate_jsonl(self._path, start)
      self._writer = tensorboardX.SummaryWriter(os.path.join(run_dir, "tb"), purge_step=start + 1 if start else None)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    """Records ``metrics`` (numbers) at ``step``: one JSONL line and one TensorBoard scalar each."""
    if not self._main:
      return
    records.append_jsonl(self._path, {"step": step, **metrics})
    for name, value in metrics.items():
      if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        self._writer.add_scalar(name, value, step)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


def _numbers(metrics: dict[str, Any], what: str) -> dict[str, float]:
  values = {}
  for name, value in metrics.items():
    try:
      values[name] = float(value)
    except (TypeError, ValueError):
      raise ValueError(f"{what} must return scalar metrics; {name!r} is {value!r}.") from None
  return values


def train_loop(step: Callable[[Any, jax.Array, Any], tuple[Any, dict[str, jax.Array]]], state: Any, *,
               data: Any, key: jax.Array, num_iterations: int, steps_per_call: int, checkpoint_every: int,
               run_dir: str, desc: str,
               on_checkpoint: Callable[[Any, int], dict[str, float]] | None = None,
               mesh: jax.sharding.Mesh | None = None, on_nan: str = "stop",
               best_metric: str | None = None, best_mode: str = "max") -> Any:
  """Runs ``num_iterations`` training steps, resuming from ``run_dir/checkpoints``.

  Iteration ``i`` gets the key ``fold_in(key, i)``, so a resumed run sees the
  same data as an uninterrupted one. Up to ``steps_per_call`` iterations run in
  one jitted loop that donates the state's buffers (a copy of the state
  passed in, which stays usable); a chunk always ends at a
  multiple of ``checkpoint_every``, where the state is checkpointed and
  ``on_checkpoint`` runs (with ``checkpoint_every=250, steps_per_call=100`` the
  chunks end at 100, 200, 250, 350, ...; one program serves every length).
  Each chunk's mean metrics, with ``on_checkpoint``'s, go to
  ``run_dir/metrics.jsonl``, TensorBoard event files in ``run_dir/tb/`` and the
  progress bar (main process only). A resumed run first drops the records
  written after its checkpoint.

  Args:
    step: ``step(state, key, data) -> (state, metrics)``, pure; ``metrics`` is a
      dict of scalars holding ``"loss"`` (shown in the progress bar). To split
      its batch across ``mesh`` it passes the batch through
      :func:`metalax.parallel.shard_batch`.
    state: the initial training state (a pytree); replaced by the latest
      checkpoint when there is one. It stays usable: the loop donates the
      buffers of its own copy.
    data: arrays the step reads (a ``jit`` argument, never baked into the
      program), or None.
    key: the data key.
    num_iterations: the total number of iterations.
    steps_per_call: at most this many iterations per jitted call.
    checkpoint_every: save (and call ``on_checkpoint``) at every multiple of
      this and at ``num_iterations``.
    run_dir: where ``metrics.jsonl``, ``tb/`` and ``checkpoints/`` go.
    desc: the progress bar's label.
    on_checkpoint: ``on_checkpoint(state, iteration) -> metrics`` called before
      each save (e.g. validation); its scalars are recorded with that chunk's
      training metrics, and saved with the checkpoint. It gets this process's
      own copy of the state.
    mesh: a device mesh (:func:`~metalax.training.make_mesh`): ``state`` and
      ``data`` are replicated on its devices; None for one device.
    on_nan: what a non-finite loss or a NaN in the state does: ``"stop"``
      raises ``FloatingPointError`` naming the first such iteration, keeping
      the last checkpoint (no saved state holds a NaN); ``"skip"`` discards that
      iteration's update (the state stays as before it) and counts it in the
      ``skipped`` metric.
    best_metric: a metric (of ``on_checkpoint`` or of training) that ranks the
      checkpoints: orbax keeps the best step besides the latest ones, and
      :func:`~metalax.training.restore_best` restores it. None keeps only the latest.
    best_mode: ``"max"`` or ``"min"``: which ``best_metric`` value is best.

  Returns:
    The final state (replicated on ``mesh`` when there is one).

  Raises:
    FloatingPointError: with ``on_nan="stop"``, if a loss or the state is not
      finite; with ``"skip"``, if every iteration of one call was skipped.
    ValueError: for a count that is not a positive int, an unknown ``on_nan``
      or ``best_mode``, a checkpoint of another model (one line), or metrics
      that lack ``best_metric``.
  """
  if on_nan not in ("stop", "skip"):
    raise ValueError(f"on_nan must be stop or skip, got {on_nan!r}.")
  for name, value in (("num_iterations", num_iterations), ("steps_per_call", steps_per_call),
                      ("checkpoint_every", checkpoint_every)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be an int >= 1, got {value!r}.")
  manager = checkpoints.checkpoint_manager(os.path.join(run_dir, "checkpoints"), best_metric=best_metric,
                                           best_mode=best_mode)
  state, data = parallel.replicate(state, mesh), parallel.replicate(data, mesh)
  state, start = checkpoints.restore_or_init(manager, state, what=desc.strip() or "resume")
  if not start:  # the jitted chunk donates the state's buffers: never the caller's own arrays
    state = jax.tree.map(lambda x: jax.device_put(x, x.sharding, may_alias=False)  # global arrays too
                         if isinstance(x, jax.Array) else x, state)
  main_process = records.is_main_process()
  label = desc.strip() or "training"

  def run_chunk(state, data, begin, length):
    metric_shapes = jax.eval_shape(step, state, key, data)[1]
    if not isinstance(metric_shapes, dict) or "loss" not in metric_shapes:
      raise ValueError(f"step must return (state, metrics) with metrics a dict holding 'loss', got {metric_shapes}.")

    def body(i, carry):
      state, sums, count, first_bad = carry
      iteration = begin + i
      new_state, metrics = step(state, jax.random.fold_in(key, iteration), data)
      finite = jnp.all(jnp.isfinite(metrics["loss"])) & _no_nan(new_state)
      if on_nan == "skip":
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
      sums = jax.tree.map(lambda s, m: s + jnp.where(finite, jnp.mean(m).astype(jnp.float32), 0.0), sums, metrics)
      first_bad = jnp.where(finite | (first_bad >= 0), first_bad, iteration)
      return new_state, sums, count + finite.astype(jnp.int32), first_bad

    sums = jax.tree.map(lambda _: jnp.zeros((), jnp.float32), metric_shapes)
    state, sums, count, first_bad = jax.lax.fori_loop(
        0, length, body, (state, sums, jnp.zeros((), jnp.int32), jnp.full((), -1, jnp.int32)))
    means = jax.tree.map(lambda s: s / jnp.maximum(count, 1), sums)
    return parallel.replicate(state, mesh), means, length - count, first_bad

  run_chunk = jax.jit(run_chunk, donate_argnums=0)
  writer = MetricWriter(run_dir, start)
  bar = tqdm.tqdm(total=num_iterations, initial=start, desc=desc, unit="it", dynamic_ncols=True,
                  disable=not main_process)
  try:
    for begin, length in chunks(start, num_iterations, steps_per_call, every=checkpoint_every):
      state, metrics, num_bad, first_bad = run_chunk(state, data, jnp.int32(begin), jnp.int32(length))
      end = begin + length
      metrics = {k: float(v) for k, v in metrics.items()}
      num_bad, first_bad = int(num_bad), int(first_bad)
      if num_bad and (on_nan == "stop" or num_bad == length):
        manager.wait_until_finished()  # the last good checkpoint may still be being written
        what = "the loss or the parameters became" if on_nan == "stop" else "every iteration was"
        good = manager.latest_step()
        kept = f"the last good checkpoint (iteration {good}) is kept in" if good else "no checkpoint was written to"
        raise FloatingPointError(
            f"{label}: {what} not finite (NaN or Inf) at iteration {first_bad} "
            f"(of {begin}-{end - 1}){' and skipped' if on_nan == 'skip' else ''}; training stopped and {kept} "
            f"{manager.directory}. Lower the learning rate, or set --config.on_nan=skip to skip such iterations.")
      if num_bad:
        logging.warning("%s: skipped %d iteration(s) with a non-finite loss in %d-%d (first %d).", label,
                        num_bad, begin, end - 1, first_bad)
      bar.update(length)
      bar.set_postfix(loss=f"{metrics['loss']:.4f}")
      if on_nan == "skip":
        metrics["skipped"] = num_bad
      if end % checkpoint_every == 0 or end == num_iterations:
        if on_checkpoint is not None:
          metrics.update(_numbers(on_checkpoint(parallel.local_copy(state), end) or {}, "on_checkpoint"))
        if best_metric is not None and best_metric not in metrics:
          raise ValueError(f"best_metric={best_metric!r} is not among the metrics at iteration {end}: "
                           f"{', '.join(sorted(metrics))}.")
        manager.save(end, args=ocp.args.StandardSave(state),
                     metrics=dict(metrics) if best_metric is not None else None, force=True)
      writer.write(end, metrics)
  finally:
    manager.wait_until_finished()  # a save begun before an error or Ctrl-C is finished, not left half-written
    bar.close()
    writer.close()
  return state
