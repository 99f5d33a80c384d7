"""experiments.common: non-finite losses, checkpoints of other models, damaged checkpoints, full disks, the CLI."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from experiments import common

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY = jax.random.key(14)  # NaN at iterations 6, 9, 11, 15 (a checkpoint at 5 comes first)


def counting_step(state, key, data):
  """Adds 1 to ``w``; the loss is NaN on iterations whose key draws True (about one in five)."""
  del data
  bad = jax.random.bernoulli(key, 0.2)
  loss = jnp.where(bad, jnp.nan, state["w"])
  return {"w": state["w"] + 1.0, "b": state["b"]}, {"loss": loss}


def bad_iterations(num_iterations):
  return [i for i in range(num_iterations) if bool(jax.random.bernoulli(jax.random.fold_in(KEY, i), 0.2))]


def loop(run_dir, num_iterations=20, state=None, **kwargs):
  state = {"w": jnp.zeros(()), "b": jnp.zeros(3)} if state is None else state
  return common.train_loop(counting_step, state, data=None, key=KEY, num_iterations=num_iterations,
                           steps_per_call=5, checkpoint_every=5, run_dir=str(run_dir), desc="test", **kwargs)


def test_nan_stops_naming_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path):
  first = bad_iterations(20)[0]
  assert first >= 5, "the test needs a checkpoint before the first NaN"
  with pytest.raises(FloatingPointError, match=f"at iteration {first} "):
    loop(tmp_path)
  manager = common.checkpoint_manager(str(tmp_path / "checkpoints"))
  good = first // 5 * 5
  assert manager.latest_step() == good
  restored = manager.restore(good)
  assert float(restored["w"]) == good  # every saved state is finite and as of its step
  steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
  assert steps == list(range(5, good + 1, 5))


def test_nan_skip_discards_exactly_the_bad_iterations(tmp_path):
  bad = bad_iterations(20)
  state = loop(tmp_path, on_nan="skip")
  assert float(state["w"]) == 20 - len(bad)
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert sum(r["skipped"] for r in records) == len(bad)
  assert all(np.isfinite(r["loss"]) for r in records)


def test_every_iteration_skipped_is_an_error(tmp_path):
  def always_nan(state, key, data):
    return state, {"loss": jnp.array(jnp.nan)}

  with pytest.raises(FloatingPointError, match="every iteration was not finite"):
    common.train_loop(always_nan, {"w": jnp.zeros(())}, data=None, key=KEY, num_iterations=5, steps_per_call=5,
                      checkpoint_every=5, run_dir=str(tmp_path), desc="test", on_nan="skip")


def test_checkpoint_of_another_model_is_one_clear_error(tmp_path):
  loop(tmp_path, on_nan="skip", num_iterations=5)
  with pytest.raises(ValueError, match=r"different model.*another shape \(b: checkpoint \(3,\), now \(4,\)"):
    loop(tmp_path, state={"w": jnp.zeros(()), "b": jnp.zeros(4)}, on_nan="skip")
  with pytest.raises(ValueError, match=r"different model.*missing from the checkpoint \(e.g. c\)"):
    loop(tmp_path, state={"w": jnp.zeros(()), "b": jnp.zeros(3), "c": jnp.zeros(1)}, on_nan="skip")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's reader thread
def test_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path):
  loop(tmp_path, on_nan="skip", num_iterations=10)
  damaged = tmp_path / "checkpoints" / "10" / "default"
  for root, _, files in os.walk(damaged):
    for name in files:
      if not name.startswith("_"):  # keep orbax's metadata, remove the array data
        os.remove(os.path.join(root, name))
  manager = common.checkpoint_manager(str(tmp_path / "checkpoints"))
  state, step = common.restore_or_init(manager, {"w": jnp.zeros(()), "b": jnp.zeros(3)})
  assert step == 5 and float(state["w"]) == 5 - len([i for i in bad_iterations(5)])
  assert os.path.isdir(damaged)  # nothing deleted


def test_resume_drops_metrics_recorded_after_the_checkpoint(tmp_path):
  loop(tmp_path, on_nan="skip", num_iterations=10)
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 15, "loss": 1.0}\n{"step": 2')  # written after the last checkpoint, then killed mid-line
  loop(tmp_path, on_nan="skip", num_iterations=15)
  steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
  assert steps == [5, 10, 15]


def test_full_disk_fails_at_start(tmp_path):
  with pytest.raises(ValueError, match="MiB free"):
    common.prepare_workdir(str(tmp_path / "run"), min_free_mb=1e15)


def test_run_settings_defaults_and_checks():
  assert common.run_settings(ml_collections.ConfigDict({"seed": 0})) == common.RUN_DEFAULTS
  for field, value in (("on_nan", "ignore"), ("precision", "float64"), ("num_devices", -1)):
    with pytest.raises(ValueError, match=field):
      common.run_settings(ml_collections.ConfigDict({field: value}))
  with pytest.raises(ValueError, match="cannot be split evenly across 2 devices"):
    common.parallel.shard_batch(jnp.zeros((3, 2)), FakeMesh())


class FakeMesh:
  """Stands for a mesh of two devices (the uneven split is found before any device is used)."""
  shape = {common.parallel.DATA_AXIS: 2}


def run_sinusoid(workdir, *overrides):
  tiny = ["--config.learners=maml", "--config.hidden=(8,8)", "--config.num_iterations=20",
          "--config.steps_per_call=10", "--config.checkpoint_every=10", "--config.num_eval_tasks=10",
          "--config.eval_steps=1"]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "experiments.sinusoid", f"--workdir={workdir}", *tiny, *overrides],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("overrides, message", [
    (["--config.num_shot=5"], "unknown config field(s) --config.num_shot; the fields are"),
    (["--config.tasks_per_chunk=7"], "--config.tasks_per_chunk must be 0 (whole batch) or a divisor of "
                                     "meta_batch_size=25, got 7"),
    (["--config.outer_lr=1e30"], "not finite (NaN or Inf) at iteration"),
])
def test_cli_user_error_is_one_line_without_traceback(tmp_path, overrides, message):
  result = run_sinusoid(tmp_path / "run", *overrides)
  assert result.returncode == 1
  errors = [line for line in result.stderr.splitlines() if line.startswith("sinusoid: error:")]
  assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr


def test_sinusoid_trains_in_task_chunks(tmp_path):
  result = run_sinusoid(tmp_path / "run", "--config.tasks_per_chunk=5")
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.load(open(tmp_path / "run" / "run.json"))["config"]["tasks_per_chunk"] == 5
