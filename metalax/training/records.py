"""Run records: the workdir, ``run.json``, the recorded config checked on resume, metric files.

Every file here is written so that a kill at any instant leaves either the old
file or the new one, never half of one: whole files are written to a
temporary name and renamed (:func:`write_atomic`); a JSONL record is appended
with one ``write`` call, and a line cut short anyway (a full disk) is dropped
by :func:`read_jsonl` and :func:`truncate_jsonl`.
"""

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any, Iterable

from absl import logging
import jax

PACKAGES = ("metalax", "jax", "jaxlib", "flax", "optax", "chex", "orbax-checkpoint", "ml-collections", "numpy",
            "tensorflow-datasets", "tensorboardX", "absl-py")
"""The packages whose versions :func:`write_run_info` records."""

MIN_FREE_MB = 100
"""The free space :func:`prepare_workdir` asks for by default (checkpoints, metrics, plots)."""

CONFIG_RECORD = "config.json"
"""The file in a workdir holding the config its checkpoints were trained with (:func:`check_resume`)."""

RESUME_FREE_FIELDS = ("allow_changes", "checkpoint_every", "data_dir", "download", "num_devices", "steps_per_call")
"""Fields a resumed run may change without opting in: they do not change what is trained (the data key of
iteration ``i`` depends on neither ``steps_per_call`` nor ``checkpoint_every``; ``num_devices`` changes only
the order of sums)."""

LENGTH_FREE_SCHEDULES = ("", "constant", "none", "step", "exponential")
"""``lr_schedule`` values whose shape does not depend on ``num_iterations``: with these, extending
``num_iterations`` on resume needs no opt-in; with any other (``cosine``, ``linear``, ...) it does."""


def is_main_process() -> bool:
  """True on the process that writes files (the only one, or process 0 of several)."""
  return jax.process_index() == 0


