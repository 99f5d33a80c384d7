"""metalax.training.config: the shared run settings, one validation with one message form, the mesh."""

import ml_collections
import pytest

from metalax import training


def test_base_config_fields_defaults_and_help():
  config = training.base_config()
  assert config.to_dict() == {
      "seed": 0, "num_devices": 0, "precision": "float32", "on_nan": "stop", "num_iterations": 1000,
      "steps_per_call": 100, "checkpoint_every": 500, "allow_changes": (), "data_dir": "", "download": True}
  assert set(training.HELP) == set(config.keys())
  assert all(line and "\n" not in line for line in training.HELP.values())
  assert training.run_settings(config) == config.to_dict()


@pytest.mark.parametrize("field, value, expected", [
    ("on_nan", "ignore", "one of stop | skip"),
    ("precision", "float64", "one of float32 | bfloat16"),
    ("num_devices", -1, "an int >= 0"),
    ("seed", 1.5, "an int >= 0"),
    ("num_iterations", -1, "an int >= 0"),
    ("steps_per_call", True, "an int >= 1"),
    ("checkpoint_every", -5, "an int >= 1"),
])
def test_run_settings_refuse_each_bad_value_naming_the_field(field, value, expected):
  config = training.base_config().to_dict()
  config[field] = value
  with pytest.raises(ValueError) as error:
    training.run_settings(config)
  assert str(error.value) == f"--config.{field} must be {expected}, got {value!r}."


def test_run_settings_needs_every_field():
  with pytest.raises(ValueError, match="--config.num_devices is missing from the config"):
    training.run_settings(ml_collections.ConfigDict({"seed": 0}))


def test_validate_rules():
  config = ml_collections.ConfigDict({
      "outer_lr": 1e-3, "num_shots": 5, "tasks_per_chunk": 5, "meta_batch_size": 25, "dropout": 0.1,
      "hidden": (40, 40), "lr_grid": (0.01, 0.1), "weight_decay": 0.0, "schedule": "cosine", "off": 0,
      "model": {"width": 8}})
  rules = {"outer_lr": "positive_float", "num_shots": "positive_int", "tasks_per_chunk": ("divisor", "meta_batch_size"),
           "dropout": "fraction", "hidden": "positive_ints", "lr_grid": "positive_floats",
           "weight_decay": "nonnegative_float", "schedule": ("constant", "step", "cosine"), "off": "nonnegative_int",
           "model.width": "positive_int"}
  training.validate(config, rules)
  bad = [("outer_lr", -1e-3, "a finite number > 0"), ("outer_lr", 0.0, "a finite number > 0"),
         ("outer_lr", float("nan"), "a finite number > 0"), ("num_shots", 0, "an int >= 1"),
         ("tasks_per_chunk", 7, "0 (off) or a divisor of meta_batch_size=25"),
         ("tasks_per_chunk", -5, "0 (off) or a divisor of meta_batch_size=25"),
         ("dropout", 1.0, "a number in [0, 1)"), ("hidden", (), "a non-empty tuple of ints >= 1, e.g. (40,40)"),
         ("hidden", (8, 0), "a non-empty tuple of ints >= 1, e.g. (40,40)"),
         ("lr_grid", (), "a non-empty tuple of numbers > 0, e.g. (0.01,0.1)"),
         ("weight_decay", -0.1, "a finite number >= 0"), ("schedule", "linear", "one of constant | step | cosine"),
         ("off", -1, "an int >= 0"), ("model.width", 0, "an int >= 1")]
  for field, value, expected in bad:
    changed = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
    changed.update_from_flattened_dict({field: value})
    with pytest.raises(ValueError) as error:
      training.validate(changed, rules)
    assert str(error.value) == f"--config.{field} must be {expected}, got {value!r}.", field
  changed = ml_collections.ConfigDict(config.to_dict(), type_safe=False)
  changed.tasks_per_chunk = 0  # 0 is "off", the one convention for switchable counts
  training.validate(changed, rules)
  with pytest.raises(ValueError, match="unknown rule 'positive'"):
    training.validate(config, {"num_shots": "positive"})
  training.check_positive_int(config, "num_shots", "meta_batch_size")
  training.check_choice(config, "schedule", ("cosine",))


def test_make_mesh():
  config = training.base_config()
  assert training.make_mesh(config, batch_size=3) is None  # one device: no mesh
  config.num_devices = 1
  assert training.make_mesh(config) is None
  config.num_devices = 64
  with pytest.raises(ValueError, match="num_devices=64 but there are only"):
    training.make_mesh(config)
