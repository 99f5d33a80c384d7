"""metalax.training.loop: exact resume, chunks aligned to checkpoints, orbax's best step, metric files, NaNs."""

import glob
import json
import math
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from metalax import training

KEY = jax.random.key(14)  # NaN at iterations 6, 9, 11, 15 (a checkpoint at 5 comes first)


def random_step(state, key, data):
  """A state that depends on every iteration's key and on the data: any mixed-up key or data shows."""
  noise = jax.random.normal(key, (3,))
  return {"w": state["w"] + 1.0, "b": state["b"] * 0.9 + noise + data}, {"loss": jnp.sum(state["b"] ** 2),
                                                                         "noise": noise[0]}


def counting_step(state, key, data):
  """Adds 1 to ``w``; the loss is NaN on iterations whose key draws True (about one in five)."""
  del data
  bad = jax.random.bernoulli(key, 0.2)
  return {"w": state["w"] + 1.0, "b": state["b"]}, {"loss": jnp.where(bad, jnp.nan, state["w"])}


def init_state(size=3):
  return {"w": jnp.zeros(()), "b": jnp.zeros(size)}


def bad_iterations(num_iterations):
  return [i for i in range(num_iterations) if bool(jax.random.bernoulli(jax.random.fold_in(KEY, i), 0.2))]


def loop(run_dir, step=counting_step, num_iterations=20, state=None, **kwargs):
  kwargs = {"steps_per_call": 5, "checkpoint_every": 5, "data": None, **kwargs}
  return training.train_loop(step, init_state() if state is None else state, key=KEY,
                             num_iterations=num_iterations, run_dir=str(run_dir), desc="test", **kwargs)


def steps_of(run_dir):
  return [r["step"] for r in training.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))]


