"""metalax.training.cli: --help lists every field, typos and repeated tuples are one-line errors, exit codes."""

import json
import os
import subprocess
import sys
import ml_collections
import pytest

from metalax.training import cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = '''
import ml_collections
from metalax import training

PRESETS = {"small": {"hidden": (4,), "lr": 0.5}}
HELP = {"hidden": "Widths of the hidden layers.", "lr": "Learning rate.", "num_shots": "Examples per class.",
        "model.name": "Model by name.", "model.width": "Width of the model."}


def get_config(preset=""):
  config = training.base_config()
  config.hidden = (8, 8)
  config.lr = 0.1
  config.num_shots = 5
  config.model = ml_collections.ConfigDict({"name": "mlp", "width": 3})
  if preset:
    config.update(PRESETS[preset])
  return config
'''

SCRIPT = '''
import os
from metalax import training


def train_and_evaluate(config, workdir):
  training.validate(config, {"lr": "positive_float", "hidden": "positive_ints"})
  workdir = training.prepare_workdir(workdir)
  training.write_json(os.path.join(workdir, "used.json"), config.to_dict())


if __name__ == "__main__":
  training.run(train_and_evaluate, os.path.join(os.path.dirname(os.path.abspath(__file__)), "tiny_config.py"))
'''


@pytest.fixture
def tiny(tmp_path):
  (tmp_path / "tiny_config.py").write_text(CONFIG)
  (tmp_path / "tiny.py").write_text(SCRIPT)
  return tmp_path


def test_help_text_lists_every_field_with_default_and_description(tiny):
  text = cli.config_help(str(tiny / "tiny_config.py"))
  fields = cli.fields(cli.load_config(str(tiny / "tiny_config.py"))[0])
  for name in fields:
    assert f"  --config.{name}=" in text
  assert "  --config.hidden=(8,8)\n      Widths of the hidden layers.\n" in text
  assert "  --config.model.width=3\n      Width of the model.\n" in text
  assert "  --config.on_nan=stop\n      A non-finite loss: stop" in text  # the base fields' descriptions merged
  assert "(presets: small)" in text and "--workdir=DIR" in text and "(no description)" not in text
  small = cli.config_help(str(tiny / "tiny_config.py") + ":small")
  assert "with preset small" in small and "  --config.hidden=(4,)\n" in small and "  --config.lr=0.5\n" in small
  with pytest.raises(ValueError, match="unknown preset 'large'; the presets are small"):
    cli.load_config(str(tiny / "tiny_config.py") + ":large")
  with pytest.raises(FileNotFoundError, match="no config file"):
    cli.load_config(str(tiny / "missing.py"))


def test_repeated_tuple_override_is_refused():
  config = ml_collections.ConfigDict({"hidden": (8, 8), "lr": 0.1})
  for argv in (["p", "--config.hidden=(8,8)", "--config.hidden=(16,16)"],
               ["p", "--config.hidden=(8,8)", "--config.hidden=()"],
               ["p", "--config.hidden", "(8,8)", "--config.hidden=()"]):
    with pytest.raises(ValueError, match=r"--config.hidden is given 2 times .*; a tuple field takes its whole "
                                         r"value once, e.g. --config.hidden="):
      cli.check_repeated_overrides(argv, config)
  cli.check_repeated_overrides(["p", "--config.lr=1", "--config.lr=2", "--config.hidden=()"], config)


def test_unknown_field_names_the_nearest(tiny):
  spec = str(tiny / "tiny_config.py")
  message = cli.unknown_fields_message(["p", "--config.num_shot=3", "--config.model.widht=2", "--config.lr=1"], spec)
  assert message == ("unknown config field --config.num_shot (nearest: --config.num_shots, --config.num_devices); "
                     "--config.model.widht (nearest: --config.model.width, --config.model.name); --help lists every "
                     "field.")
  assert cli.unknown_fields_message(["p", "--config.model.width=2"], spec) is None


@pytest.mark.parametrize("flag", ["--helpshort", "--helpfull", "-h"])
def test_every_help_flag_prints_the_fields_and_exits_zero(tiny, monkeypatch, capsys, flag):
  monkeypatch.setattr(sys, "argv", ["tiny.py", flag, "--config.lr=2.0", "--workdir=/unused"])
  with pytest.raises(SystemExit) as exit_:
    cli.run(lambda config, workdir: None, str(tiny / "tiny_config.py"))  # exits before any flag is defined
  assert exit_.value.code == 0
  assert "--config.model.name=mlp\n      Model by name.\n" in capsys.readouterr().out


def run_all(tiny, cases):
  """Runs ``python tiny.py ARGS`` for every case at once; returns their CompletedProcess-like results."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO_ROOT}
  processes = [subprocess.Popen([sys.executable, str(tiny / "tiny.py"), *args], cwd=str(tiny), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in cases]
  results = []
  for process in processes:
    stdout, stderr = process.communicate(timeout=180)
    results.append((process.returncode, stdout, stderr))
  return results


def error_lines(stderr):
  return [line for line in stderr.splitlines() if line.strip()]


def test_command_line(tiny):
  workdir = str(tiny / "run")
  help_, typo, repeated, bad_value, ok = run_all(tiny, [
      ["--help"],
      [f"--workdir={workdir}", "--config.num_shot=3"],
      [f"--workdir={workdir}", "--config.hidden=(8,8)", "--config.hidden=(16,16)"],
      [f"--workdir={workdir}", "--config.lr=-1.0"],
      [f"--workdir={workdir}", f"--config={tiny / 'tiny_config.py'}:small", "--config.hidden=(16,16)",
       "--config.allow_changes=seed,lr"],
  ])
  assert help_[0] == 0, help_[2][-2000:]
  assert "  --config.num_shots=5\n      Examples per class.\n" in help_[1]
  assert "  --config.checkpoint_every=500\n" in help_[1]
  assert typo[0] == 1 and error_lines(typo[2]) == [
      "tiny: error: unknown config field --config.num_shot (nearest: --config.num_shots, --config.num_devices); "
      "--help lists every field."], typo[2][-3000:]
  assert repeated[0] == 1 and error_lines(repeated[2]) == [
      "tiny: error: --config.hidden is given 2 times ((8,8), (16,16)); a tuple field takes its whole value once, "
      "e.g. --config.hidden=(16,16)."], repeated[2][-3000:]
  assert bad_value[0] == 1 and error_lines(bad_value[2]) == [
      "tiny: error: --config.lr must be a finite number > 0, got -1.0."], bad_value[2][-3000:]
  assert ok[0] == 0, ok[2][-3000:]
  used = json.load(open(os.path.join(workdir, "used.json")))
  assert used["hidden"] == [16, 16] and used["lr"] == 0.5 and used["allow_changes"] == ["seed,lr"]
