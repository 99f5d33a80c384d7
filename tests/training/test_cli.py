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
HELP = {"hidden": "Widths of the hidden layers.", "lr": "Learning rate.", "num_shots": "Examples per class.", "names": "Learners.",
        "model.name": "Model by name.", "model.width": "Width of the model."}


def get_config(preset=""):
  config = training.base_config()
  config.hidden = (8, 8)
  config.lr = 0.1
  config.num_shots = 5
  config.names = ("x",)
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
  if config.lr == 1000.0:  # what XLA raises when an allocation fails
    import jax
    raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 39926293248 bytes.")
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


def test_repeated_tuple_override_is_refused_unless_given_element_by_element():
  config = ml_collections.ConfigDict({"hidden": (8, 8), "lr": 0.1, "names": ("x",)})
  for argv in (["p", "--config.hidden=(8,8)", "--config.hidden=(16,16)"],
               ["p", "--config.hidden=(8,8)", "--config.hidden=()"],
               ["p", "--config.hidden", "(8,8)", "--config.hidden=()"],
               ["p", "--config.names=a,b", "--config.names=c"]):
    with pytest.raises(ValueError, match=r"--config.(hidden|names) is given 2 times .*; a tuple field takes its "
                                         r"whole value once, e.g. --config.(hidden|names)="):
      cli.check_repeated_overrides(argv, config)
  cli.check_repeated_overrides(["p", "--config.lr=1", "--config.lr=2", "--config.hidden=()"], config)
  cli.check_repeated_overrides(["p", "--config.names=a", "--config.names=b", "--config.hidden=8"], config)


def test_comma_lists_of_names_are_split():
  config = ml_collections.ConfigDict({"names": ("maml,anil",), "other": ("a,b",), "nested": {"names": ("(c, d)",)}})
  cli.split_name_lists(["p", "--config.names=maml,anil", "--config.nested.names=(c, d)"], config)
  assert config.names == ("maml", "anil") and config.nested.names == ("c", "d")
  assert config.other == ("a,b",)  # not overridden: left as the config file wrote it


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


DRIVER = """
import json, os, runpy, sys, traceback
import metalax.training  # imported once; no JAX backend is started before the forks

script, cases, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
results = []
for i, args in enumerate(cases):
  stdout, stderr = os.path.join(out, f"{i}.out"), os.path.join(out, f"{i}.err")
  pid = os.fork()
  if pid == 0:
    os.dup2(os.open(stdout, os.O_WRONLY | os.O_CREAT), 1)
    os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT), 2)
    sys.argv = [script, *args]
    code = 0
    try:
      runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
      traceback.print_exc()
      code = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  results.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
print(json.dumps(results))
"""


def run_all(tiny, cases):
  """``(returncode, stdout, stderr)`` of ``python tiny.py ARGS`` for each case.

  One process imports metalax once and forks a child per case (a fresh
  interpreter each would import JAX once per case).
  """
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO_ROOT}
  (tiny / "out").mkdir()
  result = subprocess.run([sys.executable, "-c", DRIVER, str(tiny / "tiny.py"), json.dumps(cases), str(tiny / "out")],
                          cwd=str(tiny), env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  codes = json.loads(result.stdout.splitlines()[-1])
  return [(code, (tiny / "out" / f"{i}.out").read_text(), (tiny / "out" / f"{i}.err").read_text())
          for i, code in enumerate(codes)]


def error_lines(stderr):
  return [line for line in stderr.splitlines() if line.strip()]


def test_command_line(tiny):
  workdir = str(tiny / "run")
  help_, typo, repeated, bad_value, ok, *errors = run_all(tiny, [
      ["--help"],
      [f"--workdir={workdir}", "--config.num_shot=3"],
      [f"--workdir={workdir}", "--config.hidden=(8,8)", "--config.hidden=(16,16)"],
      [f"--workdir={workdir}", "--config.lr=-1.0"],
      [f"--workdir={workdir}", f"--config={tiny / 'tiny_config.py'}:small", "--config.hidden=(16,16)",
       "--config.allow_changes=seed,lr", "--config.names=(maml,anil)"],
      [f"--workdir={workdir}", "--config.lr=abc"],
      ["--config.lr=2.0"],
      [f"--workdir={workdir}", f"--config={tiny / 'tiny_config.py'}:large"],
      [f"--workdir={workdir}", f"--config={tiny / 'missing.py'}"],
      [f"--workdir={workdir}", "--config.hidden=(8,0)"],
      [f"--workdir={workdir}", "--config.lr=1000.0"],
  ])
  assert help_[0] == 0, help_[2][-2000:]
  assert "  --config.num_shots=5\n      Examples per class.\n" in help_[1]
  assert "  --config.checkpoint_every=500\n" in help_[1]
  assert typo[0] == 1 and error_lines(typo[2]) == [
      "tiny: error: unknown config field --config.num_shot (nearest: --config.num_shots, --config.num_devices); "
      "--help lists every field."], typo[2][-3000:]
  assert repeated[0] == 1 and error_lines(repeated[2]) == [
      "tiny: error: --config.hidden is given 2 times ((8,8), (16,16)); a tuple field takes its whole value once, "
      "e.g. --config.hidden=(16,16) (or one element per repetition, --config.hidden=a --config.hidden=b)."
  ], repeated[2][-3000:]
  assert bad_value[0] == 1 and error_lines(bad_value[2]) == [
      "tiny: error: --config.lr must be a finite number > 0, got -1.0."], bad_value[2][-3000:]
  assert ok[0] == 0, ok[2][-3000:]
  used = json.load(open(os.path.join(workdir, "used.json")))
  assert used["hidden"] == [16, 16] and used["lr"] == 0.5 and used["allow_changes"] == ["seed", "lr"]
  assert used["names"] == ["maml", "anil"]
  messages = ["flag --config.lr=abc: could not convert string to float: 'abc' (--help lists the flags and every "
              "config field)",
              "--workdir is required (where results, checkpoints and plots go; --help lists the flags).",
              "unknown preset 'large'; the presets are small.",
              "no config file",
              "--config.hidden must be a non-empty tuple of ints >= 1, e.g. (40,40), got (8, 0).",
              "the device ran out of memory (RESOURCE_EXHAUSTED: Out of memory allocating 39926293248 bytes.). Use "
              "a smaller batch, model or image size"]
  assert len(errors) == len(messages)
  for (returncode, _, stderr), message in zip(errors, messages):
    lines = error_lines(stderr)
    assert returncode == 1 and len(lines) == 1 and lines[0].startswith("tiny: error: ") and message in lines[0], (
        stderr[-3000:])