def test_chunks_end_at_every_multiple_of_every():
  assert training.chunks(0, 10, 4) == [(0, 4), (4, 4), (8, 2)]
  assert [b + n for b, n in training.chunks(0, 1000, 100, every=250)] == [
      100, 200, 250, 350, 450, 500, 600, 700, 750, 850, 950, 1000]
  assert training.chunks(250, 600, 100, every=250) == [(250, 100), (350, 100), (450, 50), (500, 100)]
  assert training.chunks(7, 7, 5) == []
  for start, stop, size, every in [(0, 97, 7, 10), (13, 200, 50, 30), (0, 5, 10, 1)]:
    pieces = training.chunks(start, stop, size, every=every)
    ends = [b + n for b, n in pieces]
    assert [b for b, _ in pieces] == [start] + ends[:-1] and ends[-1] == stop
    assert all(0 < n <= size for _, n in pieces)
    assert set(range(every * (start // every + 1), stop + 1, every)) <= set(ends)


def test_validation_at_every_multiple_of_checkpoint_every_with_one_compiled_program(tmp_path):
  traces, calls = [], []

  def traced_step():  # a new function each time, so no trace is cached across runs
    def step(state, key, data):
      traces.append(1)
      return random_step(state, key, data)
    return step

  def on_checkpoint(state, iteration):
    calls.append(iteration)
    assert float(state["w"]) == iteration  # the state as of this iteration, not a chunk later
    return {"score": float(iteration)}

  loop(tmp_path / "a", step=traced_step(), num_iterations=25, steps_per_call=4, checkpoint_every=10,
       on_checkpoint=on_checkpoint, data=jnp.float32(0.5))
  assert calls == [10, 20, 25]
  assert steps_of(tmp_path / "a") == [4, 8, 10, 14, 18, 20, 24, 25]  # chunks of 4, 2 and 1: one program
  records = training.read_jsonl(tmp_path / "a" / "metrics.jsonl")
  assert [r["step"] for r in records if "score" in r] == [10, 20, 25]
  aligned_traces = len(traces)
  traces.clear()
  loop(tmp_path / "b", step=traced_step(), num_iterations=8, steps_per_call=4, checkpoint_every=4, data=jnp.float32(0.5))
  assert aligned_traces == len(traces)  # three chunk lengths traced as often as one


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
  data = jnp.float32(0.25)
  full = loop(tmp_path / "full", step=random_step, data=data, num_iterations=20, steps_per_call=3)

  def crash_at_15(state, iteration):
    if iteration == 15:
      raise KeyboardInterrupt
    return {}

  with pytest.raises(KeyboardInterrupt):
    loop(tmp_path / "cut", step=random_step, data=data, num_iterations=20, steps_per_call=3,
         on_checkpoint=crash_at_15)
  assert steps_of(tmp_path / "cut") == [3, 5, 8, 10, 13]  # the crash came before the record of 15
  with open(tmp_path / "cut" / "metrics.jsonl", "a") as f:
    f.write('{"step": 1')  # a line cut short
  resumed = loop(tmp_path / "cut", step=random_step, data=data, num_iterations=20, steps_per_call=3)
  for name in ("w", "b"):
    np.testing.assert_array_equal(np.asarray(resumed[name]), np.asarray(full[name]))
  full_records = training.read_jsonl(tmp_path / "full" / "metrics.jsonl")
  assert training.read_jsonl(tmp_path / "cut" / "metrics.jsonl") == full_records
  assert [r["step"] for r in full_records] == [3, 5, 8, 10, 13, 15, 18, 20]


def test_the_state_passed_in_stays_usable(tmp_path):
  state = init_state()  # e.g. initial parameters that two runs share
  final = loop(tmp_path, step=random_step, data=jnp.float32(0.0), state=state, num_iterations=5)
  assert float(final["w"]) == 5
  assert not state["b"].is_deleted() and float(state["w"]) == 0


def test_orbax_keeps_the_latest_and_the_best_step_and_restore_best_returns_it(tmp_path):
  scores = {5: 0.2, 10: 0.9, 15: math.nan, 20: 0.5, 25: 0.4, 30: 0.3}

  def validate(state, iteration):
    return {"accuracy": scores[iteration]}

  loop(tmp_path, on_checkpoint=validate, best_metric="accuracy", num_iterations=20, on_nan="skip")
  loop(tmp_path, on_checkpoint=validate, best_metric="accuracy", num_iterations=30, on_nan="skip")  # resumed
  steps = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
  assert steps == [10, 25, 30]  # the best (a NaN never ranks best) and the two latest
  state, step, metrics = training.restore_best(str(tmp_path), init_state())
  assert step == 10 and metrics["accuracy"] == 0.9
  assert float(state["w"]) == 10 - len(bad_iterations(10))
  records = {r["step"]: r for r in training.read_jsonl(tmp_path / "metrics.jsonl")}
  assert metrics["loss"] == records[10]["loss"]  # the chunk's training means are saved with it

  loop(tmp_path / "min", best_metric="loss", best_mode="min", num_iterations=15, on_nan="skip")
  _, step, metrics = training.restore_best(str(tmp_path / "min"), init_state())
  losses = {r["step"]: r["loss"] for r in training.read_jsonl(tmp_path / "min" / "metrics.jsonl")}
  assert step == min(losses, key=losses.get) and metrics["loss"] == min(losses.values())


def test_best_metric_errors(tmp_path):
  with pytest.raises(ValueError, match="best_metric='accuracy' is not among the metrics at iteration 5: loss"):
    loop(tmp_path / "a", best_metric="accuracy", num_iterations=5, on_nan="skip")
  loop(tmp_path / "b", num_iterations=5, on_nan="skip")
  with pytest.raises(ValueError, match="saved without a best_metric"):
    training.restore_best(str(tmp_path / "b"), init_state())
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    training.restore_best(str(tmp_path / "none"), init_state())
  loop(tmp_path / "c", best_metric="loss", best_mode="min", num_iterations=5, on_nan="skip")
  with pytest.raises(ValueError, match="ranked by loss \\(min\\), not loss \\(max\\)"):
    loop(tmp_path / "c", best_metric="loss", best_mode="max", num_iterations=10, on_nan="skip")
  with pytest.raises(ValueError, match="ranked by loss \\(min\\); pass best_metric='loss', best_mode='min'"):
    loop(tmp_path / "c", num_iterations=10, on_nan="skip")
  for name, value in (("num_iterations", 0), ("steps_per_call", 1.5), ("checkpoint_every", True)):
    with pytest.raises(ValueError, match=f"{name} must be an int >= 1"):
      loop(tmp_path / "d", **{"num_iterations": 5, name: value})


def read_events(run_dir):
  """``{tag: {step: value}}`` from the TensorBoard event files of ``run_dir/tb`` (TFRecord framing)."""
  scalars = {}
  for path in sorted(glob.glob(os.path.join(run_dir, "tb", "events.*"))):
    with open(path, "rb") as f:
      blob = f.read()
    offset = 0
    while offset + 12 <= len(blob):
      (length,) = struct.unpack("<Q", blob[offset:offset + 8])
      event = event_pb2.Event.FromString(blob[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for value in event.summary.value:
        scalars.setdefault(value.tag, {})[event.step] = value.simple_value
  return scalars


def test_training_and_evaluation_metrics_reach_jsonl_and_tensorboard(tmp_path):
  loop(tmp_path, step=random_step, data=jnp.float32(0.0), num_iterations=10, steps_per_call=2,
       on_checkpoint=lambda state, iteration: {"validation_accuracy": iteration / 100})
  records = training.read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in records] == [2, 4, 5, 7, 9, 10]
  assert [r.get("validation_accuracy") for r in records] == [None, None, 0.05, None, None, 0.1]
  events = read_events(str(tmp_path))
  assert set(events) == {"loss", "noise", "validation_accuracy"}
  assert events["validation_accuracy"] == pytest.approx({5: 0.05, 10: 0.1})
  assert events["loss"] == pytest.approx({r["step"]: r["loss"] for r in records})
  # The chunk's metrics are means over its iterations: here the mean noise of iterations 0 and 1.
  noise = [float(jax.random.normal(jax.random.fold_in(KEY, i), (3,))[0]) for i in range(2)]
  assert records[0]["noise"] == pytest.approx(np.mean(noise), rel=1e-6)


def test_metric_writer_truncates_on_resume(tmp_path):
  writer = training.MetricWriter(str(tmp_path))
  for step in (1, 2, 3):
    writer.write(step, {"loss": float(step), "note": "text is kept in JSONL only"})
  writer.close()
  writer = training.MetricWriter(str(tmp_path), start=2)
  writer.write(3, {"loss": 30.0})
  writer.close()
  assert [(r["step"], r["loss"]) for r in training.read_jsonl(tmp_path / "metrics.jsonl")] == [
      (1, 1.0), (2, 2.0), (3, 30.0)]
  assert read_events(str(tmp_path))["loss"][3] == 30.0


def test_nan_stops_naming_the_iteration_and_keeps_the_last_good_checkpoint(tmp_path):
  first = bad_iterations(20)[0]
  assert first >= 5, "the test needs a checkpoint before the first NaN"
  with pytest.raises(FloatingPointError, match=f"at iteration {first} "):
    loop(tmp_path)
  good = first // 5 * 5
  state = training.restore_latest(str(tmp_path / "checkpoints"), init_state(), "test")
  assert float(state["w"]) == good  # every saved state is finite and as of its step
  assert steps_of(tmp_path) == list(range(5, good + 1, 5))


def test_nan_skip_discards_exactly_the_bad_iterations(tmp_path):
  bad = bad_iterations(20)
  state = loop(tmp_path, on_nan="skip")
  assert float(state["w"]) == 20 - len(bad)
  records = training.read_jsonl(tmp_path / "metrics.jsonl")
  assert sum(r["skipped"] for r in records) == len(bad)
  assert all(np.isfinite(r["loss"]) for r in records)


def test_every_iteration_skipped_is_an_error(tmp_path):
  def always_nan(state, key, data):
    return state, {"loss": jnp.array(jnp.nan)}

  with pytest.raises(FloatingPointError, match="every iteration was not finite"):
    training.train_loop(always_nan, {"w": jnp.zeros(())}, data=None, key=KEY, num_iterations=5, steps_per_call=5,
                        checkpoint_every=5, run_dir=str(tmp_path), desc="test", on_nan="skip")
  with pytest.raises(ValueError, match="on_nan must be stop or skip"):
    loop(tmp_path, on_nan="ignore")


def test_jsonl_records_survive_json_round_trip(tmp_path):
  path = str(tmp_path / "m.jsonl")
  training.append_jsonl(path, {"step": 1, "loss": np.float32(0.5), "name": "a"})
  assert json.loads(open(path).read()) == {"step": 1, "loss": 0.5, "name": "a"}
