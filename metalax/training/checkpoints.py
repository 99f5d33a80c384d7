"""Orbax checkpoints: a manager keeping the latest and the best steps, checked restores, damaged steps set aside.

Orbax writes each step into a temporary directory and renames it when every
array is written (a ``commit_success.txt`` marker on object stores), so a kill
never leaves a half-written step that it would list. Before restoring, the
step's metadata (array names and shapes, no array data) is compared with the
state to restore into: a checkpoint of another model is one ``ValueError``
line, never orbax's tracebacks. A step whose metadata or arrays cannot be read
is renamed aside (``<step>.damaged-<time>``) so that the run re-saves that
step, and the step before it is tried.
"""

import contextlib
import logging as std_logging
import math
import os
import sys
import time
from typing import Any, Iterator

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from metalax.training import records


def _read_only(**options: Any) -> ocp.CheckpointManagerOptions:
  return ocp.CheckpointManagerOptions(read_only=True, save_interval_steps=0, create=False, **options)


def _best_metric_fn(best_metric: str, best_mode: str) -> Any:
  worst = -math.inf if best_mode == "max" else math.inf

  def metric(metrics: Any) -> float:
    value = float(metrics.get(best_metric, worst)) if isinstance(metrics, dict) else worst
    return value if math.isfinite(value) else worst  # a NaN validation score never ranks best

  return metric


def checkpoint_manager(directory: str, max_to_keep: int = 2, *, best_metric: str | None = None,
                       best_mode: str = "max") -> ocp.CheckpointManager:
  """An orbax manager of ``directory/<step>/``, keeping the latest steps and, optionally, the best one.

  With ``best_metric``, every save must pass ``metrics`` (a dict holding
  ``best_metric``); orbax records them with the step, its preservation policy
  keeps the ``max_to_keep`` latest steps (for resuming) and the best step (for
  :func:`restore_best`), and ``manager.best_step()`` names it. The metric and
  mode are recorded in the manager's root metadata, so a later
  :func:`restore_best` needs only the directory.

  Args:
    directory: where the steps go (created if missing).
    max_to_keep: how many of the latest steps to keep (at least 1).
    best_metric: the metric that ranks checkpoints, or None to keep only the latest.
    best_mode: ``"max"`` (e.g. accuracy) or ``"min"`` (e.g. loss).

  Raises:
    ValueError: for ``max_to_keep < 1``, an unknown ``best_mode``, or a
      directory whose checkpoints were ranked by another metric or mode (or
      ranked at all, when ``best_metric`` is None).
  """
  if isinstance(max_to_keep, bool) or not isinstance(max_to_keep, int) or max_to_keep < 1:
    raise ValueError(f"max_to_keep must be an int >= 1, got {max_to_keep!r}.")
  if best_mode not in ("max", "min"):
    raise ValueError(f"best_mode must be max or min, got {best_mode!r}.")
  directory = os.path.abspath(directory)
  latest = checkpoint_managers.LatestN(n=max_to_keep)
  recorded = _recorded_ranking(directory)
  if jax.process_count() > 1:  # every process reads the directory before any creates it: all take the same path
    ocp.multihost.sync_global_processes(f"metalax_checkpoint_manager_{directory}")
  if best_metric is None:
    if recorded:  # keeping only the latest steps would delete the best one
      raise ValueError(f"the checkpoints in {directory} are ranked by {recorded['best_metric']} "
                       f"({recorded['best_mode']}); pass best_metric={recorded['best_metric']!r}, "
                       f"best_mode={recorded['best_mode']!r}, or use another directory.")
    options = ocp.CheckpointManagerOptions(create=True, preservation_policy=latest)
    return ocp.CheckpointManager(directory, options=options)
  metric = _best_metric_fn(best_metric, best_mode)
  best = checkpoint_managers.BestN(get_metric_fn=metric, reverse=best_mode == "min", n=1,
                                   keep_checkpoints_without_metrics=False)
  options = ocp.CheckpointManagerOptions(
      create=True, best_fn=metric, best_mode=best_mode,
      preservation_policy=checkpoint_managers.AnyPreservationPolicy([latest, best]))
  ranking = {"best_metric": best_metric, "best_mode": best_mode}
  if recorded and recorded != ranking:
    raise ValueError(f"the checkpoints in {directory} are ranked by {recorded['best_metric']} "
                     f"({recorded['best_mode']}), not {best_metric} ({best_mode}); use another directory.")
  with _quiet_orbax():
    return ocp.CheckpointManager(directory, options=options, metadata=ranking)


