"""Real training runs killed with SIGKILL, restarted, end exactly as uninterrupted runs.

Nothing asserted depends on the machine's speed: the run is killed once it has written a checkpoint (or not at
all, if it finished first); the assertions are about the final state and records only.
"""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SINUSOID = ("experiments.sinusoid", "maml", 600, [
    "--config.learners=(\"maml\",)", "--config.mlp_features=(8,8)", "--config.meta_batch_size=5",
    "--config.steps_per_call=25", "--config.checkpoint_every=50", "--config.num_test_episodes=10",
    "--config.test_num_queries=10", "--config.test_num_steps=1"])
FEWSHOT = ("experiments.fewshot", "", 200, [
    "--config.dataset=tests.experiments.synthetic:load", "--config.learner=protonet", "--config.model=mlp",
    "--config.mlp_features=(16,8)",
    "--config.num_ways=3", "--config.num_queries=2", "--config.meta_batch_size=2", "--config.steps_per_call=10",
    "--config.checkpoint_every=20", "--config.num_valid_episodes=10", "--config.num_test_episodes=20",
    "--config.eval_batch_size=10"])
MULTITASK = ("experiments.gradnorm", "gradnorm", 200, [
    "--config.methods=(\"gradnorm\",)", "--config.num_seeds=2", "--config.batch_size=16",
    "--config.mlp_features=(8,8)", "--config.gradnorm_layer=trunk/Dense_1", "--config.steps_per_call=10",
    "--config.checkpoint_every=20", "--config.toy.num_tasks=3", "--config.toy.input_dim=12",
    "--config.toy.output_dim=4", "--config.toy.num_test=64"])


def start(module, workdir, num_iterations, flags):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         # The runs share compiled programs, as the tests of one session do.
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "",
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  return subprocess.Popen([sys.executable, "-m", module, f"--workdir={workdir}",
                           f"--config.num_iterations={num_iterations}", *flags],
                          cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process):
  _, stderr = process.communicate(timeout=300)
  assert process.returncode == 0, stderr[-3000:]


def checkpoint_steps(directory):
  if not os.path.isdir(directory):
    return [], []
  names = os.listdir(directory)
  # orbax's own "metadata" entry (the manager's record, e.g. of the best step) is neither a step nor unfinished.
  return sorted(int(n) for n in names if n.isdigit()), [n for n in names if not n.isdigit() and n != "metadata"]


@pytest.mark.parametrize("experiment", [SINUSOID, FEWSHOT, MULTITASK], ids=["sinusoid", "fewshot", "multitask"])
def test_killed_and_restarted_run_equals_uninterrupted_run(tmp_path, experiment):
  module, run_subdir, num_iterations, flags = experiment
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  directory = killed / run_subdir / "checkpoints"
  finish(start(module, straight, num_iterations, flags))
  process = start(module, killed, num_iterations, flags)
  while process.poll() is None and not checkpoint_steps(directory)[0]:
    time.sleep(0.01)  # until the run has saved a checkpoint (or finished)
  process.send_signal(signal.SIGKILL)
  process.wait()
  steps, unfinished = checkpoint_steps(directory)
  # What the restart resumes from is a complete checkpoint that reads back whole.
  manager = ocp.CheckpointManager(str(directory))
  assert manager.latest_step() == steps[-1]
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(manager.restore(steps[-1])))
  finish(start(module, killed, num_iterations, flags))

  # The temporary directory of an interrupted save, if the kill hit one, is never taken for a checkpoint.
  assert all(".orbax-checkpoint-tmp" in name for name in unfinished), unfinished
  restore = lambda run: ocp.CheckpointManager(str(run / run_subdir / "checkpoints")).restore(num_iterations)
  for a, b in zip(jax.tree.leaves(restore(straight)), jax.tree.leaves(restore(killed))):
    np.testing.assert_array_equal(a, b)  # bit for bit
  results = [json.loads((run / "results.json").read_text()) for run in (straight, killed)]
  assert results[0] == results[1]
  metrics = [(run / run_subdir / "metrics.jsonl").read_text() for run in (straight, killed)]
  assert metrics[0] == metrics[1]  # the records of one uninterrupted run, no repeats