def write_atomic(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` through a temporary file and a rename: a kill leaves the old file or the new."""
  temporary = f"{path}.tmp-{os.getpid()}"
  try:
    with open(temporary, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as indented JSON to ``path`` atomically (:func:`write_atomic`); non-JSON values as strings."""
  write_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


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


def _config_dict(config: Any) -> dict[str, Any]:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def write_run_info(workdir: str, config: Any) -> None:
  """Writes what reproduces the run into ``workdir/run.json``.

  The config, the command line, the package versions, the git commit of the
  code that was run, the devices and processes, and the JAX and XLA settings
  from the environment. A ``run.json`` already there (an earlier run that this
  one resumes) is kept as ``run.<its time>.json``. Only the main process writes.
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
  info = {
      "config": _config_dict(config),
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
      with open(path) as f:
        earlier = json.load(f).get("time", "").replace(" ", "_").replace(":", "")
    except (OSError, ValueError, AttributeError):
      earlier = ""
    earlier = earlier or str(int(os.path.getmtime(path)))
    kept, n = os.path.join(workdir, f"run.{earlier}.json"), 1
    while os.path.exists(kept):
      kept, n = os.path.join(workdir, f"run.{earlier}-{n}.json"), n + 1
    try:
      os.link(path, kept)  # a second name for the old record: run.json is never missing
    except OSError:
      with open(path) as f:
        write_atomic(kept, f.read())
  write_atomic(path, json.dumps(info, indent=2, default=str))


def _git_state() -> dict[str, Any]:
  """The commit of the code that was run (the main script's checkout) and whether it has uncommitted changes."""
  main = getattr(sys.modules.get("__main__"), "__file__", None)
  root = os.path.dirname(os.path.abspath(main)) if main else os.getcwd()
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                            capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return {}
  if commit.returncode:
    return {}
  return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _has_checkpoints(workdir: str) -> bool:
  """Whether any orbax step directory (one holding ``_CHECKPOINT_METADATA``) is under ``workdir``."""
  for root, dirs, files in os.walk(workdir):
    if "_CHECKPOINT_METADATA" in files and os.path.basename(root).isdigit():
      return True
    if root[len(workdir):].count(os.sep) >= 3:
      dirs[:] = []
  return False


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    flat = {}
    for name, value in tree.items():
      flat.update(_flatten(value, f"{prefix}{name}."))
    return flat
  return {prefix[:-1]: tree}


def _comparable(value: Any) -> Any:
  return json.loads(json.dumps(value, default=str))


def allowed_changes(value: Any) -> tuple[str, ...]:
  """The field names in an ``allow_changes`` value: a tuple or list of names, or a comma list (``"seed,outer_lr"``)."""
  if isinstance(value, str):
    value = (value,)
  names = []
  for item in value or ():
    names.extend(name.strip() for name in str(item).split(",") if name.strip())
  return tuple(names)


def check_resume(workdir: str, config: Any, allow_changes: Iterable[str] = ()) -> None:
  """Records the run's config with its checkpoints, and refuses to resume them with another config.

  The first run in ``workdir`` writes its config to ``workdir/config.json``.
  A run that finds checkpoints under ``workdir`` compares its config with the
  recorded one and raises, naming every field that differs in one line,
  unless each such field is in ``allow_changes`` (or ``config.allow_changes``)
  or in :data:`RESUME_FREE_FIELDS`. Extending (or shortening)
  ``num_iterations`` is always allowed, the documented way to train longer,
  except where the config's ``lr_schedule`` is shaped by it (any schedule not
  in :data:`LENGTH_FREE_SCHEDULES`, e.g. ``cosine``): then it needs opting in.
  An accepted change is recorded (the new config replaces the old one, which
  is kept in ``run.<time>.json`` by :func:`write_run_info`). Without
  checkpoints the config is simply recorded: nothing trained can be mixed.
  Only the main process writes.

  Args:
    workdir: the run's directory (checkpoints may be in any subdirectory).
    config: the run's config (a ``ConfigDict`` or a dict).
    allow_changes: field names (dotted for nested fields) that may differ
      from the recorded config; comma lists are split.

  Raises:
    ValueError: if a checkpointed run in ``workdir`` had another config.
  """
  current = _comparable(_config_dict(config))
  path = os.path.join(workdir, CONFIG_RECORD)
  allowed = set(allowed_changes(allow_changes)) | set(allowed_changes(current.get("allow_changes", ())))
  if os.path.exists(path) and _has_checkpoints(workdir):
    try:
      with open(path) as f:
        recorded = json.load(f)
    except (OSError, ValueError) as e:
      raise ValueError(f"cannot read the config recorded with the checkpoints in {workdir} ({path}: {e}); "
                       "restore it, or use another --workdir.") from None
    old, new = _flatten(recorded), _flatten(current)
    differ = sorted(name for name in set(old) | set(new) if old.get(name, "<absent>") != new.get(name, "<absent>"))
    schedule = str(new.get("lr_schedule", ""))
    length_free = schedule in LENGTH_FREE_SCHEDULES
    refused = [name for name in differ if name not in allowed and name not in RESUME_FREE_FIELDS
               and not (name == "num_iterations" and length_free)]
    if refused:
      changes = "; ".join(f"{name}: {old.get(name, '<absent>')!r} -> {new.get(name, '<absent>')!r}"
                          for name in refused)
      note = (f" (num_iterations shapes lr_schedule={schedule!r})"
              if "num_iterations" in refused and not length_free else "")
      raise ValueError(f"{workdir} holds checkpoints of a run with another config ({changes}){note}; resume with "
                       f"the same config, use another --workdir, or accept the change with "
                       f"--config.allow_changes={','.join(refused)}.")
    if differ:
      logging.warning("Resuming %s with changed config fields: %s.", workdir, ", ".join(differ))
    elif os.path.exists(path):
      return
  if is_main_process():
    os.makedirs(workdir, exist_ok=True)
    write_atomic(path, json.dumps(current, indent=2, sort_keys=True))


def _float_or_keep(value: Any) -> Any:
  if isinstance(value, (int, str, bool)) or value is None or not hasattr(value, "__float__"):
    return value
  return float(value)


def append_jsonl(path: str, record: dict[str, Any]) -> None:
  """Appends one JSON record (numbers converted to floats) as a line of ``path``, in one ``write``.

  One ``write`` to a file opened for appending is not split by a kill, so a
  line is either there whole or not at all (a full disk may still cut it
  short: :func:`read_jsonl` and :func:`truncate_jsonl` drop such a line).
  """
  line = (json.dumps({k: _float_or_keep(v) for k, v in record.items()}) + "\n").encode()
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    os.write(fd, line)
  finally:
    os.close(fd)


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The records of a JSONL file, without a line cut short (a kill or a full disk)."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict):
        records.append(record)
  return records


def truncate_jsonl(path: str, last_step: int) -> None:
  """Keeps the records of ``path`` up to step ``last_step`` (and drops a line cut short by a kill)."""
  if not os.path.exists(path):
    return
  kept = [record for record in read_jsonl(path) if record.get("step", 0) <= last_step]
  write_atomic(path, "".join(json.dumps(record) + "\n" for record in kept))