def _recorded_ranking(directory: str) -> dict[str, str] | None:
  """The ``best_metric`` and ``best_mode`` recorded in the root metadata of ``directory``, or None."""
  if not os.path.isdir(directory):
    return None
  try:
    with _quiet_orbax():
      manager = ocp.CheckpointManager(directory, options=_read_only())
      custom = manager.metadata().custom_metadata or {}
      manager.close()
  except Exception:  # no readable root metadata: nothing recorded
    return None
  if "best_metric" not in custom:
    return None
  return {"best_metric": custom["best_metric"], "best_mode": custom.get("best_mode", "max")}


class _DropOrbaxLogs:
  """A logging filter keeping orbax's own messages (below errors) out of the console."""

  def filter(self, record: Any) -> bool:
    return record.levelno >= logging.converter.STANDARD_ERROR or "orbax" not in record.pathname


_closed_loop_filter_installed = False


def _drop_closed_loop_callbacks() -> None:
  """Drops, from now on, the ``RuntimeError('Event loop is closed')`` of tensorstore callbacks.

  A failed restore leaves tensorstore callbacks that find orbax's event loop
  closed; they raise in a background thread (``sys.unraisablehook``, which
  prints a traceback and is pytest's ``PytestUnraisableExceptionWarning``),
  at any later time. Only that exception is dropped; every other one reaches
  the hook that was in place.
  """
  global _closed_loop_filter_installed
  if _closed_loop_filter_installed:
    return
  previous_hook = sys.unraisablehook

  def hook(unraisable: Any) -> None:
    if not (isinstance(unraisable.exc_value, RuntimeError) and "loop is closed" in str(unraisable.exc_value)):
      previous_hook(unraisable)

  sys.unraisablehook = hook
  _closed_loop_filter_installed = True


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
  """Keeps orbax's warnings, and the tracebacks of its reader threads after a failed read, out of the console."""
  logger = std_logging.getLogger("absl")  # orbax logs through absl's logger
  log_filter = _DropOrbaxLogs()
  logger.addFilter(log_filter)
  _drop_closed_loop_callbacks()
  try:
    yield
  finally:
    logger.removeFilter(log_filter)


def _key_name(key: Any) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(key, attribute):
      return str(getattr(key, attribute))
  return str(key)


def _leaves_by_path(tree: Any) -> dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {"/".join(_key_name(k) for k in path): leaf for path, leaf in leaves}


class CheckpointMismatch(ValueError):
  """A checkpoint whose array names or shapes are not the model's; ``mismatch`` says how they differ."""

  def __init__(self, message: str, mismatch: str):
    super().__init__(message)
    self.mismatch = mismatch


class _Unreadable(Exception):
  """A step whose metadata cannot be read (damaged)."""


def _stored_tree(step_directory: str) -> dict[str, Any]:
  """The array metadata of the checkpoint in ``step_directory`` by path; raises _Unreadable if it cannot be read."""
  item = os.path.join(step_directory, "default")
  if not os.path.isfile(os.path.join(item, "_METADATA")):
    raise _Unreadable(f"no {os.path.join(item, '_METADATA')}")
  try:
    with _quiet_orbax():
      metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(item))
  except Exception as e:  # orbax and tensorstore raise many types for unreadable files
    raise _Unreadable(_first_line(e)) from None
  stored = _leaves_by_path(getattr(metadata, "tree", metadata))
  if not stored:
    raise _Unreadable("its metadata lists no arrays")
  return stored


def _first_line(error: BaseException) -> str:
  line = (str(error).strip().splitlines() or [type(error).__name__])[0]
  return line.split(" [tensorstore_spec")[0][:300]  # tensorstore appends its whole JSON spec


