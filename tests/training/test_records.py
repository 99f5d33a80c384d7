"""metalax.training.records and stats: resume checks of the config, kill-safe files, the workdir, statistics."""

import json
import math
import os

import ml_collections
import numpy as np
import pytest

from metalax import training
from metalax.training import records


def make_config(**overrides):
  config = training.base_config()
  config.outer_lr = 1e-3
  config.lr_schedule = "constant"
  config.model = ml_collections.ConfigDict({"name": "mlp", "hidden": (8, 8)})
  config.update_from_flattened_dict({k.replace("__", "."): v for k, v in overrides.items()})
  return config


def add_checkpoint(workdir, sub="learner/checkpoints/5"):
  """A finished orbax step as check_resume finds one (its ``_CHECKPOINT_METADATA``)."""
  os.makedirs(os.path.join(workdir, sub))
  open(os.path.join(workdir, sub, "_CHECKPOINT_METADATA"), "w").close()


def test_check_resume_refuses_another_config_in_one_line_unless_allowed(tmp_path):
  workdir = str(tmp_path)
  training.check_resume(workdir, make_config())
  training.check_resume(workdir, make_config(seed=3))  # no checkpoint yet: nothing to mix, recorded anew
  assert json.load(open(tmp_path / "config.json"))["seed"] == 3
  add_checkpoint(workdir)
  training.check_resume(workdir, make_config(seed=3))  # the same config resumes
  with pytest.raises(ValueError) as error:
    training.check_resume(workdir, make_config(seed=4, outer_lr=0.01, model__hidden=(16,)))
  message = str(error.value)
  assert "\n" not in message
  assert ("another config (model.hidden: [8, 8] -> [16]; outer_lr: 0.001 -> 0.01; seed: 3 -> 4); resume with the "
          "same config, use another --workdir, or accept the change with "
          "--config.allow_changes=model.hidden,outer_lr,seed.") in message
  training.check_resume(workdir, make_config(seed=4), allow_changes=("seed",))
  assert json.load(open(tmp_path / "config.json"))["seed"] == 4  # the accepted change is recorded
  training.check_resume(workdir, make_config(seed=4, outer_lr=0.01, allow_changes=("outer_lr,model.hidden",),
                                             model__hidden=(16,)))
  assert json.load(open(tmp_path / "config.json"))["outer_lr"] == 0.01


def test_check_resume_lets_num_iterations_grow_unless_it_shapes_the_schedule(tmp_path):
  workdir = str(tmp_path)
  training.check_resume(workdir, make_config(num_iterations=100))
  add_checkpoint(workdir, "checkpoints/100")
  # Fields that do not change what is trained, and num_iterations under a constant schedule, need no opt-in.
  training.check_resume(workdir, make_config(num_iterations=200, steps_per_call=7, num_devices=1))
  cosine = str(tmp_path / "cosine")
  training.check_resume(cosine, make_config(num_iterations=100, lr_schedule="cosine"))
  add_checkpoint(cosine, "checkpoints/100")
  with pytest.raises(ValueError, match=r"num_iterations: 100 -> 200\) \(num_iterations shapes "
                                       r"lr_schedule='cosine'\).*allow_changes=num_iterations\."):
    training.check_resume(cosine, make_config(num_iterations=200, lr_schedule="cosine"))
  training.check_resume(cosine, make_config(num_iterations=200, lr_schedule="cosine"),
                        allow_changes="num_iterations")


def test_check_resume_names_an_unreadable_record(tmp_path):
  training.check_resume(str(tmp_path), make_config())
  add_checkpoint(str(tmp_path))
  (tmp_path / "config.json").write_text("{")
  with pytest.raises(ValueError, match="cannot read the config recorded with the checkpoints"):
    training.check_resume(str(tmp_path), make_config())


class Killed(BaseException):
  """Stands for SIGKILL arriving at a given instant (BaseException: nothing catches it)."""


def kill_at(monkeypatch, module, name):
  def killed(*args, **kwargs):
    raise Killed
  monkeypatch.setattr(module, name, killed)


