r"""Step time of gradient-aggregation methods against T, metalax (JAX) against a LibMTL-style PyTorch peer.

One training step of a hard-parameter-sharing regression model (a ReLU MLP
trunk, ``T`` linear heads, squared error per task, Adam): per-task gradients
of the shared parameters, the method's aggregation, the optimizer update.

* metalax: one ``jax.jit`` program; per-task gradients from
  :func:`metalax.mtl.task_gradients` (one forward pass, ``T`` backward passes
  batched by ``vmap``); the aggregator on the trunk, the heads' gradients summed.
* peer (``benchmarks/peer_libmtl.py``): LibMTL's loop of ``T`` backward passes
  with ``retain_graph`` collecting a ``[T, D]`` gradient matrix, then the
  same aggregation (LibMTL's code transcribed; ``--libmtl_dir`` drives the real
  LibMTL 1.1.5 weighting classes instead).

``ew`` (equal weighting) is one backward pass of the summed loss on both sides.
Both sides run on the same number of CPU threads (``--threads``, set before
JAX and torch start); for each ``T`` and method, ``--repeats`` rounds of
``--steps`` steps of metalax, then as many of the peer (each side after one
warm-up round), and the median round is reported, with the ratio
peer / metalax measured in this invocation. ``--threads=1`` limits XLA's and
torch's compute threads; JAX still dispatches the next step from Python while
the current one runs, which can use the second core (``taskset -c 0 python
benchmarks/mtl_speed.py`` keeps the whole process on one core). Every round
starts from the same initial model and optimizer state on both sides, so every
round times the same steps (the solvers of MGDA and CAGrad take more or fewer iterations as
training moves the task gradients; rounds that continued training would time
different work each).

Usage:
  python benchmarks/mtl_speed.py                      # T = 2, 10, 40; all methods
  python benchmarks/mtl_speed.py --tasks=10 --methods=pcgrad,mgda --threads=2
  python benchmarks/mtl_speed.py --libmtl_dir=/tmp/libmtl_site   # LibMTL's own classes as the peer
  python benchmarks/mtl_speed.py --methods=gradvac,fairgrad,db_mtl,config,dualproj   # needs qpsolvers, quadprog
"""

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tasks", default="2,10,40", help="comma-separated numbers of tasks T")
  parser.add_argument("--methods", default="ew,pcgrad,mgda,cagrad,imtl_g", help="comma-separated methods")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--input_dim", type=int, default=128)
  parser.add_argument("--hidden", default="256,256", help="trunk widths")
  parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
  parser.add_argument("--repeats", type=int, default=5, help="timed rounds per side (median reported)")
  parser.add_argument("--threads", type=int, default=1, help="CPU threads for JAX (XLA) and torch")
  parser.add_argument("--libmtl_dir", default="", help="unpacked LibMTL wheel: time its weighting classes")
  parser.add_argument("--json", default="", help="also write the results to this file")
  return parser.parse_args()


ARGS = parse_args()
if ARGS.threads == 1:  # before JAX starts: XLA's CPU thread pool
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                             "intra_op_parallelism_threads=1").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peer_libmtl  # noqa: E402

from metalax import mtl  # noqa: E402

AGGREGATORS = {
    "pcgrad": lambda num_tasks: mtl.pcgrad(jax.random.PRNGKey(0)),
    "mgda": lambda num_tasks: mtl.mgda(),
    "cagrad": lambda num_tasks: mtl.cagrad(0.5),
    "imtl_g": lambda num_tasks: mtl.imtl_g(),
    "gradvac": lambda num_tasks: mtl.gradvac(jax.random.PRNGKey(0), num_tasks),
    "fairgrad": lambda num_tasks: mtl.fairgrad(1.0, max_norm=0.0),  # LibMTL's: no clipping
    "db_mtl": lambda num_tasks: mtl.db_mtl(num_tasks),
    "config": lambda num_tasks: mtl.conflict_free(),
    "dualproj": lambda num_tasks: mtl.dualproj(),
}


def jax_step(method: str, num_tasks: int, hidden: tuple[int, ...], input_dim: int):
  """``(state, step)``: the jitted metalax step and its initial state."""
  widths = (input_dim,) + hidden
  keys = jax.random.split(jax.random.key(0), len(hidden) + num_tasks)
  trunk = [{"w": jax.random.normal(k, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)}
           for k, a, b in zip(keys, widths[:-1], widths[1:])]
  heads = {"w": jax.random.normal(keys[-1], (num_tasks, hidden[-1])) / np.sqrt(hidden[-1]),
           "b": jnp.zeros(num_tasks)}
  params = {"trunk": trunk, "heads": heads}
  optimizer = optax.adam(1e-3)

  def task_losses(params, inputs, targets):
    z = inputs
    for layer in params["trunk"]:
      z = jax.nn.relu(z @ layer["w"] + layer["b"])
    outputs = z @ params["heads"]["w"].T + params["heads"]["b"]  # [n, T]
    return jnp.mean((outputs - targets) ** 2, axis=0)

  aggregator = AGGREGATORS[method](num_tasks) if method != "ew" else None
  state = {"params": params, "opt_state": optimizer.init(params),
           "agg_state": aggregator.init(params["trunk"]) if aggregator else ()}

  @jax.jit
  def step(state, inputs, targets):
    params = state["params"]
    if aggregator is None:
      losses, grads = jax.value_and_grad(lambda p: jnp.sum(task_losses(p, inputs, targets)))(params)
      agg_state = state["agg_state"]
    else:
      losses, task_grads = mtl.task_gradients(task_losses, params, inputs, targets)
      trunk, agg_state = aggregator.update(task_grads["trunk"], state["agg_state"], params["trunk"],
                                           **({"task_losses": losses} if method == "db_mtl" else {}))
      grads = {"trunk": trunk, "heads": jax.tree.map(lambda g: g.sum(0), task_grads["heads"])}
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    return {"params": optax.apply_updates(params, updates), "opt_state": opt_state,
            "agg_state": agg_state}, jnp.sum(losses)

  return state, step


