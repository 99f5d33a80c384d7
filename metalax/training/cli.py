"""The command line of a training script: absl flags, an ml_collections config file, one-line user errors.

A script calls :func:`run` from its ``__main__`` block with its
``train_and_evaluate(config, workdir)`` and its config file. The config file
defines ``get_config(preset="")`` (every field declared, usually starting from
:func:`~metalax.training.base_config`), a module-level ``PRESETS`` dict and a
``HELP`` dict (field name -> one line; dotted names for nested fields).
``--help`` lists every field with its default and description.
"""

import difflib
import importlib.util
import os
import re
import sys
from typing import Any, Callable

from absl import logging
import jax
import ml_collections

from metalax.training import config as config_lib

USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError, OSError)
"""Errors :func:`run` reports as one line on stderr (exit status 1) rather than a traceback."""

HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort", "--helpfull", "-helpfull")

_OTHER_FLAGS = (
    ("--workdir=DIR", "Directory for results, checkpoints and plots (required; rerun in it to resume)."),
    ("--config=FILE[:PRESET]", "The config file, optionally with a preset of its PRESETS."),
    ("--config.FIELD=VALUE", "Override a config field. A tuple field takes its whole value once "
                             "(--config.hidden=(40,40), --config.learners=maml,anil) or one element per "
                             "repetition (--config.learners=maml --config.learners=anil)."),
    ("--distributed", "Run as one of several processes (jax.distributed.initialize); without the three flags "
                      "below JAX finds them from SLURM, Open MPI or the TPU environment."),
    ("--coordinator_address=HOST:PORT", "Address of process 0, which coordinates the processes."),
    ("--num_processes=N", "The number of processes."),
    ("--process_id=I", "This process's index, 0..num_processes-1."),
)


def program_name() -> str:
  """The running script's name, as errors and ``--help`` show it (``sinusoid`` for ``python -m experiments.sinusoid``)."""
  return os.path.splitext(os.path.basename(sys.argv[0]))[0] or "python"


def user_error(message: str, several_processes: bool = False) -> None:
  """Ends the program with ``<program>: error: message`` on stderr and exit status 1, no traceback."""
  message = " ".join(str(message).split())
  sys.stderr.write(f"{program_name()}: error: {message}\n")
  sys.stderr.flush()
  if several_processes:
    os._exit(1)  # do not wait at exit for processes that wait for this one
  sys.exit(1)


def quiet_orbax_logs() -> None:
  """Keeps orbax's per-save INFO lines out of the console; warnings and errors still show."""
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= logging.converter.STANDARD_WARNING or "orbax" not in record.pathname)


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


def _split_spec(spec: str) -> tuple[str, str]:
  """``FILE[:PRESET]`` -> ``(FILE, PRESET)``, as ml_collections splits it."""
  if ":" in spec and not os.path.exists(spec):
    path, preset = spec.rsplit(":", 1)
    return path, preset
  return spec, ""


def load_config_module(path: str) -> Any:
  """The config file at ``path`` as a module (its ``get_config``, ``PRESETS`` and ``HELP``).

  Raises:
    FileNotFoundError: if there is no such file.
    ValueError: if it has no ``get_config``.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no config file {path!r}.")
  spec = importlib.util.spec_from_file_location(f"_metalax_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"the config file {path} defines no get_config(preset='').")
  return module


def load_config(spec: str) -> tuple[ml_collections.ConfigDict, dict[str, str], dict[str, Any]]:
  """``(config, HELP, PRESETS)`` of a config file spec ``FILE[:PRESET]``; HELP merged over the base fields'.

  Raises:
    FileNotFoundError: if there is no such file.
    ValueError: for an unknown preset (listing the presets).
  """
  path, preset = _split_spec(spec)
  module = load_config_module(path)
  presets = dict(getattr(module, "PRESETS", {}) or {})
  if preset and presets and preset not in presets:
    raise ValueError(f"--config={spec}: unknown preset {preset!r}; the presets are {', '.join(sorted(presets))}.")
  config = module.get_config(preset) if preset else module.get_config()
  return config, {**config_lib.HELP, **dict(getattr(module, "HELP", {}) or {})}, presets


def fields(config: Any, prefix: str = "") -> dict[str, Any]:
  """Every leaf field of ``config`` by dotted name, with its value."""
  flat = {}
  for name, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      flat.update(fields(value, f"{prefix}{name}."))
    else:
      flat[f"{prefix}{name}"] = value
  return flat


def _format_value(value: Any) -> str:
  if isinstance(value, tuple):
    return "(" + ",".join(_format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def config_help(spec: str) -> str:
  """The ``--help`` text of a config file spec: usage, every field with its default and description, the flags."""
  config, help_lines, presets = load_config(spec)
  path, preset = _split_spec(spec)
  lines = [f"usage: {program_name()} --workdir=DIR [--config=FILE[:PRESET]] [--config.FIELD=VALUE ...]", ""]
  about = f"Config fields of {path}"
  if preset:
    about += f" with preset {preset}"
  if presets:
    about += f" (presets: {', '.join(sorted(presets))})"
  lines.append(about + ":")
  for name, value in fields(config).items():
    lines.append(f"  --config.{name}={_format_value(value)}")
    lines.append(f"      {help_lines.get(name, '(no description)')}")
  lines += ["", "Flags:"]
  for flag, text in _OTHER_FLAGS:
    lines.append(f"  {flag}")
    lines.append(f"      {text}")
  return "\n".join(lines) + "\n"


def _overrides(argv: list[str]) -> list[tuple[str, str | None]]:
  """The ``--config.FIELD[=VALUE]`` arguments of ``argv`` as ``(FIELD, VALUE)`` (VALUE None when it is the next argument)."""
  found = []
  for i, arg in enumerate(argv):
    if arg == "--":
      break
    match = re.match(r"^--?(?:no)?config\.([^=]+)(?:=(.*))?$", arg, re.S)
    if match:
      value = match.group(2)
      if value is None and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
        value = argv[i + 1]
      found.append((match.group(1), value))
  return found


def _is_whole_tuple(value: str | None) -> bool:
  """Whether an override's text is a whole tuple (``(8,8)``, ``()``, ``a,b``) rather than one element."""
  return value is not None and any(mark in value for mark in "(),[]")


