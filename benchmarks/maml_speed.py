r"""Meta-iterations per second of second-order MAML: metalax against learn2learn, same machine, same run.

Each configuration runs in its own process (so peak memory is its own), first
in metalax, then, when PyTorch and learn2learn are installed
(``bash benchmarks/install_peer.sh``), in learn2learn, and the table gives the
ratio. A meta-iteration is one outer step: adapt on every task's support set,
query loss, meta-gradient, Adam update; the data are fixed arrays made before
timing, on both sides.

Usage:
  python -m benchmarks.maml_speed                       # every configuration
  python -m benchmarks.maml_speed --configs=sinusoid_1step,omniglot_strided
  python -m benchmarks.maml_speed --run_one=omniglot_maxpool   # one config, JSON line
  python -m benchmarks.maml_speed --configs=omniglot_strided,omniglot_maxpool --tasks_per_chunk=4
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags

CONFIGS = {
    # name: (model, meta_batch, num_ways or None for regression, shots, queries per class, inner steps, inner lr)
    "sinusoid_1step": ("mlp", 25, None, 10, 10, 1, 0.01),
    "sinusoid_5step": ("mlp", 25, None, 10, 10, 5, 0.01),
    "omniglot_strided": ("strided", 32, 5, 1, 15, 1, 0.4),
    "omniglot_maxpool": ("maxpool", 32, 5, 1, 15, 1, 0.4),
}

_CONFIGS = flags.DEFINE_list("configs", list(CONFIGS), "Configurations to run.")
_RUN_ONE = flags.DEFINE_string("run_one", None, "Run one configuration in this process; print JSON.")
_ITERATIONS = flags.DEFINE_integer("iterations", 0, "Timed iterations (0: a default per config).")
_PEER = flags.DEFINE_bool("peer", True, "Also run learn2learn when it is importable.")
_CONV_IMPL = flags.DEFINE_enum("conv_impl", "patches", ["patches", "xla"], "Conv4 convolutions (metalax).")
_TASKS_PER_CHUNK = flags.DEFINE_integer(
    "tasks_per_chunk", 0, "metalax meta-gradient over chunks of this many tasks (train_step(tasks_per_chunk=...)); "
    "0: the whole meta-batch at once. Must divide the meta-batch of every config run.")

PEER_SCRIPT = os.path.join(os.path.dirname(__file__), "peer_learn2learn.py")


def build(name, conv_impl="patches", tasks_per_chunk=0):
  """(jitted step, meta_params, opt_state, episodes, num_params) for one configuration."""
  import jax
  import jax.numpy as jnp
  import optax

  import metalax

  model_kind, meta_batch, num_ways, shots, queries, num_steps, inner_lr = CONFIGS[name]
  key_model, key_data = jax.random.split(jax.random.key(0))
  if model_kind == "mlp":
    model = metalax.models.MLP(features=(40, 40), num_outputs=1)
    make_episodes = lambda key: metalax.data.sample_sinusoid(key, meta_batch, shots, queries)
    loss_fn, sample = metalax.losses.squared_error, jnp.zeros((1, 1))
  else:
    model = metalax.models.Conv4(num_outputs=num_ways, variant=model_kind, conv_impl=conv_impl)

    def make_episodes(key):
      keys = jax.random.split(key, 2)
      support = metalax.Batch(jax.random.uniform(keys[0], (meta_batch, num_ways * shots, 28, 28, 1)),
                              jnp.tile(jnp.arange(num_ways), (meta_batch, shots)))
      query = metalax.Batch(jax.random.uniform(keys[1], (meta_batch, num_ways * queries, 28, 28, 1)),
                            jnp.tile(jnp.arange(num_ways), (meta_batch, queries)))
      return metalax.Episode(support, query)

    loss_fn, sample = metalax.losses.cross_entropy, jnp.zeros((2, 28, 28, 1))
  # Data and parameters made under jit, one compile each, as the experiments do: made eagerly, every
  # operation compiles a program of its own (160 MB of peak RSS for Conv-4's init).
  episodes = jax.jit(make_episodes)(key_data)
  params = jax.jit(model.init)(key_model, sample)["params"]
  learner = metalax.meta.maml(metalax.models.from_linen(model), loss_fn, inner_lr=inner_lr,
                              num_steps=num_steps)
  optimizer = optax.adam(1e-3)
  meta_params = learner.init(params)
  step = jax.jit(metalax.meta.train_step(learner, optimizer, tasks_per_chunk=tasks_per_chunk or None))
  num_params = sum(x.size for x in jax.tree.leaves(params))
  return step, meta_params, jax.jit(optimizer.init)(meta_params), episodes, num_params


def run_one(name, iterations, conv_impl="patches", tasks_per_chunk=0):
  """Times one configuration in metalax; returns the JSON record."""
  import jax
  import numpy as np

  step, meta_params, opt_state, episodes, num_params = build(name, conv_impl, tasks_per_chunk)
  iterations = iterations or (2000 if name.startswith("sinusoid") else 10)
  begin = time.perf_counter()
  compiled = step.lower(meta_params, opt_state, episodes).compile()
  compile_s = time.perf_counter() - begin
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost or {}
  meta_params, opt_state, _ = jax.block_until_ready(step(meta_params, opt_state, episodes))
  for _ in range(3):
    meta_params, opt_state, _ = step(meta_params, opt_state, episodes)
  jax.block_until_ready(meta_params)
  times = []
  for _ in range(iterations):
    begin = time.perf_counter()
    meta_params, opt_state, _ = jax.block_until_ready(step(meta_params, opt_state, episodes))
    times.append(time.perf_counter() - begin)
  peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before sampling's own arrays
  record = {}
  if not name.startswith("sinusoid"):  # episode sampling on device, as experiments.fewshot does it
    record = time_sampling(CONFIGS[name], min(iterations, 20))
  return record | {"impl": "metalax", "config": name, "ms_per_iteration": 1e3 * float(np.median(times)),
          "ms_per_iteration_min": 1e3 * float(np.min(times)), "compile_s": compile_s,
          "peak_rss_mb": peak_rss_mb, "tasks_per_chunk": tasks_per_chunk,
          "num_params": int(num_params), "jax": jax.__version__, "iterations": iterations,
          "device": str(jax.devices()[0].device_kind), "conv_impl": conv_impl,
          # XLA counts a scan's body once, so chunked steps report no total.
          "gflop_per_iteration": float(cost.get("flops", float("nan"))) / 1e9 if not tasks_per_chunk else None,
          "device_peak_mb": (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0) / 2**20}


def time_sampling(config, iterations):
  """Median ms to sample and convert one meta-batch of episodes from Omniglot-sized training images."""
  import jax
  import numpy as np

  import metalax
  from experiments.fewshot import as_float

  _, meta_batch, num_ways, shots, queries, _, _ = config
  images = jax.random.randint(jax.random.key(1), (4400, 20, 28, 28, 1), 0, 256).astype(np.uint8)

  @jax.jit
  def sample(key, images):
    return as_float(metalax.sample_episodes(key, images, meta_batch, num_ways, shots, queries))

  jax.block_until_ready(sample(jax.random.key(0), images))
  times = []
  for i in range(iterations):
    begin = time.perf_counter()
    jax.block_until_ready(sample(jax.random.key(i), images))
    times.append(time.perf_counter() - begin)
  return {"sampling_ms": 1e3 * float(np.median(times))}


def subprocess_json(command):
  result = subprocess.run(command, capture_output=True, text=True)
  lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
  if result.returncode != 0 or not lines:
    return {"error": (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]}
  return json.loads(lines[-1])


def peer_available():
  try:
    import learn2learn  # noqa: F401
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def main(argv):
  del argv
  if _RUN_ONE.value:
    print(json.dumps(run_one(_RUN_ONE.value, _ITERATIONS.value, _CONV_IMPL.value, _TASKS_PER_CHUNK.value)))
    return
  unknown = [c for c in _CONFIGS.value if c not in CONFIGS]
  if unknown:
    raise app.UsageError(f"unknown configs {unknown}; expected some of {list(CONFIGS)}.")
  with_peer = _PEER.value and peer_available()
  if not with_peer:
    print("learn2learn/torch not importable: metalax only (bash benchmarks/install_peer.sh adds the peer).")
  rows = []
  for name in _CONFIGS.value:
    ours = subprocess_json([sys.executable, "-m", "benchmarks.maml_speed", f"--run_one={name}",
                            f"--iterations={_ITERATIONS.value}", f"--conv_impl={_CONV_IMPL.value}",
                            f"--tasks_per_chunk={_TASKS_PER_CHUNK.value}"])
    peer = subprocess_json([sys.executable, PEER_SCRIPT, "--config", name]) if with_peer else {}
    rows.append((name, ours, peer))
    print(json.dumps(ours))
    if peer:
      print(json.dumps(peer))
  print(f"\n{'config':<18}{'metalax ms/it':>14}{'learn2learn ms/it':>19}{'speed-up':>10}"
        f"{'metalax RSS MB':>16}{'l2l RSS MB':>12}{'sampling ms':>13}")
  for name, ours, peer in rows:
    ms, peer_ms = ours.get("ms_per_iteration"), peer.get("ms_per_iteration")
    ratio = f"{peer_ms / ms:.1f}x" if ms and peer_ms else "-"
    fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else format("-", ">" + spec.split(".")[0])
    print(f"{name:<18}{fmt(ms, '14.2f')}{fmt(peer_ms, '19.2f')}{ratio:>10}"
          f"{fmt(ours.get('peak_rss_mb'), '16.0f')}{fmt(peer.get('peak_rss_mb'), '12.0f')}"
          f"{fmt(ours.get('sampling_ms'), '13.2f')}")


if __name__ == "__main__":
  app.run(main)
