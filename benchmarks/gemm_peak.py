r"""Float32 matmul throughput of this machine, and of the GEMM shapes in the Omniglot MAML step.

The speed targets of ``maml_speed.py`` translate into a FLOP rate: XLA counts
46.5 GFLOP in the strided Conv-4 meta-iteration and 171 GFLOP in the max-pool
one. This script measures what the machine can do: a large square matmul in
XLA, in torch (MKL / oneDNN) and in NumPy (its BLAS), and, in XLA, the GEMMs
that ``metalax.models.Conv4`` runs per task (see BUILD_NOTES.md "Speed against
learn2learn"). Median of ``--repeats`` calls, GFLOP/s.

Usage:
  python benchmarks/gemm_peak.py
  python benchmarks/gemm_peak.py --threads=1 --repeats=50
"""

import argparse
import os
import platform
import statistics
import time

PARSER = argparse.ArgumentParser(description=__doc__.split("\n")[0])
PARSER.add_argument("--threads", type=int, default=0, help="CPU threads for XLA and torch (0: all)")
PARSER.add_argument("--repeats", type=int, default=20)
ARGS = PARSER.parse_args()
if ARGS.threads == 1:  # before JAX starts
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                             "intra_op_parallelism_threads=1").strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402

# name: (lhs shape, rhs shape, contraction): "nn" is lhs @ rhs, "tn" is lhs.T @ rhs.
XLA_SHAPES = {
    "square 2048": ((2048, 2048), (2048, 2048), "nn"),
    "rows conv 14x14, forward [14700,192]x[192,192]": ((14700, 192), (192, 192), "nn"),
    "rows conv 14x14, kernel gradient": ((14700, 192), (14700, 192), "tn"),
    "nine-tap conv [14700,576]x[576,64]": ((14700, 576), (576, 64), "nn"),
    "strided conv 7x7 [3675,576]x[576,64]": ((3675, 576), (576, 64), "nn"),
    "first layer kernel gradient [58800,9]^T[58800,64]": ((58800, 9), (58800, 64), "tn"),
}


def median_seconds(fn, *args) -> float:
  fn(*args)
  times = []
  for _ in range(ARGS.repeats):
    begin = time.perf_counter()
    fn(*args)
    times.append(time.perf_counter() - begin)
  return statistics.median(times)


def flops(lhs, rhs, kind) -> int:
  m, k = (lhs[1], lhs[0]) if kind == "tn" else lhs
  return 2 * m * k * rhs[1]


def main():
  print(f"machine: {platform.machine()} {os.cpu_count()} cpus; threads: {ARGS.threads or 'all'}; jax {jax.__version__}")
  for name, (lhs, rhs, kind) in XLA_SHAPES.items():
    a = jax.random.normal(jax.random.key(0), lhs)
    b = jax.random.normal(jax.random.key(1), rhs)
    product = jax.jit(lambda a, b, kind=kind: a.T @ b if kind == "tn" else a @ b)
    seconds = median_seconds(lambda a, b, product=product: jax.block_until_ready(product(a, b)), a, b)
    print(f"  xla    {name:<52}{flops(lhs, rhs, kind) / seconds / 1e9:7.0f} GFLOP/s")
  n = 4096
  a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
  print(f"  numpy  {'square 4096':<52}{2 * n**3 / median_seconds(np.matmul, a, a) / 1e9:7.0f} GFLOP/s")
  try:
    import torch
  except ImportError:
    print("  torch  not installed")
    return
  if ARGS.threads:
    torch.set_num_threads(ARGS.threads)
  t = torch.from_numpy(a)
  print(f"  torch  {'square 4096':<52}{2 * n**3 / median_seconds(torch.matmul, t, t) / 1e9:7.0f} GFLOP/s")


if __name__ == "__main__":
  main()
