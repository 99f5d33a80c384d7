"""Two processes on localhost (jax.distributed, gloo collectives on CPU) train as one process does."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--config.learners=(\"maml\",)", "--config.mlp_features=(8,8)", "--config.meta_batch_size=6",
        "--config.num_iterations=40", "--config.steps_per_call=10", "--config.checkpoint_every=20",
        "--config.num_test_episodes=10", "--config.test_num_queries=10", "--config.test_num_steps=1"]


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def start(workdir, log, *flags):
  """Starts a run; its output goes to the file ``log`` (a pipe left unread would fill, block the process in a
  write and, with it, its peer in a collective)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "",
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "",
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  output = open(log, "w")
  return subprocess.Popen([sys.executable, "-m", "experiments.sinusoid", f"--workdir={workdir}", *TINY, *flags],
                          cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, text=True)


def restore(directory, step):
  """A checkpoint onto this process's first device, whatever the topology that wrote it."""
  metadata = ocp.StandardCheckpointer().metadata(os.path.join(directory, str(step), "default"))
  tree = getattr(metadata, "item_metadata", metadata)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), tree)
  return ocp.CheckpointManager(directory).restore(step, args=ocp.args.StandardRestore(abstract))


def test_two_processes_equal_one_process(tmp_path):
  port = free_port()
  logs = [tmp_path / f"log_{i}.txt" for i in range(3)]
  one = start(tmp_path / "one", logs[0])
  two = [start(tmp_path / "two", logs[1 + i], f"--coordinator_address=localhost:{port}", "--num_processes=2",
               f"--process_id={i}") for i in range(2)]
  try:
    for process in [one, *two]:
      process.wait(timeout=300)
  finally:  # a hang fails this test and leaves no process behind
    for process in [one, *two]:
      process.kill()
  outputs = [log.read_text() for log in logs]
  for process, output in zip([one, *two], outputs):
    assert process.returncode == 0, output[-3000:]
  assert "Rank 1 is connected to 1 peer ranks" in outputs[2]  # really two processes

  run_info = json.loads((tmp_path / "two" / "run.json").read_text())
  assert run_info["process_count"] == 2 and len(run_info["devices"]) == 2
  single = restore(str(tmp_path / "one" / "maml" / "checkpoints"), 40)
  double = restore(str(tmp_path / "two" / "maml" / "checkpoints"), 40)
  for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(double)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  losses = [[json.loads(line)["loss"] for line in open(tmp_path / run / "maml" / "metrics.jsonl")]
            for run in ("one", "two")]
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