@pytest.mark.parametrize("instant", ["fsync", "replace"])
def test_every_whole_file_is_either_old_or_new_after_a_kill(tmp_path, monkeypatch, instant):
  """run.json, config.json, metrics.jsonl truncation and results (write_json): a kill mid-write keeps the old."""
  workdir = str(tmp_path)
  training.write_run_info(workdir, make_config())
  training.check_resume(workdir, make_config())
  training.write_json(str(tmp_path / "results.json"), {"accuracy": 0.5})
  for step in (1, 2, 3):
    training.append_jsonl(str(tmp_path / "metrics.jsonl"), {"step": step, "loss": 1.0})
  before = {name: open(tmp_path / name).read() for name in ("run.json", "config.json", "results.json",
                                                             "metrics.jsonl")}
  add_checkpoint(workdir)
  with monkeypatch.context() as patch:
    kill_at(patch, os, instant)
    with pytest.raises(Killed):
      training.write_run_info(workdir, make_config(seed=1))
    with pytest.raises(Killed):
      training.check_resume(workdir, make_config(seed=1), allow_changes=("seed",))
    with pytest.raises(Killed):
      training.write_json(str(tmp_path / "results.json"), {"accuracy": 0.9})
    with pytest.raises(Killed):
      training.truncate_jsonl(str(tmp_path / "metrics.jsonl"), 1)
  after = {name: open(tmp_path / name).read() for name in before}
  assert after == before
  kept = [name for name in os.listdir(tmp_path) if name.startswith("run.") and name != "run.json"]
  assert all(open(tmp_path / name).read() == before["run.json"] for name in kept)
  assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]  # no temporary file left behind


def test_run_info_keeps_the_earlier_record(tmp_path):
  training.write_run_info(str(tmp_path), make_config())
  training.write_run_info(str(tmp_path), make_config(seed=1))
  names = sorted(os.listdir(tmp_path))
  assert len(names) == 2 and "run.json" in names
  assert json.load(open(tmp_path / "run.json"))["config"]["seed"] == 1
  info = json.load(open(tmp_path / [n for n in names if n != "run.json"][0]))
  assert info["config"]["seed"] == 0 and info["config"]["model"]["hidden"] == [8, 8]
  assert {"argv", "versions", "devices", "git", "jax_config"} <= set(info)


def test_jsonl_line_cut_short_is_dropped(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  for step in (5, 10):
    training.append_jsonl(path, {"step": step, "loss": np.float32(step / 10), "name": "x"})
  with open(path, "a") as f:
    f.write('{"step": 15, "lo')  # a full disk cut the line
  assert training.read_jsonl(path) == [{"step": 5, "loss": 0.5, "name": "x"}, {"step": 10, "loss": 1.0, "name": "x"}]
  training.truncate_jsonl(path, 5)
  assert open(path).read() == '{"step": 5, "loss": 0.5, "name": "x"}\n'
  training.truncate_jsonl(str(tmp_path / "missing.jsonl"), 5)  # nothing to do


def test_prepare_workdir(tmp_path):
  assert training.prepare_workdir(str(tmp_path / "a" / "b")) == str(tmp_path / "a" / "b")
  with pytest.raises(ValueError, match="MiB free"):
    training.prepare_workdir(str(tmp_path / "run"), min_free_mb=1e15)
  (tmp_path / "file").write_text("")
  with pytest.raises(ValueError, match="is not a writable directory"):
    training.prepare_workdir(str(tmp_path / "file"))
  with pytest.raises(ValueError, match="--workdir must name a directory"):
    training.prepare_workdir("")


def test_allowed_changes_reads_tuples_and_comma_lists():
  assert records.allowed_changes(("a", "b,c ", "")) == ("a", "b", "c")
  assert records.allowed_changes("seed,outer_lr") == ("seed", "outer_lr")
  assert records.allowed_changes(()) == ()


def test_mean_and_interval_matches_the_formula():
  values = np.array([[1.0, 2.0, 4.0, 7.0], [0.5, 0.5, 0.5, 0.5]])
  mean, interval = training.mean_and_interval(values)
  for row, m, h in zip(values, mean, interval):
    n = len(row)
    std = math.sqrt(sum((v - row.mean()) ** 2 for v in row) / (n - 1))
    assert m == pytest.approx(row.mean()) and h == pytest.approx(1.96 * std / math.sqrt(n))
  mean0, _ = training.mean_and_interval(values, axis=0)
  np.testing.assert_allclose(mean0, values.mean(0))
  with pytest.raises(ValueError, match="at least 2 samples"):
    training.mean_and_interval([1.0])
  result, seconds = training.timed(lambda: np.arange(3))
  assert result.tolist() == [0, 1, 2] and seconds >= 0
