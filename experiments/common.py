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
import shutil
import subprocess
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

from metalax import parallel

PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "ml-collections", "numpy",
            "tensorflow-datasets", "tensorboardX", "absl-py")

RUN_DEFAULTS = {
    "num_devices": 0,         # devices the batch is split across: 0 for all of them, 1 for no sharding
    "precision": "float32",   # compute dtype of the training objective: float32 | bfloat16 (params stay float32)
    "on_nan": "stop",         # a non-finite loss: stop (keeping the last good checkpoint) | skip the step
}
"""Settings every experiment accepts (``--config.num_devices=4``, ``--config.precision=bfloat16``,
``--config.on_nan=skip``) whether or not its config file lists them; :func:`run_settings` reads them."""

MIN_FREE_MB = 100
"""The free space :func:`prepare_workdir` asks for by default (checkpoints, metrics, plots)."""


def run_settings(config: Any) -> dict[str, Any]:
  """The :data:`RUN_DEFAULTS` fields of ``config`` (defaults where it has none), checked.

  Raises:
    ValueError: for a value that cannot work.
  """
  settings = {name: config.get(name, default) for name, default in RUN_DEFAULTS.items()}
  num_devices = settings["num_devices"]
  if isinstance(num_devices, bool) or not isinstance(num_devices, int) or num_devices < 0:
    raise ValueError(f"--config.num_devices must be an int >= 0 (0 for all devices), got {num_devices!r}.")
  if settings["precision"] not in ("float32", "bfloat16"):
    raise ValueError(f"--config.precision must be float32 or bfloat16, got {settings['precision']!r}.")
  if settings["on_nan"] not in ("stop", "skip"):
    raise ValueError(f"--config.on_nan must be stop or skip, got {settings['on_nan']!r}.")
  return settings


def make_mesh(config: Any, batch_size: int | None = None) -> jax.sharding.Mesh | None:
  """The device mesh ``config.num_devices`` asks for, or None for a single device.

  Args:
    config: the experiment's config (``num_devices``: 0 for all devices).
    batch_size: the number of tasks (or examples) split across the devices,
      checked to be a multiple of their number.

  Raises:
    ValueError: if there are fewer devices than asked for, or ``batch_size``
      does not split evenly.
  """
  num_devices = run_settings(config)["num_devices"]
  mesh = parallel.data_mesh(num_devices)
  size = mesh.shape[parallel.DATA_AXIS]
  if batch_size is not None and batch_size % size:
    raise ValueError(f"a batch of {batch_size} tasks cannot be split evenly across {size} devices; set "
                     f"--config.num_devices to a divisor of {batch_size} (1 for no sharding) or change the batch.")
  return mesh if size > 1 else None


def require_float32(config: Any, experiment: str) -> None:
  """Raises ValueError unless ``config.precision`` is float32 (for entrypoints without mixed precision)."""
  precision = run_settings(config)["precision"]
  if precision != "float32":
    raise ValueError(f"--config.precision={precision} is implemented by the meta-learning entrypoints (sinusoid, "
                     f"fewshot); {experiment} trains in float32 only.")


def with_precision(learner: Any, config: Any) -> Any:
  """``learner`` computing its training objective in ``config.precision`` (float32 parameters and gradients)."""
  return parallel.with_precision(learner, run_settings(config)["precision"])


def meta_train_step(learner: Any, optimizer: Any, config: Any, mesh: jax.sharding.Mesh | None) -> Any:
  """The meta-training step ``config`` asks for: ``config.precision``, the batch split over ``mesh`` (from
  :func:`make_mesh`) and ``config.tasks_per_chunk`` (0: the whole meta-batch at once).

  Raises:
    ValueError: if ``tasks_per_chunk`` is negative or does not divide ``config.meta_batch_size``.
  """
  chunk = config.tasks_per_chunk
  if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0 or (chunk and config.meta_batch_size % chunk):
    raise ValueError(f"--config.tasks_per_chunk must be 0 (whole batch) or a divisor of meta_batch_size="
                     f"{config.meta_batch_size}, got {chunk!r}.")
  return parallel.train_step(with_precision(learner, config), optimizer, mesh, tasks_per_chunk=chunk or None)