def _describe_mismatch(stored: dict[str, Any], wanted: dict[str, Any]) -> str | None:
  problems = []
  missing, extra = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
  if missing:
    problems.append(f"{len(missing)} array(s) missing from the checkpoint (e.g. {', '.join(missing[:3])})")
  if extra:
    problems.append(f"{len(extra)} array(s) in the checkpoint that this configuration does not have "
                    f"(e.g. {', '.join(extra[:3])})")
  shapes = [f"{p}: checkpoint {tuple(getattr(stored[p], 'shape', None) or ())}, now {tuple(wanted[p].shape)}"
            for p in sorted(wanted)
            if p in stored and tuple(getattr(stored[p], "shape", None) or ()) != tuple(wanted[p].shape)]
  if shapes:
    problems.append(f"{len(shapes)} array(s) of another shape ({'; '.join(shapes[:3])})")
  return "; ".join(problems) or None


def checkpoint_mismatch(directory: str, abstract: Any) -> str | None:
  """How the checkpoint in the step directory ``directory`` differs from ``abstract`` in names or shapes, or None.

  Reads orbax's metadata only (no arrays). Returns None too when the metadata
  cannot be read (a damaged step, not another model).
  """
  try:
    stored = _stored_tree(directory)
  except _Unreadable:
    return None
  return _describe_mismatch(stored, _leaves_by_path(abstract))


def abstract(tree: Any) -> Any:
  """``tree`` with each array as a ``jax.ShapeDtypeStruct`` (shape, dtype, sharding): what a restore fills in."""
  return _shapes(tree)


