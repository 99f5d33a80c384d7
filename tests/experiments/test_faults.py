"""A real training run killed with SIGKILL at random points, restarted, ends as an uninterrupted run."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_ITERATIONS = 3000  # far more than three kills reach: a resumed run can pass 100s of iterations before its kill
TINY = ["--config.learners=maml", "--config.hidden=(8,8)", "--config.meta_batch_size=5",
        f"--config.num_iterations={NUM_ITERATIONS}", "--config.steps_per_call=25", "--config.checkpoint_every=50",
        "--config.num_eval_tasks=10", "--config.num_eval_queries=10", "--config.eval_steps=1"]


def start(workdir):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         # The runs share compiled programs, as the tests of one session do.
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "",
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  return subprocess.Popen([sys.executable, "-m", "experiments.sinusoid", f"--workdir={workdir}", *TINY],
                          cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process):
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 0, stderr[-3000:]


def checkpoint_steps(directory):
  if not os.path.isdir(directory):
    return [], []
  names = os.listdir(directory)
  return sorted(int(n) for n in names if n.isdigit()), [n for n in names if not n.isdigit()]


def test_killed_and_restarted_run_equals_uninterrupted_run(tmp_path):
  straight = tmp_path / "straight"
  uninterrupted = start(straight)  # runs beside the killed ones

  rng = random.Random(0)
  killed = tmp_path / "killed"
  directory = killed / "maml" / "checkpoints"
  seen_unfinished, resumed_from = [], []
  for _ in range(3):
    before = checkpoint_steps(directory)[0]
    process = start(killed)
    deadline = time.time() + 60
    while checkpoint_steps(directory)[0][-1:] == before[-1:] and time.time() < deadline:
      time.sleep(0.02)  # until this run has saved a checkpoint of its own
    time.sleep(rng.uniform(0.0, 0.4))
    process.send_signal(signal.SIGKILL)
    process.wait()
    steps, unfinished = checkpoint_steps(directory)
    seen_unfinished += unfinished
    assert steps and steps[-1] < NUM_ITERATIONS, "killed too late: raise NUM_ITERATIONS"
    # What a restart would resume from is a complete checkpoint: orbax lists finished steps only...
    manager = ocp.CheckpointManager(str(directory))
    latest = manager.latest_step()
    assert latest == steps[-1]
    # ...and it reads back whole.
    restored = manager.restore(latest)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored))
    resumed_from.append(latest)
  finish(start(killed))
  finish(uninterrupted)

  assert len(set(resumed_from)) == 3, resumed_from  # each kill came after new progress
  # Temporary directories of interrupted saves, if a kill hit one, are never taken for checkpoints.
  assert all(".orbax-checkpoint-tmp" in name for name in seen_unfinished), seen_unfinished
  final_straight = ocp.CheckpointManager(str(straight / "maml" / "checkpoints")).restore(NUM_ITERATIONS)
  final_killed = ocp.CheckpointManager(str(directory)).restore(NUM_ITERATIONS)
  for a, b in zip(jax.tree.leaves(final_straight), jax.tree.leaves(final_killed)):
    np.testing.assert_array_equal(a, b)  # bit for bit
  results = [json.loads((run / "results.json").read_text()) for run in (straight, killed)]
  assert results[0] == results[1]
  metrics = [(run / "maml" / "metrics.jsonl").read_text() for run in (straight, killed)]
  assert metrics[0] == metrics[1]  # the records of one uninterrupted run, no repeats
