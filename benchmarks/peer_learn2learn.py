#!/usr/bin/env python
"""PyTorch peer of metalax's speed benchmark: MAML in learn2learn 0.2.0.

Runs ONE configuration and prints exactly one JSON line on stdout, e.g.

    python benchmarks/peer_learn2learn.py --config sinusoid_1step

    {"peer": "learn2learn", "config": "sinusoid_1step", "ms_per_iteration": ...,
     "ms_per_iteration_min": ..., "peak_rss_mb": ..., "num_params": 1761, ...}

One iteration is one meta-training step written the standard learn2learn way:

    for each task in the meta-batch:
        learner = maml.clone()
        for _ in range(inner_steps):
            learner.adapt(loss(learner(support_x), support_y))
        meta_loss += loss(learner(query_x), query_y)
    (meta_loss / meta_batch).backward(); opt.step(); opt.zero_grad()

with ``l2l.algorithms.MAML(model, lr=inner_lr, first_order=False)`` (second
order) and Adam(1e-3). The data are fixed random tensors of the right shapes,
made once before timing, so no data loading is timed.

Configurations:
  sinusoid_1step / sinusoid_5step: MLP 1-40-40-1 (ReLU), 25 tasks, K=10 support
      and 10 query points, MSE, inner lr 0.01, 1 / 5 inner steps.
  omniglot_strided: l2l.vision.models.OmniglotCNN(output_size=5) (4x [conv 3x3
      stride 2 pad 1, BN, ReLU], spatial mean, Linear(64, 5)), 5-way 1-shot,
      15 queries per class, 1x28x28 inputs, 32 tasks, 1 inner step, lr 0.4, CE.
  omniglot_maxpool: l2l.vision.models.CNN4(output_size=5, hidden_size=64,
      layers=4, channels=1, max_pool=True, embedding_size=64) (4x [conv 3x3
      stride 1 pad 1, BN, ReLU, max-pool 2x2]; 28->14->7->3->1, so 64 flattened
      features, Linear(64, 5)); otherwise as omniglot_strided.

The install this needs is benchmarks/install_peer.sh (see benchmarks/PEER.md).
"""

import argparse
import contextlib
import json
import os
import resource
import statistics
import sys
import time

import torch

# learn2learn imports gym, whose import prints a deprecation notice; keep stdout
# for the single JSON line by sending anything printed during the import to stderr.
with contextlib.redirect_stdout(sys.stderr):
  import learn2learn as l2l


CONFIGS = {
  # name: (kind, inner_steps, default_iterations, default_warmup)
  "sinusoid_1step": ("sinusoid", 1, 300, 20),
  "sinusoid_5step": ("sinusoid", 5, 150, 10),
  "omniglot_strided": ("omniglot_strided", 1, 30, 3),
  "omniglot_maxpool": ("omniglot_maxpool", 1, 20, 2),
}

SINUSOID = {
  "meta_batch": 25,
  "k_support": 10,
  "k_query": 10,
  "hidden": 40,
  "inner_lr": 0.01,
}
OMNIGLOT = {
  "meta_batch": 32,
  "ways": 5,
  "shots": 1,
  "queries": 15,
  "hidden": 64,
  "inner_lr": 0.4,
}
OUTER_LR = 1e-3


def sinusoid_mlp():
  h = SINUSOID["hidden"]
  return torch.nn.Sequential(
    torch.nn.Linear(1, h),
    torch.nn.ReLU(),
    torch.nn.Linear(h, h),
    torch.nn.ReLU(),
    torch.nn.Linear(h, 1),
  )


def sinusoid_data(gen):
  """Support/query points of meta_batch sine tasks y = A sin(x - phase)."""
  b, ks, kq = SINUSOID["meta_batch"], SINUSOID["k_support"], SINUSOID["k_query"]
  amp = torch.rand(b, 1, 1, generator=gen) * 4.9 + 0.1
  phase = torch.rand(b, 1, 1, generator=gen) * torch.pi
  xs = torch.rand(b, ks, 1, generator=gen) * 10.0 - 5.0
  xq = torch.rand(b, kq, 1, generator=gen) * 10.0 - 5.0
  return xs, amp * torch.sin(xs - phase), xq, amp * torch.sin(xq - phase)


def omniglot_net(kind):
  ways, hidden = OMNIGLOT["ways"], OMNIGLOT["hidden"]
  if kind == "omniglot_strided":
    return l2l.vision.models.OmniglotCNN(output_size=ways, hidden_size=hidden, layers=4)
  # 28 -> 14 -> 7 -> 3 -> 1 after four floor 2x2 max-pools: 64 * 1 * 1 features.
  return l2l.vision.models.CNN4(
    output_size=ways,
    hidden_size=hidden,
    layers=4,
    channels=1,
    max_pool=True,
    embedding_size=hidden,
  )


