"""The bad-input table of docs/bad_inputs.md: every row is run, and its message recorded as printed.

``python -m tests.experiments.bad_inputs`` rewrites docs/bad_inputs.md; ``tests/experiments/test_bad_inputs.py``
runs every row and fails if the file is not what the rows print today, so the table cannot go stale.

Each row is a user mistake and how it is made: command-line rows run the entrypoint as a user does (one
process each) and record its stderr; config rows call ``train_and_evaluate`` with a tiny config and record
the error as the command line prints it (``<experiment>: error: <message>``); library rows call the
library and record the exception.
"""

import os
import re
import subprocess
import sys
import tempfile
from typing import Any, Callable, NamedTuple

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOC = os.path.join(REPO_ROOT, "docs", "bad_inputs.md")
SYNTHETIC = "tests.experiments.synthetic:load"


class Row(NamedTuple):
  """One bad input: where it goes in the table, what it is, and how to make it.

  Attributes:
    section: the table it belongs to.
    what: the input, as the table shows it.
    argv: for a command-line row, the arguments after ``python -m``; else None.
    run: for a config or library row, ``run(workdir) -> None`` that must raise; else None.
    program: the program name a config row's message is printed with.
  """

  section: str
  what: str
  argv: list[str] | None = None
  run: Callable[[str], Any] | None = None
  program: str = ""


def _fewshot(workdir: str, **overrides) -> None:
  from experiments import fewshot
  from experiments.configs import fewshot as fewshot_config
  config = fewshot_config.get_config()
  config.update(dict(dataset=SYNTHETIC, hidden=8, num_ways=3, num_queries=2, meta_batch_size=2,
                     num_iterations=2, steps_per_call=2, checkpoint_every=2, num_valid_episodes=2,
                     num_test_episodes=2, eval_batch_size=2))
  config.update(overrides)
  fewshot.train_and_evaluate(config, workdir)


def _sinusoid(workdir: str, **overrides) -> None:
  from experiments import sinusoid
  from experiments.configs import sinusoid as sinusoid_config
  config = sinusoid_config.get_config()
  config.update(dict(learners=("maml",), mlp_features=(8,), num_iterations=2, steps_per_call=2,
                     checkpoint_every=2, num_test_episodes=4, test_num_queries=4, test_num_steps=1))
  config.update(overrides)
  sinusoid.train_and_evaluate(config, workdir)


def _representation(workdir: str, **overrides) -> None:
  from experiments import representation
  from experiments.configs import representation as representation_config
  config = representation_config.get_config("simclr")
  config.update(dict(dataset=SYNTHETIC, hidden=8, num_iterations=2, steps_per_call=2, checkpoint_every=2))
  config.update(overrides)
  representation.train_and_evaluate(config, workdir)


def _mismatched_resume(workdir: str) -> None:
  _sinusoid(workdir)
  _sinusoid(workdir, seed=1, lr=3e-3)


def _other_model_resume(workdir: str) -> None:
  _sinusoid(workdir)
  _sinusoid(workdir, mlp_features=(16,), allow_changes=("mlp_features",))


def _diverging(workdir: str) -> None:
  _sinusoid(workdir, lr=1e30, inner_lr=1e30)


def _protonet_of_other_ways(workdir: str) -> None:
  import jax
  import metalax
  learner = metalax.meta.protonet(lambda params, x: x.reshape(x.shape[0], -1), num_ways=5)
  episode = metalax.sample_episode(jax.random.key(0), jax.numpy.zeros((3, 4, 2, 2, 1)), 3, 1, 1)
  learner.loss({"params": {}}, episode)


def _cross_entropy_out_of_range(workdir: str) -> None:
  import jax.numpy as jnp
  import metalax
  metalax.losses.cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 3]))


def _flat_images(workdir: str) -> None:
  import jax
  import metalax
  metalax.sample_episodes(jax.random.key(0), jax.numpy.zeros((100, 28, 28, 1)), 2, 5, 1, 1)


def _unbatched_episode(workdir: str) -> None:
  import jax
  import metalax
  learner = metalax.meta.maml(metalax.models.from_function(lambda p, x: x.reshape(x.shape[0], -1) @ p),
                              metalax.losses.cross_entropy, inner_lr=0.1, num_steps=1)
  single = metalax.sample_episode(jax.random.key(0), jax.numpy.zeros((3, 4, 2, 2, 1)), 3, 1, 1)
  metalax.meta.batch_loss(learner)({"params": jax.numpy.zeros((4, 3))}, single)