def is_main_process() -> bool:
  """True on the process that writes files (the only one, or process 0 of several)."""
  return jax.process_index() == 0


def prepare_workdir(workdir: str, min_free_mb: float = MIN_FREE_MB) -> str:
  """Creates ``workdir`` and checks it is writable and has room, so a bad path fails at start-up.

  Args:
    workdir: the run's directory.
    min_free_mb: the free space (MiB) its filesystem must have.

  Returns:
    The absolute path.

  Raises:
    ValueError: if ``workdir`` is empty, exists and is not a writable
      directory, or its filesystem has less than ``min_free_mb`` MiB free.
  """
  if not workdir:
    raise ValueError("--workdir must name a directory for metrics, checkpoints and plots.")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_probe_{jax.process_index()}_{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
    free_mb = shutil.disk_usage(workdir).free / 2**20
  except OSError as e:
    raise ValueError(f"--workdir {workdir!r} is not a writable directory: {e}.") from None
  if free_mb < min_free_mb:
    raise ValueError(f"--workdir {workdir!r} is on a filesystem with {free_mb:.0f} MiB free; a run needs at least "
                     f"{min_free_mb:.0f} MiB for checkpoints and metrics. Free some space or choose another "
                     "--workdir.")
  return workdir


def write_run_info(workdir: str, config: Any) -> None:
  """Writes what reproduces the run into ``workdir/run.json``.

  The config (with the :data:`RUN_DEFAULTS` it does not set, so the seed and
  every hyperparameter are there), the command line, the package versions,
  the git commit of the code, the devices and processes, and the JAX and XLA
  settings from the environment. A ``run.json`` already there (an earlier run
  that this one resumes) is kept as ``run.<its time>.json``. Only the main
  process writes.
  """
  if not is_main_process():
    return
  from importlib import metadata
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  config_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  info = {
      "config": {**RUN_DEFAULTS, **config_dict},
      "argv": sys.argv,
      "python": platform.python_version(),
      "machine": f"{platform.machine()} {platform.processor()} {os.cpu_count()} cpus",
      "devices": [str(d) for d in jax.devices()],
      "process_count": jax.process_count(),
      "versions": versions,
      "git": _git_state(),
      "environment": {k: v for k, v in os.environ.items() if k.startswith(("JAX_", "XLA_", "TF_CPP"))},
      "jax_config": {name: getattr(jax.config, name, None) for name in (
          "jax_enable_x64", "jax_threefry_partitionable", "jax_default_matmul_precision", "jax_default_prng_impl")},
      "time": time.strftime("%Y-%m-%d %H:%M:%S"),
  }
  path = os.path.join(workdir, "run.json")
  if os.path.exists(path):
    try:
      earlier = json.load(open(path)).get("time", "").replace(" ", "_").replace(":", "")
    except (OSError, ValueError, AttributeError):
      earlier = ""
    earlier = earlier or str(int(os.path.getmtime(path)))
    kept, n = os.path.join(workdir, f"run.{earlier}.json"), 1
    while os.path.exists(kept):
      kept, n = os.path.join(workdir, f"run.{earlier}-{n}.json"), n + 1
    os.replace(path, kept)
  with open(path + ".tmp", "w") as f:
    json.dump(info, f, indent=2, default=str)
  os.replace(path + ".tmp", path)


def _git_state() -> dict[str, Any]:
  """The commit of the code and whether it has uncommitted changes, if it is a git checkout."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                            capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return {}
  if commit.returncode:
    return {}
  return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def append_jsonl(path: str, record: dict[str, Any]) -> None:
  """Appends one JSON record (numbers converted to floats) as a line of ``path``."""
  record = {k: (v if isinstance(v, (int, str)) or not hasattr(v, "__float__") else float(v))
            for k, v in record.items()}
  with open(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def truncate_jsonl(path: str, last_step: int) -> None:
  """Keeps the records of ``path`` up to step ``last_step`` (and drops a line cut short by a kill)."""
  if not os.path.exists(path):
    return
  kept = []
  for line in open(path):
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if record.get("step", 0) <= last_step:
      kept.append(line if line.endswith("\n") else line + "\n")
  with open(path + ".tmp", "w") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)


def run_experiment(train_and_evaluate: Callable[[Any, str], Any], default_config: str) -> None:
  """The absl entrypoint shared by every experiment.

  Flags: ``--config`` (an ml_collections config file, ``FILE:PRESET``, fields
  overridden by ``--config.FIELD=VALUE``; the :data:`RUN_DEFAULTS` fields are
  accepted for every experiment), ``--workdir``, and for several processes
  ``--coordinator_address``, ``--num_processes``, ``--process_id`` (or
  ``--distributed`` alone on SLURM, Open MPI or a TPU pod, where JAX finds
  them), which call ``jax.distributed.initialize``.

  Flags are defined here, when a module runs as ``__main__``, so importing
  several experiments in one process (as the tests do) defines no flag twice.
  A user error (``ValueError``, ``FileNotFoundError``, an unwritable or full
  disk, a non-finite loss) ends the run with one line on stderr and exit
  status 1, not a traceback.
  """
  from absl import app
  from absl import flags
  from ml_collections import config_flags

  config_flag = config_flags.DEFINE_config_file(
      "config", default_config, "Experiment configuration (a config file, optionally FILE:PRESET); override "
      "fields with --config.FIELD=VALUE.", lock_config=False, accept_new_attributes=True)
  workdir_flag = flags.DEFINE_string("workdir", None, "Directory for results, checkpoints and plots.")
  distributed_flag = flags.DEFINE_bool(
      "distributed", False, "Run as one of several processes (jax.distributed.initialize); without the three "
      "flags below JAX finds them from SLURM, Open MPI or the TPU environment.")
  coordinator_flag = flags.DEFINE_string(
      "coordinator_address", None, "host:port of process 0, which coordinates the processes (implies "
      "--distributed).")
  num_processes_flag = flags.DEFINE_integer("num_processes", None, "The number of processes.", lower_bound=1)
  process_id_flag = flags.DEFINE_integer("process_id", None, "This process's index, 0..num_processes-1.",
                                         lower_bound=0)

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not workdir_flag.value:
      raise app.UsageError("--workdir is required (where results, checkpoints and plots go).")
    quiet_orbax_logs()
    try:
      try:
        config = config_flag.value
        config.keys()
      except OSError as e:  # ml_collections defers a missing config file's error to here
        raise FileNotFoundError(f"cannot load the --config file: {str(e).split('Attempted')[-1].strip()}") from None
      check_overrides(flags.FLAGS["config"], config)
      if distributed_flag.value or any(flag.value is not None for flag in (
          coordinator_flag, num_processes_flag, process_id_flag)):
        initialize_distributed(coordinator_flag.value, num_processes_flag.value, process_id_flag.value)
      train_and_evaluate(config, workdir_flag.value)
    except (ValueError, FileNotFoundError, FloatingPointError, OSError) as e:
      user_error(" ".join(str(e).split()) or type(e).__name__, several_processes=jax.process_count() > 1)

  def parse_flags(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:  # a config file that fails to load embeds its traceback: keep its last line
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      message = lines[-1] if any("Traceback" in line for line in lines) else " ".join(lines)
      user_error(f"{message} (--helpshort or --helpfull lists the flags)")

  app.run(main, flags_parser=parse_flags)


def user_error(message: str, several_processes: bool = False) -> None:
  """Ends the program with ``<program>: error: message`` on stderr and exit status 1, no traceback."""
  name = os.path.splitext(os.path.basename(sys.argv[0]))[0]
  sys.stderr.write(f"{name}: error: {message}\n")
  sys.stderr.flush()
  if several_processes:
    os._exit(1)  # do not wait at exit for processes that wait for this one
  sys.exit(1)


def check_overrides(config_flag: Any, config: Any) -> None:
  """Rejects ``--config.FIELD`` overrides naming a field the config file does not have.

  The config flag accepts new fields so that every experiment takes the
  :data:`RUN_DEFAULTS` fields; any other new field is a typo.

  Raises:
    ValueError: naming the unknown fields and the known ones.
  """
  from ml_collections.config_flags import config_flags
  loaded = config_flags.ConfigFileFlagParser(name="config", lock_config=False).parse(config_flag.config_filename)
  known = set(loaded.keys()) | set(RUN_DEFAULTS)
  unknown = sorted({path.split(".")[0] for path in config_flags.get_override_values(config_flag)} - known)
  if unknown:
    raise ValueError(f"unknown config field(s) {', '.join('--config.' + u for u in unknown)}; "
                     f"the fields are: {', '.join(sorted(known))}.")
  run_settings(config)


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """``jax.distributed.initialize``, with CPU collectives over gloo (for CPU-only clusters and tests).

  Raises:
    ValueError: if only some of the three values are given, or the process id is out of range.
  """
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    raise ValueError("--coordinator_address, --num_processes and --process_id go together (or none of them, "
                     "for JAX to read them from SLURM, Open MPI or a TPU pod).")
  if all(given) and not 0 <= process_id < num_processes:
    raise ValueError(f"--process_id must be in 0..{num_processes - 1}, got {process_id}.")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address, num_processes, process_id)
  logging.info("Process %d of %d; %d local and %d global devices.", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def quiet_orbax_logs() -> None:
  """Keeps orbax's per-save INFO lines out of the console; warnings and errors still show."""
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.converter.STANDARD_WARNING or "orbax" not in record.pathname)