def omniglot_data(gen):
  """Random 1x28x28 images; labels 0..ways-1 (shots per class in support)."""
  b, ways = OMNIGLOT["meta_batch"], OMNIGLOT["ways"]
  ns, nq = ways * OMNIGLOT["shots"], ways * OMNIGLOT["queries"]
  xs = torch.rand(b, ns, 1, 28, 28, generator=gen)
  xq = torch.rand(b, nq, 1, 28, 28, generator=gen)
  ys = torch.arange(ways).repeat_interleave(OMNIGLOT["shots"]).expand(b, ns).contiguous()
  yq = torch.arange(ways).repeat_interleave(OMNIGLOT["queries"]).expand(b, nq).contiguous()
  return xs, ys, xq, yq


def build(config):
  kind, inner_steps, _, _ = CONFIGS[config]
  gen = torch.Generator().manual_seed(0)
  if kind == "sinusoid":
    model = sinusoid_mlp()
    data = sinusoid_data(gen)
    loss_fn = torch.nn.MSELoss()
    inner_lr = SINUSOID["inner_lr"]
  else:
    model = omniglot_net(kind)
    data = omniglot_data(gen)
    loss_fn = torch.nn.CrossEntropyLoss()
    inner_lr = OMNIGLOT["inner_lr"]
  model.train()
  num_params = sum(p.numel() for p in model.parameters())
  maml = l2l.algorithms.MAML(model, lr=inner_lr, first_order=False)
  opt = torch.optim.Adam(maml.parameters(), lr=OUTER_LR)
  return maml, opt, loss_fn, data, inner_steps, num_params


def meta_step(maml, opt, loss_fn, data, inner_steps):
  xs, ys, xq, yq = data
  meta_batch = xs.shape[0]
  meta_loss = 0.0
  for t in range(meta_batch):
    learner = maml.clone()
    for _ in range(inner_steps):
      learner.adapt(loss_fn(learner(xs[t]), ys[t]))
    meta_loss = meta_loss + loss_fn(learner(xq[t]), yq[t])
  meta_loss = meta_loss / meta_batch
  meta_loss.backward()
  opt.step()
  opt.zero_grad()
  return meta_loss.item()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True, choices=sorted(CONFIGS))
  parser.add_argument("--iterations", type=int, default=None, help="timed iterations")
  parser.add_argument("--warmup", type=int, default=None, help="untimed iterations first")
  parser.add_argument(
    "--threads",
    type=int,
    default=None,
    help="torch.set_num_threads (default: torch's own choice)",
  )
  args = parser.parse_args(argv)

  _, _, default_iters, default_warmup = CONFIGS[args.config]
  iterations = default_iters if args.iterations is None else args.iterations
  warmup = default_warmup if args.warmup is None else args.warmup
  if iterations < 1 or warmup < 0:
    parser.error("need --iterations >= 1 and --warmup >= 0")
  if args.threads is not None:
    torch.set_num_threads(args.threads)
  torch.manual_seed(0)

  maml, opt, loss_fn, data, inner_steps, num_params = build(args.config)

  for _ in range(warmup):
    meta_step(maml, opt, loss_fn, data, inner_steps)
  times_ms = []
  loss = float("nan")
  for _ in range(iterations):
    start = time.perf_counter()
    loss = meta_step(maml, opt, loss_fn, data, inner_steps)  # .item() syncs
    times_ms.append((time.perf_counter() - start) * 1e3)

  # ru_maxrss is in KiB on Linux
  peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
  result = {
    "peer": "learn2learn",
    "config": args.config,
    "ms_per_iteration": round(statistics.median(times_ms), 3),
    "ms_per_iteration_min": round(min(times_ms), 3),
    # mean >> median means other processes took the CPU during some iterations
    "ms_per_iteration_mean": round(statistics.fmean(times_ms), 3),
    "iterations": iterations,
    "warmup": warmup,
    "peak_rss_mb": round(peak_rss_mb, 1),
    "num_params": num_params,
    "final_meta_loss": round(loss, 6),
    "torch": torch.__version__,
    "learn2learn": l2l.__version__,
    "threads": torch.get_num_threads(),
    "loadavg_1min": round(os.getloadavg()[0], 2),
  }
  print(json.dumps(result), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