FLAGS = "Flags and configs (every entrypoint shares the flag and config handling)"
EPISODES = "Impossible episodes"
DATA = "Data and shapes"
RUNS = "Workdir, checkpoints, resuming, training"
LIBRARY = "Library calls"

ROWS = [
    Row(FLAGS, "no `--workdir`", argv=["experiments.sinusoid"]),
    Row(FLAGS, "misspelt config field `--config.num_shot=5`",
        argv=["experiments.sinusoid", "--workdir=<workdir>", "--config.num_shot=5"]),
    Row(FLAGS, "wrong type `--config.num_shots=abc`",
        argv=["experiments.sinusoid", "--workdir=<workdir>", "--config.num_shots=abc"]),
    Row(FLAGS, "a tuple field given twice `--config.mlp_features=(8,8) --config.mlp_features=(16,16)`",
        argv=["experiments.sinusoid", "--workdir=<workdir>", "--config.mlp_features=(8,8)",
              "--config.mlp_features=(16,16)"]),
    Row(FLAGS, "unknown preset `--config=experiments/configs/fewshot.py:maml_5w2s`",
        argv=["experiments.fewshot", "--workdir=<workdir>", "--config=experiments/configs/fewshot.py:maml_5w2s"]),
    Row(FLAGS, "`--num_processes=2` without the other two",
        argv=["experiments.sinusoid", "--workdir=<workdir>", "--num_processes=2"]),
    Row(FLAGS, "negative learning rate `--config.lr=-0.001`", run=lambda w: _fewshot(w, lr=-0.001),
        program="fewshot"),
    Row(FLAGS, "zero learning rate `--config.lr=0`", run=lambda w: _sinusoid(w, lr=0.0), program="sinusoid"),
    Row(FLAGS, "`--config.lr_decay_every=0`", run=lambda w: _fewshot(w, lr_schedule="step", lr_decay_every=0),
        program="fewshot"),
    Row(FLAGS, "`--config.test_num_shots=-1`", run=lambda w: _fewshot(w, test_num_shots=-1), program="fewshot"),
    Row(FLAGS, "empty grid `--config.pretrained_lr_grid=()`", run=lambda w: _sinusoid(w, pretrained_lr_grid=()),
        program="sinusoid"),
    Row(FLAGS, "`--config.on_nan=ignore`", run=lambda w: _sinusoid(w, on_nan="ignore"), program="sinusoid"),
    Row(FLAGS, "`--config.precision=float16`", run=lambda w: _sinusoid(w, precision="float16"), program="sinusoid"),
    Row(FLAGS, "`--config.num_devices=8` on a 1-device machine", run=lambda w: _sinusoid(w, num_devices=8),
        program="sinusoid"),
    Row(FLAGS, "unknown learner `--config.learner=protonets`", run=lambda w: _fewshot(w, learner="protonets"),
        program="fewshot"),
    Row(FLAGS, "an embedding learner for regression `--config.learners='(\"protonet\",)'`",
        run=lambda w: _sinusoid(w, learners=("protonet",)), program="sinusoid"),
    Row(FLAGS, "unknown model `--config.model=resnet50`", run=lambda w: _fewshot(w, model="resnet50"),
        program="fewshot"),
    Row(FLAGS, "a user's module that does not import `--config.model=my_pkg.nets:Net`",
        run=lambda w: _fewshot(w, model="my_pkg.nets:Net"), program="fewshot"),
    Row(FLAGS, "unknown inner optimizer `--config.inner_optimizer=adamm`",
        run=lambda w: _fewshot(w, inner_optimizer="adamm"), program="fewshot"),
    Row(FLAGS, "unknown augmentation `--config.augment='(\"random_flop\",)'`",
        run=lambda w: _fewshot(w, augment=("random_flop",)), program="fewshot"),
    Row(FLAGS, "MixUp on episodes `--config.augment='(\"mixup(0.2)\",)'`",
        run=lambda w: _fewshot(w, augment=("mixup(0.2)",)), program="fewshot"),
    Row(FLAGS, "unknown representation loss `--config.loss=byol_typo`",
        run=lambda w: _representation(w, loss="byol_typo"), program="representation"),
    Row(FLAGS, "`--config.tasks_per_chunk=3` with a meta-batch of 2",
        run=lambda w: _fewshot(w, tasks_per_chunk=3), program="fewshot"),
    Row(EPISODES, "more ways than classes `--config.num_ways=2000`", run=lambda w: _fewshot(w, num_ways=2000),
        program="fewshot"),
    Row(EPISODES, "more shots + queries than images `--config.num_shots=9 --config.num_queries=2`",
        run=lambda w: _fewshot(w, num_shots=9), program="fewshot"),
    Row(EPISODES, "a gradient learner tested with other ways `--config.test_num_ways=5`",
        run=lambda w: _fewshot(w, test_num_ways=5), program="fewshot"),
    Row(EPISODES, "variable episodes with a fixed output layer `--config.episodes=variable`",
        run=lambda w: _fewshot(w, episodes="variable"), program="fewshot"),
    Row(DATA, "missing Omniglot, no download `--config.dataset=omniglot --config.download=false`",
        run=lambda w: _fewshot(w, dataset="omniglot", data_dir=os.path.join(w, "none"), download=False),
        program="fewshot"),
    Row(DATA, "a dataset module that does not import `--config.dataset=my_pkg.data:load`",
        run=lambda w: _fewshot(w, dataset="my_pkg.data:load"), program="fewshot"),
    Row(RUNS, "rerun in a workdir with another seed and learning rate",
        run=_mismatched_resume, program="sinusoid"),
    Row(RUNS, "checkpoint of another width, change allowed (`--config.allow_changes=mlp_features`)",
        run=_other_model_resume, program="sinusoid"),
    Row(RUNS, "diverging training `--config.lr=1e30`", run=_diverging, program="sinusoid"),
    Row(LIBRARY, "`meta.protonet(num_ways=5)` given a 3-way episode", run=_protonet_of_other_ways),
    Row(LIBRARY, "`losses.cross_entropy` with a label outside [0, C)", run=_cross_entropy_out_of_range),
    Row(LIBRARY, "`sample_episodes` given a flat `[N, H, W, C]` array", run=_flat_images),
    Row(LIBRARY, "`meta.batch_loss` given one unbatched episode", run=_unbatched_episode),
]


