"""Run settings every experiment shares, and one validation of config fields.

:func:`base_config` holds the run settings with their defaults; an
experiment's config file starts from it and adds its own fields, so every
field is declared and ``lock_config=True`` catches a typo. Validation is one
call per config, :func:`validate` with a rule per field, so each field is
checked once, up front, with one message form: ``--config.FIELD must be ...,
got VALUE.`` Counts that can be switched off (``tasks_per_chunk``,
``num_devices``) use 0 for "off" or "all", never None.
"""

import math
from typing import Any, Mapping, Sequence

import jax
import ml_collections

from metalax import parallel

HELP = {
    "seed": "Seed of every random draw (initialisation, data, evaluation).",
    "num_devices": "Devices the batch is split across: 0 for all of them, 1 for no sharding.",
    "precision": "Compute dtype of the training objective: float32 | bfloat16 (parameters stay float32).",
    "on_nan": "A non-finite loss: stop (keeping the last good checkpoint) | skip the iteration.",
    "num_iterations": "Training iterations in all; raise it and rerun in the same --workdir to train longer.",
    "steps_per_call": "Iterations fused into one jitted call (fewer calls are faster, the progress bar coarser).",
    "checkpoint_every": "Save a checkpoint (and evaluate, where the experiment does) every this many iterations.",
    "allow_changes": "Config fields a resumed run may change from the run that wrote its checkpoints "
                     "(a tuple or comma list, e.g. seed,outer_lr).",
    "data_dir": "Directory of the datasets ('' for the default of each dataset).",
    "download": "Download a dataset that is not in data_dir.",
}
"""One line describing each :func:`base_config` field (``--help`` lists them with the experiment's own)."""

PRECISIONS = ("float32", "bfloat16")
ON_NAN = ("stop", "skip")


def base_config() -> ml_collections.ConfigDict:
  """The run settings every experiment shares, with their defaults (see :data:`HELP`).

  Example:
    >>> def get_config(preset=""):
    ...   config = metalax.training.base_config()
    ...   config.outer_lr = 1e-3
    ...   return config
  """
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.num_devices = 0
  config.precision = "float32"
  config.on_nan = "stop"
  config.num_iterations = 1000
  config.steps_per_call = 100
  config.checkpoint_every = 500
  config.allow_changes = ()
  config.data_dir = ""
  config.download = True
  return config


def _get(config: Any, field: str) -> Any:
  value = config
  for part in field.split("."):
    try:
      value = value[part]
    except (KeyError, TypeError):
      raise ValueError(f"--config.{field} is missing from the config.") from None
  return value


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fail(field: str, expected: str, value: Any) -> None:
  raise ValueError(f"--config.{field} must be {expected}, got {value!r}.")


def check_positive_int(config: Any, *fields: str) -> None:
  """Raises ValueError unless each field is an int >= 1."""
  for field in fields:
    value = _get(config, field)
    if not _is_int(value) or value < 1:
      _fail(field, "an int >= 1", value)


def check_nonnegative_int(config: Any, *fields: str) -> None:
  """Raises ValueError unless each field is an int >= 0 (0 meaning off, or all)."""
  for field in fields:
    value = _get(config, field)
    if not _is_int(value) or value < 0:
      _fail(field, "an int >= 0", value)


def check_positive_float(config: Any, *fields: str) -> None:
  """Raises ValueError unless each field is a finite number > 0 (learning rates, temperatures)."""
  for field in fields:
    value = _get(config, field)
    if not _is_number(value) or value <= 0:
      _fail(field, "a finite number > 0", value)


def check_nonnegative_float(config: Any, *fields: str) -> None:
  """Raises ValueError unless each field is a finite number >= 0 (weight decays, regularisers)."""
  for field in fields:
    value = _get(config, field)
    if not _is_number(value) or value < 0:
      _fail(field, "a finite number >= 0", value)


def check_fraction(config: Any, *fields: str) -> None:
  """Raises ValueError unless each field is a number in [0, 1) (dropout rates, probabilities of dropping)."""
  for field in fields:
    value = _get(config, field)
    if not _is_number(value) or not 0 <= value < 1:
      _fail(field, "a number in [0, 1)", value)