def check_repeated_overrides(argv: list[str], config: Any) -> None:
  """Refuses a tuple field given more than once where a value is a whole tuple.

  ml_collections builds a tuple from repeated elements (``--config.learners=maml
  --config.learners=anil`` is ``("maml", "anil")``), and so it concatenates
  repeated whole tuples: ``--config.hidden=(8,8) --config.hidden=(16,16)`` would
  train ``(8, 8, 16, 16)`` and ``--config.hidden=()`` after a value would do
  nothing. Those are refused.

  Raises:
    ValueError: naming the field and its values.
  """
  values: dict[str, list[Any]] = {}
  for name, value in _overrides(argv):
    values.setdefault(name, []).append(value)
  flat = fields(config)
  for name, given in values.items():
    if len(given) > 1 and isinstance(flat.get(name), tuple) and any(map(_is_whole_tuple, given)):
      raise ValueError(f"--config.{name} is given {len(given)} times ({', '.join(map(str, given))}); a tuple field "
                       f"takes its whole value once, e.g. --config.{name}={given[-1]} (or one element per "
                       f"repetition, --config.{name}=a --config.{name}=b).")


def split_name_lists(argv: list[str], config: Any) -> None:
  """Reads an overridden tuple-of-names field given as a comma list as the names: ``maml,anil`` -> ``("maml", "anil")``.

  ml_collections reads ``--config.learners=maml,anil`` (and ``(maml,anil)``,
  which is no Python literal) as the one string ``"maml,anil"``. Changes
  ``config`` in place, for the overridden fields only.
  """
  overridden = {name for name, _ in _overrides(argv)}
  for name, value in fields(config).items():
    if name in overridden and isinstance(value, tuple) and len(value) == 1 and isinstance(value[0], str) and (
        "," in value[0] or value[0].startswith("(")):
      names = tuple(part.strip().strip("'\"") for part in value[0].strip("()[] ").split(","))
      target = config
      *parents, leaf = name.split(".")
      for parent in parents:
        target = target[parent]
      target[leaf] = tuple(part for part in names if part)


def unknown_fields_message(argv: list[str], spec: str) -> str | None:
  """``unknown config field --config.X; nearest: ...`` for the overrides in ``argv`` that ``spec``'s config lacks."""
  try:
    config = load_config(spec)[0]
  except Exception:  # the config's own error is reported instead
    return None
  known = list(fields(config))
  parents = {name.rsplit(".", 1)[0] for name in known if "." in name}
  unknown = [name for name, _ in _overrides(argv) if name not in known and name not in parents]
  if not unknown:
    return None
  parts = []
  for name in dict.fromkeys(unknown):
    nearest = difflib.get_close_matches(name, known, n=3, cutoff=0.5) or sorted(
        known, key=lambda k: -difflib.SequenceMatcher(None, name, k).ratio())[:3]
    parts.append(f"--config.{name} (nearest: {', '.join('--config.' + n for n in nearest)})")
  return f"unknown config field {'; '.join(parts)}; --help lists every field."


def _config_spec(argv: list[str], default: str) -> str:
  for i, arg in enumerate(argv):
    if arg == "--":
      break
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1]
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
  return default