def jax_round(step, state, inputs, targets):
  """A fresh round: ``ARGS.steps`` metalax steps from ``state`` (every round times the same steps)."""

  def run():
    current = state
    for _ in range(ARGS.steps):
      current, loss = step(current, inputs, targets)
    jax.block_until_ready(loss)

  return run


def build_peer(method: str, num_tasks: int, hidden: tuple[int, ...]):
  """The peer's step function on a freshly initialised model (seed 0)."""
  torch.manual_seed(0)
  model = peer_libmtl.HardSharing(ARGS.input_dim, hidden, num_tasks)
  return (peer_libmtl.libmtl_step(ARGS.libmtl_dir, model, method) if ARGS.libmtl_dir
          else peer_libmtl.make_step(model, method))


def peer_round(make_peer, inputs, targets):
  """A fresh round: ``ARGS.steps`` steps of a newly built peer (same seed, so the same steps every round);
  each step ends with a Python float, so torch has finished."""
  peer = make_peer()

  def run():
    for _ in range(ARGS.steps):
      peer(inputs, targets)

  return run


def time_round(make_round) -> float:
  """Seconds for one round built by ``make_round()`` (building it is not timed)."""
  run = make_round()
  begin = time.perf_counter()
  run()
  return time.perf_counter() - begin


def main():
  torch.set_num_threads(ARGS.threads)
  hidden = tuple(int(h) for h in ARGS.hidden.split(","))
  rng = np.random.default_rng(0)
  results = []
  print(f"machine: {platform.machine()} {os.cpu_count()} cpus, {ARGS.threads} thread(s) per side; jax "
        f"{jax.__version__}, torch {torch.__version__}; peer: "
        f"{'LibMTL 1.1.5 classes from ' + ARGS.libmtl_dir if ARGS.libmtl_dir else 'peer_libmtl (LibMTL-style)'}")
  print(f"trunk {ARGS.input_dim}-{'-'.join(map(str, hidden))}, batch {ARGS.batch_size}; median of {ARGS.repeats} "
        f"rounds of {ARGS.steps} steps; ms per step")
  print(f"{'T':>4} {'method':<8}{'metalax':>10}{'peer':>10}{'peer/metalax':>14}")
  for num_tasks in (int(t) for t in ARGS.tasks.split(",")):
    inputs = rng.normal(size=(ARGS.batch_size, ARGS.input_dim)).astype(np.float32)
    targets = rng.normal(size=(ARGS.batch_size, num_tasks)).astype(np.float32)
    for method in ARGS.methods.split(","):
      state, step = jax_step(method, num_tasks, hidden, ARGS.input_dim)
      make_peer = functools.partial(build_peer, method, num_tasks, hidden)
      make_jax_round = functools.partial(jax_round, step, state, jnp.asarray(inputs), jnp.asarray(targets))
      make_peer_round = functools.partial(peer_round, make_peer, torch.from_numpy(inputs), torch.from_numpy(targets))
      # One side's rounds after the other's, each after a warm-up round (the first also compiles):
      # alternating round by round made every metalax round follow a torch round, which slowed the
      # metalax steps by 15-35% (MGDA, T=10) against the same rounds run back to back.
      time_round(make_jax_round)
      jax_times = [time_round(make_jax_round) for _ in range(ARGS.repeats)]
      time_round(make_peer_round)
      peer_times = [time_round(make_peer_round) for _ in range(ARGS.repeats)]
      jax_ms = 1000 * statistics.median(jax_times) / ARGS.steps
      peer_ms = 1000 * statistics.median(peer_times) / ARGS.steps
      results.append({"num_tasks": num_tasks, "method": method, "metalax_ms": jax_ms, "peer_ms": peer_ms,
                      "ratio": peer_ms / jax_ms})
      print(f"{num_tasks:>4} {method:<8}{jax_ms:>10.2f}{peer_ms:>10.2f}{peer_ms / jax_ms:>13.1f}x", flush=True)
  tasks = sorted({r["num_tasks"] for r in results})
  if len(tasks) > 1:
    print(f"scaling, step time at T={tasks[-1]} / T={tasks[0]}:")
    for method in ARGS.methods.split(","):
      by_t = {r["num_tasks"]: r for r in results if r["method"] == method}
      print(f"  {method:<8} metalax {by_t[tasks[-1]]['metalax_ms'] / by_t[tasks[0]]['metalax_ms']:6.1f}x   "
            f"peer {by_t[tasks[-1]]['peer_ms'] / by_t[tasks[0]]['peer_ms']:6.1f}x")
  if ARGS.json:
    with open(ARGS.json, "w") as f:
      json.dump({"args": vars(ARGS), "results": results}, f, indent=2)


if __name__ == "__main__":
  main()