def checkpoint_manager(directory: str, max_to_keep: int = 2) -> ocp.CheckpointManager:
  """An orbax manager writing ``directory/<step>/`` atomically (half-written steps are never listed).

  Orbax writes a step into a temporary directory and renames it (on local
  filesystems; a ``commit_success.txt`` marker on object stores) only when
  every array is written, and ``latest_step()`` lists only finished steps.
  """
  return ocp.CheckpointManager(
      os.path.abspath(directory), options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))


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


def restore_latest(directory: str, abstract: Any, what: str) -> Any:
  """The latest orbax checkpoint in ``directory``, restored into ``abstract`` (a tree of shape-dtype structs).

  Args:
    directory: a checkpoint manager's directory (``<step>/`` subfolders).
    abstract: the tree to restore, e.g. ``{"params": ...}`` of ``jax.ShapeDtypeStruct``.
    what: names the checkpoint in errors, e.g. ``"--config.init_encoder=DIR"``.

  Raises:
    FileNotFoundError: if ``directory`` holds no checkpoint.
    CheckpointMismatch: (a ValueError) if the checkpoint's array names or shapes are not those of ``abstract``.
  """
  manager = checkpoint_manager(directory, max_to_keep=1) if os.path.isdir(directory) else None
  step = manager.latest_step() if manager is not None else None
  if step is None:
    raise FileNotFoundError(f"{what}: no checkpoint in {directory}.")
  mismatch = checkpoint_mismatch(os.path.join(directory, str(step)), abstract)
  if mismatch:
    raise CheckpointMismatch(f"{what}: the checkpoint in {directory} is not this model's: {mismatch}.", mismatch)
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def checkpoint_mismatch(directory: str, abstract: Any) -> str | None:
  """How the checkpoint in ``directory`` differs from ``abstract`` in names or shapes, or None.

  Reads orbax's metadata only (no arrays). Returns None too when the metadata
  cannot be read (restoring will then say what is wrong).
  """
  try:
    metadata = ocp.StandardCheckpointer().metadata(os.path.join(directory, "default"))
  except Exception:  # any unreadable metadata: let the restore report it
    return None
  stored = _leaves_by_path(getattr(metadata, "item_metadata", metadata))
  wanted = _leaves_by_path(abstract)
  if not stored:  # damaged, not another model
    return None
  problems = []
  missing, extra = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
  if missing:
    problems.append(f"{len(missing)} array(s) missing from the checkpoint (e.g. {', '.join(missing[:3])})")
  if extra:
    problems.append(f"{len(extra)} array(s) in the checkpoint that this configuration does not have "
                    f"(e.g. {', '.join(extra[:3])})")
  shapes = [f"{p}: checkpoint {tuple(stored[p].shape)}, now {tuple(wanted[p].shape)}" for p in sorted(wanted)
            if p in stored and tuple(getattr(stored[p], "shape", ()) or ()) != tuple(wanted[p].shape)]
  if shapes:
    problems.append(f"{len(shapes)} array(s) of another shape ({'; '.join(shapes[:3])})")
  return "; ".join(problems) or None