def check_choice(config: Any, field: str, choices: Sequence[Any]) -> None:
  """Raises ValueError unless the field is one of ``choices``."""
  value = _get(config, field)
  if value not in tuple(choices):
    _fail(field, "one of " + " | ".join(str(c) for c in choices), value)


def check_positive_ints(config: Any, *fields: str) -> None:
  """Raises ValueError unless each field is a non-empty tuple of ints >= 1 (layer widths, step counts)."""
  for field in fields:
    value = _get(config, field)
    if not isinstance(value, (tuple, list)) or not value or not all(_is_int(v) and v >= 1 for v in value):
      _fail(field, "a non-empty tuple of ints >= 1, e.g. (40,40)", value)


def check_positive_floats(config: Any, *fields: str) -> None:
  """Raises ValueError unless each field is a non-empty tuple of finite numbers > 0 (learning-rate grids)."""
  for field in fields:
    value = _get(config, field)
    if not isinstance(value, (tuple, list)) or not value or not all(_is_number(v) and v > 0 for v in value):
      _fail(field, "a non-empty tuple of numbers > 0, e.g. (0.01,0.1)", value)


def check_divisor(config: Any, field: str, of: str) -> None:
  """Raises ValueError unless the field is 0 (off) or an int >= 1 dividing the field ``of``."""
  value, total = _get(config, field), _get(config, of)
  if not _is_int(value) or value < 0 or (value and total % value):
    _fail(field, f"0 (off) or a divisor of {of}={total}", value)


RULES = {
    "positive_int": check_positive_int,
    "nonnegative_int": check_nonnegative_int,
    "positive_float": check_positive_float,
    "nonnegative_float": check_nonnegative_float,
    "fraction": check_fraction,
    "positive_ints": check_positive_ints,
    "positive_floats": check_positive_floats,
}
"""The named rules of :func:`validate`."""


def validate(config: Any, rules: Mapping[str, Any]) -> None:
  """Checks each field of ``config`` against its rule, in order, raising at the first that fails.

  Args:
    config: a config (``ConfigDict`` or dict); nested fields by dotted names.
    rules: field name -> a rule name of :data:`RULES` (``"positive_int"``,
      ``"nonnegative_int"``, ``"positive_float"``, ``"nonnegative_float"``,
      ``"fraction"``, ``"positive_ints"``, ``"positive_floats"``), a tuple of
      allowed values, or ``("divisor", OTHER_FIELD)``.

  Raises:
    ValueError: ``--config.FIELD must be ..., got VALUE.`` for the first field that fails.

  Example:
    >>> validate(config, {"outer_lr": "positive_float", "num_shots": "positive_int",
    ...                   "lr_schedule": ("constant", "step", "cosine"),
    ...                   "tasks_per_chunk": ("divisor", "meta_batch_size")})
  """
  for field, rule in rules.items():
    if isinstance(rule, str):
      if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r} for {field}; the rules are {', '.join(RULES)}.")
      RULES[rule](config, field)
    elif isinstance(rule, tuple) and len(rule) == 2 and rule[0] == "divisor":
      check_divisor(config, field, rule[1])
    else:
      check_choice(config, field, rule)


RUN_RULES = {
    "seed": "nonnegative_int", "num_devices": "nonnegative_int", "precision": PRECISIONS, "on_nan": ON_NAN,
    "num_iterations": "nonnegative_int", "steps_per_call": "positive_int", "checkpoint_every": "positive_int",
    "download": (True, False)}
"""The :func:`validate` rules of the :func:`base_config` fields."""


def run_settings(config: Any) -> dict[str, Any]:
  """The :func:`base_config` fields of ``config``, validated.

  Returns:
    ``{field: value}`` for every :func:`base_config` field.

  Raises:
    ValueError: for a missing field or a value that cannot work.
  """
  validate(config, RUN_RULES)
  for field in ("allow_changes", "data_dir"):
    _get(config, field)
  return {field: _get(config, field) for field in HELP}


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
  check_nonnegative_int(config, "num_devices")
  mesh = parallel.data_mesh(_get(config, "num_devices"))
  size = mesh.shape[parallel.DATA_AXIS]
  if batch_size is not None and batch_size % size:
    raise ValueError(f"a batch of {batch_size} cannot be split evenly across {size} devices; set "
                     f"--config.num_devices to a divisor of {batch_size} (1 for no sharding) or change the batch.")
  return mesh if size > 1 else None