def _clean(text: str, workdir: str) -> str:
  """One line, the workdir and temporary paths replaced by placeholders."""
  text = " ".join(text.split()).replace(workdir, "<workdir>").replace(REPO_ROOT, "<repo>")
  return re.sub(r"/tmp/[^\s'\"]*", "<tmp>", text)


def run_rows(rows: list[Row] = ROWS) -> list[str]:
  """The message each row gives (command-line rows run as processes side by side)."""
  workdir = tempfile.mkdtemp(prefix="metalax_bad_inputs_")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "METALAX_DATA_DIR": os.path.join(workdir, "no_data")}
  processes = {}
  for index, row in enumerate(rows):
    if row.argv is not None:
      argv = [a.replace("<workdir>", os.path.join(workdir, f"cli{index}")) for a in row.argv]
      processes[index] = subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO_ROOT, env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  messages = []
  for index, row in enumerate(rows):
    if row.argv is not None:
      _, stderr = processes[index].communicate(timeout=300)
      lines = [line for line in stderr.splitlines() if line.strip()]
      status = processes[index].returncode
      messages.append(f"{_clean(lines[-1] if lines else '', workdir)} (exit {status}, {len(lines)} line"
                      f"{'s' if len(lines) != 1 else ''} on stderr)")
      continue
    run_dir = os.path.join(workdir, f"row{index}")
    try:
      row.run(run_dir)
    except Exception as e:  # the row's point: record what the user sees
      message = _clean(str(e), workdir)
      messages.append(f"{row.program}: error: {message}" if row.program else f"{type(e).__name__}: {message}")
    else:
      messages.append("(no error)")
  return messages


def render(messages: list[str], rows: list[Row] = ROWS) -> str:
  """docs/bad_inputs.md's text."""
  lines = ["# Bad inputs and the error each gives", "",
           "Generated by `python -m tests.experiments.bad_inputs` (every row below is run; "
           "`tests/experiments/test_bad_inputs.py` fails when this file is not what the rows print). Every "
           "user mistake in an entrypoint ends it with one line on stderr, `<experiment>: error: <message>`, and "
           "exit status 1; config rows are run through `train_and_evaluate` and shown as the command line "
           "prints them. Paths are shown as `<workdir>`, `<repo>` and `<tmp>`.", ""]
  section = None
  for row, message in zip(rows, messages):
    if row.section != section:
      section = row.section
      lines += ["", f"## {section}", "", "| input | message |", "|---|---|"]
    lines.append(f"| {row.what} | `{message.replace('|', '/').replace('`', chr(39))}` |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  text = render(run_rows())
  with open(DOC, "w") as f:
    f.write(text)
  print(text)