def _flag_error(error: BaseException, argv: list[str], spec: str) -> str:
  """One line for a flag or config parsing error, with what to do."""
  try:
    load_config(spec)
  except USER_ERRORS as e:  # the config file itself: missing, an unknown preset
    return f"--config={spec}: {e}"
  except Exception:  # the config file's own failure: absl's message below carries it
    pass
  unknown = unknown_fields_message(argv, spec)
  if unknown:
    return unknown
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  message = lines[-1] if any("Traceback" in line for line in lines) else " ".join(lines)
  message = message or type(error).__name__
  return f"{message} (--help lists the flags and every config field)"


def run(train_and_evaluate: Callable[[ml_collections.ConfigDict, str], Any], config_file: str) -> None:
  """The absl entrypoint of a training script: flags, config, distributed start-up, one-line user errors.

  Flags: ``--config`` (a config file, ``FILE:PRESET``, fields overridden by
  ``--config.FIELD=VALUE``; every field must be declared in the file, a typo
  is refused naming the nearest fields; a tuple field may be given once),
  ``--workdir``, and for several processes ``--coordinator_address``,
  ``--num_processes``, ``--process_id`` (or ``--distributed`` alone on SLURM,
  Open MPI or a TPU pod, where JAX finds them), which call
  ``jax.distributed.initialize``. ``--help`` (``--helpshort``, ``--helpfull``)
  prints every config field with its default and its ``HELP`` line and exits 0.

  Flags are defined here, when the script runs, so that importing several
  scripts in one process defines no flag twice. A user error (``ValueError``,
  ``FileNotFoundError``, ``FloatingPointError``, ``OSError``: a bad value, a
  missing file, a full disk, a non-finite loss) ends the run with one line on
  stderr and exit status 1, not a traceback. The :func:`~metalax.training.base_config`
  fields the config has are validated before ``train_and_evaluate`` runs.

  Args:
    train_and_evaluate: ``train_and_evaluate(config, workdir)``.
    config_file: the default config file's path.

  Example:
    >>> if __name__ == "__main__":
    ...   metalax.training.run(train_and_evaluate, os.path.join(os.path.dirname(__file__), "config.py"))
  """
  from absl import app
  from absl import flags
  from ml_collections import config_flags

  argv = list(sys.argv)
  spec = _config_spec(argv, config_file)
  if any(arg in HELP_FLAGS for arg in argv[1:argv.index("--") if "--" in argv else len(argv)]):
    try:
      text = config_help(spec)
    except Exception as e:  # the config file's own failure, in one line
      user_error(f"cannot list the config fields of --config={spec}: {type(e).__name__}: {e}")
    sys.stdout.write(text)
    sys.stdout.flush()
    sys.exit(0)

  try:
    config_flag = config_flags.DEFINE_config_file(
        "config", config_file, "Experiment configuration (a config file, optionally FILE:PRESET); override "
        "fields with --config.FIELD=VALUE.", lock_config=True)
  except Exception as e:  # a config that fails to load or a typo, parsed at definition
    user_error(_flag_error(e, argv, spec))
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
      user_error(f"unexpected arguments {argv[1:]} (--help lists the flags and every config field)")
    if not workdir_flag.value:
      user_error("--workdir is required (where results, checkpoints and plots go; --help lists the flags).")
    quiet_orbax_logs()
    try:
      try:
        config = config_flag.value
        config.keys()
      except OSError as e:  # ml_collections defers a missing config file's error to here
        if not os.path.isfile(_split_spec(spec)[0]):
          raise FileNotFoundError(f"--config={spec}: no config file {_split_spec(spec)[0]!r}.") from None
        raise FileNotFoundError(f"cannot load the --config file: {str(e).split('Attempted')[-1].strip()}") from None
      config_lib.validate(config, {field: rule for field, rule in config_lib.RUN_RULES.items() if field in config})
      if distributed_flag.value or any(flag.value is not None for flag in (
          coordinator_flag, num_processes_flag, process_id_flag)):
        initialize_distributed(coordinator_flag.value, num_processes_flag.value, process_id_flag.value)
      train_and_evaluate(config, workdir_flag.value)
    except USER_ERRORS as e:
      user_error(str(e) or type(e).__name__, several_processes=jax.process_count() > 1)
    except jax.errors.JaxRuntimeError as e:
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      user_error(f"the device ran out of memory ({str(e).splitlines()[0]}). Use a smaller batch, model or image "
                 "size, or the entrypoint's memory options (--help; e.g. tasks_per_chunk); checkpoints "
                 "already written are kept.", several_processes=jax.process_count() > 1)

  def parse_flags(argv):
    try:
      parsed = flags.FLAGS(argv)
    except Exception as e:  # absl, ml_collections and the config file raise many types
      user_error(_flag_error(e, argv, spec))
    config = config_flag.value
    if isinstance(config, ml_collections.ConfigDict):  # else main reports why the file did not load
      try:
        check_repeated_overrides(argv, config)
      except ValueError as e:
        user_error(str(e))
      split_name_lists(argv, config)
    return parsed

  app.run(main, flags_parser=parse_flags)