def _shapes(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def save_checkpoint(directory: str, step: int, tree: Any) -> None:
  """Writes ``tree`` as the orbax checkpoint ``directory/<step>/`` (atomically) and waits until it is written.

  For a one-off export (e.g. a trained encoder) that :func:`restore_latest`
  reads back; earlier steps in ``directory`` are removed.
  """
  manager = checkpoint_manager(directory, max_to_keep=1)
  try:
    manager.save(step, args=ocp.args.StandardSave(tree), force=True)
    manager.wait_until_finished()
  finally:
    manager.close()


def quarantine(manager: ocp.CheckpointManager, step: int, reason: str) -> str:
  """Renames the damaged ``step`` aside to ``<step>.damaged-<time>`` (which orbax does not list); returns the path.

  The manager forgets the step, so the run saves it again. Only the main
  process renames; with several processes, all wait for it.
  """
  source = os.path.join(str(manager.directory), str(step))
  target = f"{source}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
  n = 1
  while os.path.exists(target):
    target, n = f"{source}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{n}", n + 1
  if records.is_main_process() and os.path.exists(source):
    os.rename(source, target)
  if jax.process_count() > 1:  # every process sees the step gone before any lists the steps again
    ocp.multihost.sync_global_processes(f"metalax_quarantine_{step}")
  manager.reload()
  logging.warning("The checkpoint at %s cannot be read (%s); moved it to %s and trying an earlier one.",
                  source, reason, target)
  return target


def _restore_step(manager: ocp.CheckpointManager, step: int, shapes: Any, what: str) -> Any:
  """Checks ``step``'s metadata against ``shapes`` (abstract), then restores it; raises _Unreadable if damaged."""
  step_directory = os.path.join(str(manager.directory), str(step))
  mismatch = _describe_mismatch(_stored_tree(step_directory), _leaves_by_path(shapes))
  if mismatch:
    raise CheckpointMismatch(f"{what}: the checkpoint at {step_directory} was written by a different model or "
                             f"configuration: {mismatch}; use another directory, or move the checkpoints away "
                             "to start afresh.", mismatch)
  try:
    with _quiet_orbax():
      return manager.restore(step, args=ocp.args.StandardRestore(shapes))
  except Exception as e:  # orbax and tensorstore raise many types for unreadable files
    raise _Unreadable(_first_line(e)) from None


def restore_or_init(manager: ocp.CheckpointManager, init_state: Any, what: str = "resume") -> tuple[Any, int]:
  """The latest readable checkpoint (shaped and placed like ``init_state``) and its step, or ``(init_state, 0)``.

  Each step's metadata is checked against ``init_state`` before any array is
  read. A step that cannot be read (damaged metadata or arrays) is renamed
  aside by :func:`quarantine`, with a one-line warning, and the step before it
  is tried; the run then saves that step again.

  Args:
    manager: from :func:`checkpoint_manager`.
    init_state: the state to start from when there is no checkpoint; its
      structure, shapes, dtypes and shardings are those restored.
    what: names the checkpoint in errors.

  Raises:
    CheckpointMismatch: (a ValueError) if a checkpoint's array names or shapes
      are not ``init_state``'s (e.g. another model), in one line.
  """
  shapes = _shapes(init_state)
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state = _restore_step(manager, step, shapes, what)
    except _Unreadable as e:
      quarantine(manager, step, str(e))
      continue
    logging.info("Resumed from %s at step %d.", manager.directory, step)
    return state, step
  return init_state, 0


def restore_latest(directory: str, abstract: Any, what: str) -> Any:
  """The latest checkpoint in ``directory``, restored into ``abstract`` (a tree of shape-dtype structs).

  Args:
    directory: a checkpoint manager's directory (``<step>/`` subfolders).
    abstract: the tree to restore, e.g. ``{"params": ...}`` of ``jax.ShapeDtypeStruct``
      (or of arrays, whose shapes and dtypes are taken).
    what: names the checkpoint in errors, e.g. ``"--config.init_encoder=DIR"``.

  Raises:
    FileNotFoundError: if ``directory`` holds no checkpoint, or none that can be read.
    CheckpointMismatch: (a ValueError) if the checkpoint's array names or shapes are not those of ``abstract``.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"{what}: no checkpoint directory {directory}.")
  with _quiet_orbax():
    manager = ocp.CheckpointManager(os.path.abspath(directory), options=_read_only())
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"{what}: no checkpoint in {directory}.")
  try:
    return _restore_step(manager, step, _shapes(abstract), what)
  except _Unreadable as e:
    raise FileNotFoundError(f"{what}: the checkpoint at {directory}/{step} cannot be read ({e}).") from None
  finally:
    manager.close()


def restore_best(run_dir: str, abstract_state: Any) -> tuple[Any, int, dict[str, Any]]:
  """The best checkpoint of a :func:`~metalax.training.train_loop` run with ``best_metric``, by orbax's ranking.

  Args:
    run_dir: the run's directory (its checkpoints are in ``run_dir/checkpoints``).
    abstract_state: the state's structure (arrays or ``jax.ShapeDtypeStruct``).

  Returns:
    ``(state, step, metrics)``: the best state, its step and the metrics saved
    with it (training means and ``on_checkpoint`` results).

  Raises:
    FileNotFoundError: if the run has no checkpoint.
    ValueError: if it was trained without ``best_metric``, or its best
      checkpoint is not this model's or cannot be read.
  """
  directory = os.path.join(os.path.abspath(run_dir), "checkpoints")
  ranking = _recorded_ranking(directory)
  if not os.path.isdir(directory) or not any(name.isdigit() for name in os.listdir(directory)):
    raise FileNotFoundError(f"no checkpoint in {directory}.")
  if ranking is None:
    raise ValueError(f"the checkpoints in {directory} were saved without a best_metric; train with "
                     "train_loop(..., best_metric=NAME) to keep the best one.")
  metric = _best_metric_fn(ranking["best_metric"], ranking["best_mode"])
  with _quiet_orbax():
    manager = ocp.CheckpointManager(directory, options=_read_only(
        best_fn=metric, best_mode=ranking["best_mode"]))
  try:
    step = manager.best_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {directory}.")
    try:
      state = _restore_step(manager, step, _shapes(abstract_state), "the best checkpoint")
    except _Unreadable as e:
      raise ValueError(f"the best checkpoint at {directory}/{step} cannot be read ({e}).") from None
    metrics = manager.metrics(step) or {}
    return state, step, dict(metrics)
  finally:
    manager.close()