def restore_or_init(manager: ocp.CheckpointManager, init_state: Any) -> tuple[Any, int]:
  """The latest checkpoint (shaped and placed like ``init_state``) and its step, or ``(init_state, 0)``.

  A checkpoint that cannot be read (e.g. a damaged file) is skipped, with a
  warning, for the one before it; nothing is deleted.

  Raises:
    ValueError: if the checkpoint does not match ``init_state`` (e.g. another
      model), or no checkpoint can be read.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    return init_state, 0
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, init_state)
  advice = "use another --workdir, or move the checkpoints away to start afresh"
  errors = []
  for step in steps:
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax and tensorstore raise many types for unreadable files
      mismatch = checkpoint_mismatch(os.path.join(manager.directory, str(step)), abstract)
      if mismatch:
        raise ValueError(f"the checkpoint at {manager.directory}/{step} was written by a different model or "
                         f"configuration: {mismatch}; {advice}.") from None
      first_line = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      logging.warning("Cannot restore the checkpoint at %s/%d (%s); trying an earlier one.",
                      manager.directory, step, first_line)
      errors.append(f"{step}: {first_line}")
      continue
    logging.info("Resumed from %s at step %d.", manager.directory, step)
    return state, step
  raise ValueError(f"no checkpoint in {manager.directory} can be restored ({'; '.join(errors)}); {advice}.")


def _no_nan(tree: Any) -> jax.Array:
  """Whether no floating leaf of ``tree`` holds a NaN (an infinity may be a legitimate state, e.g. a best-so-far)."""
  leaves = [~jnp.any(jnp.isnan(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def train_loop(step: Callable[[Any, jax.Array, Any], tuple[Any, dict[str, jax.Array]]], state: Any, *,
               data: Any, key: jax.Array, num_iterations: int, steps_per_call: int, checkpoint_every: int,
               run_dir: str, desc: str,
               on_checkpoint: Callable[[Any, int], dict[str, float]] | None = None,
               mesh: jax.sharding.Mesh | None = None, on_nan: str = "stop") -> Any:
  """Runs ``num_iterations`` training steps, resuming from ``run_dir/checkpoints``.

  Iteration ``i`` gets the key ``fold_in(key, i)``, so a resumed run sees the
  same data as an uninterrupted one. ``steps_per_call`` iterations run in one
  jitted ``lax.scan``; their mean metrics go to ``run_dir/metrics.jsonl``,
  TensorBoard event files in ``run_dir/tb/`` and the progress bar (from the
  main process only). A resumed run first drops the metrics recorded after its
  checkpoint, so the records are those of one uninterrupted run.

  Args:
    step: ``step(state, key, data) -> (state, metrics)``, pure; ``metrics`` must
      hold ``"loss"`` (shown in the progress bar) and may hold anything else.
      To split its batch across ``mesh``, it passes the batch through
      :func:`metalax.parallel.shard_batch`.
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
      each save (e.g. validation); its metrics are logged too. It gets this
      process's own copy of the state.
    mesh: a device mesh (:func:`make_mesh`): ``state`` and ``data`` are
      replicated on its devices; None for one device.
    on_nan: what a non-finite loss or a NaN in the state does: ``"stop"``
      raises ``FloatingPointError`` naming the first such iteration, keeping
      the last checkpoint (no saved state holds a NaN); ``"skip"`` discards that
      iteration's update (the state stays as before it) and counts it in the
      ``skipped`` metric.

  Returns:
    The final state (replicated on ``mesh`` when there is one).

  Raises:
    FloatingPointError: with ``on_nan="stop"``, if a loss or the state is not
      finite; with ``"skip"``, if every iteration of one call was skipped.
    ValueError: if the checkpoint belongs to another model, or ``on_nan`` is unknown.
  """
  if on_nan not in ("stop", "skip"):
    raise ValueError(f"on_nan must be stop or skip, got {on_nan!r}.")
  manager = checkpoint_manager(os.path.join(run_dir, "checkpoints"))
  state, data = parallel.replicate(state, mesh), parallel.replicate(data, mesh)
  state, start = restore_or_init(manager, state)
  main_process = is_main_process()

  @functools.partial(jax.jit, static_argnums=3)
  def run_chunk(state, data, begin, length):
    def body(state, iteration):
      new_state, metrics = step(state, jax.random.fold_in(key, iteration), data)
      finite = jnp.isfinite(metrics["loss"]) & _no_nan(new_state)
      if on_nan == "skip":
        new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
      return new_state, (metrics, finite)

    state, (metrics, finite) = jax.lax.scan(body, state, begin + jnp.arange(length))
    count = jnp.maximum(jnp.sum(finite), 1)
    means = jax.tree.map(lambda m: jnp.sum(jnp.where(finite, m, 0)) / count, metrics)
    first_bad = jnp.where(jnp.all(finite), -1, begin + jnp.argmin(finite))
    return parallel.replicate(state, mesh), means, jnp.sum(~finite), first_bad

  metrics_path = os.path.join(run_dir, "metrics.jsonl")
  if main_process:
    truncate_jsonl(metrics_path, start)
  writer = tensorboardX.SummaryWriter(os.path.join(run_dir, "tb"), purge_step=start + 1 if start else None) \
      if main_process else None
  bar = tqdm.tqdm(total=num_iterations, initial=start, desc=desc, unit="it", dynamic_ncols=True,
                  disable=not main_process)
  try:
    for begin, length in chunks(start, num_iterations, steps_per_call):
      state, metrics, num_bad, first_bad = run_chunk(state, data, begin, length)
      end = begin + length
      metrics = {k: float(v) for k, v in metrics.items()}
      num_bad, first_bad = int(num_bad), int(first_bad)
      if num_bad and (on_nan == "stop" or num_bad == length):
        manager.wait_until_finished()  # the last good checkpoint may still be being written
        what = "the loss or the parameters became" if on_nan == "stop" else "every iteration was"
        good = manager.latest_step()
        kept = f"the last good checkpoint (iteration {good}) is kept in" if good else "no checkpoint was written to"
        raise FloatingPointError(
            f"{desc.strip()}: {what} not finite (NaN or Inf) at iteration {first_bad} "
            f"(of {begin}-{end - 1}){' and skipped' if on_nan == 'skip' else ''}; training stopped and {kept} "
            f"{manager.directory}. Lower the learning rate, or set --config.on_nan=skip to skip such iterations.")
      if num_bad:
        logging.warning("%s: skipped %d iteration(s) with a non-finite loss in %d-%d (first %d).", desc.strip(),
                        num_bad, begin, end - 1, first_bad)
      bar.update(length)
      bar.set_postfix(loss=f"{metrics['loss']:.4f}")
      record = {"step": end, **metrics}
      if on_nan == "skip":
        record["skipped"] = num_bad
      if end % checkpoint_every == 0 or end == num_iterations:
        if on_checkpoint is not None:
          record.update(on_checkpoint(parallel.local_copy(state), end))
        manager.save(end, args=ocp.args.StandardSave(state))
      if main_process:
        append_jsonl(metrics_path, record)
        for name, value in record.items():
          if name != "step":
            writer.add_scalar(name, value, end)
  finally:
    manager.wait_until_finished()  # a save begun before an error or Ctrl-C is finished, not left half-written
    bar.close()
    if writer is not None:
      writer.close()
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
