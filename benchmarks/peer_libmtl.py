"""The PyTorch peer of ``benchmarks/mtl_speed.py``: LibMTL-style multi-task steps, one backward pass per task.

LibMTL 1.1.5 (the PyPI release) downloads, but ``import LibMTL`` fails with the
installed torchvision 0.28 (``LibMTL/model/resnet.py`` imports
``torchvision.models.utils``, removed in torchvision 0.13). So the peer is a
minimal transcription of what LibMTL's trainer does for a hard-parameter-
sharing model (``LibMTL/weighting/abstract_weighting.py``):

* ``_compute_grad(losses, mode="backward")``: for each task,
  ``losses[t].backward(retain_graph=True)``, copy the shared parameters'
  gradients into row ``t`` of a ``[T, D]`` matrix (``_grad2vec``), zero them;
  the task heads accumulate their gradients over the ``T`` passes (their sum);
* the method's aggregation on that matrix, as LibMTL's ``PCGrad``, ``MGDA``
  (``MinNormSolver``, ``mgda_gn="none"``), ``CAGrad`` (SciPy SLSQP on the
  dual, ``calpha=0.5``, ``rescale=1``), ``IMTL`` (the gradient part's closed
  form; LibMTL also learns IMTL-L loss scales, left out here as in metalax's ``imtl_g``),
  ``GradVac`` (whole-model goals, ``beta=0.5``), ``FairGrad`` (SciPy ``least_squares``,
  ``alpha=1``) and ``DB_MTL`` (``beta=0.9``, the log-loss gradients as ``g / (L + 1e-8)``
  of the raw ones), and TorchJD's ``ConFIG`` (``torch.linalg.pinv``) and ``DualProj``
  (``quadprog`` through ``qpsolvers``); as on the metalax side, the heads get the plain sum
  (LibMTL's FairGrad and DB-MTL backpropagate weighted or log losses to them);
* ``_reset_grad`` writes the aggregated vector back and the optimizer steps.

``EW`` (equal weighting) is one backward pass of the summed loss, as LibMTL.

With ``libmtl_dir`` (the unpacked wheel, e.g. ``unzip LibMTL-1.1.5-py3-none-any.whl
-d DIR``), :func:`libmtl_step` drives LibMTL's own weighting classes instead:
the package's ``__init__`` (which fails) is bypassed by a stub package module,
and ``LibMTL.weighting`` is imported from the files as they are.
"""

import importlib
import os
import random
import sys
import types
from typing import Callable

import numpy as np
import torch
from scipy import optimize

METHODS = ("ew", "pcgrad", "mgda", "cagrad", "imtl_g", "gradvac", "fairgrad", "db_mtl", "config", "dualproj")


class HardSharing(torch.nn.Module):
  """A ReLU MLP trunk and ``num_tasks`` linear heads (one output each)."""

  def __init__(self, input_dim: int, hidden: tuple[int, ...], num_tasks: int):
    super().__init__()
    layers, width = [], input_dim
    for h in hidden:
      layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
      width = h
    self.encoder = torch.nn.Sequential(*layers)
    self.decoders = torch.nn.ModuleList(torch.nn.Linear(width, 1) for _ in range(num_tasks))

  def task_losses(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    z = self.encoder(inputs)
    outputs = torch.cat([head(z) for head in self.decoders], dim=1)  # [n, T]
    return ((outputs - targets) ** 2).mean(0)


def _pcgrad(grads: torch.Tensor) -> torch.Tensor:
  """LibMTL's PCGrad: every task, in a shuffled order of all tasks, projected off conflicting ones; summed."""
  pc_grads = grads.clone()
  num_tasks = grads.shape[0]
  for i in range(num_tasks):
    order = list(range(num_tasks))
    random.shuffle(order)
    for j in order:
      dot = torch.dot(pc_grads[i], grads[j])
      if dot < 0:
        pc_grads[i] -= dot * grads[j] / grads[j].norm().pow(2)
  return pc_grads.sum(0)


def _min_norm_2(v1v1: float, v1v2: float, v2v2: float) -> tuple[float, float]:
  if v1v2 >= v1v1:
    return 0.999, v1v1
  if v1v2 >= v2v2:
    return 0.001, v2v2
  gamma = -1.0 * ((v1v2 - v2v2) / (v1v1 + v2v2 - 2 * v1v2))
  return gamma, v2v2 + gamma * (v1v2 - v2v2)


def _next_point(current: np.ndarray, grad: np.ndarray, n: int) -> np.ndarray:
  proj_grad = grad - np.sum(grad) / n
  tm1 = -current[proj_grad < 0] / proj_grad[proj_grad < 0]
  tm2 = (1.0 - current[proj_grad > 0]) / proj_grad[proj_grad > 0]
  t = 1.0
  if len(tm1[tm1 > 1e-7]) > 0:
    t = np.min(tm1[tm1 > 1e-7])
  if len(tm2[tm2 > 1e-7]) > 0:
    t = min(t, np.min(tm2[tm2 > 1e-7]))
  return _projection_simplex(proj_grad * t + current)


def _projection_simplex(y: np.ndarray) -> np.ndarray:
  n = len(y)
  sorted_y = np.flip(np.sort(y), axis=0)
  tmpsum, tmax_f = 0.0, (np.sum(y) - 1.0) / n
  for i in range(n - 1):
    tmpsum += sorted_y[i]
    tmax = (tmpsum - 1) / (i + 1.0)
    if tmax > sorted_y[i + 1]:
      tmax_f = tmax
      break
  return np.maximum(y - tmax_f, np.zeros(y.shape))


def _min_norm_weights(gram: np.ndarray, max_iter: int = 250, stop_crit: float = 1e-5) -> np.ndarray:
  """Sener & Koltun's ``find_min_norm_element`` on the Gram matrix, as LibMTL's ``MinNormSolver``."""
  n = gram.shape[0]
  best, init = np.inf, None
  for i in range(n):
    for j in range(i + 1, n):
      gamma, cost = _min_norm_2(gram[i, i], gram[i, j], gram[j, j])
      if cost < best:
        best, init = cost, ((i, j), gamma)
  sol = np.zeros(n)
  (i, j), gamma = init
  sol[i], sol[j] = gamma, 1 - gamma
  if n < 3:
    return sol
  for _ in range(max_iter):
    grad = -1.0 * gram @ sol
    new_point = _next_point(sol, grad, n)
    v1v1 = sol @ gram @ sol
    v1v2 = sol @ gram @ new_point
    v2v2 = new_point @ gram @ new_point
    nc, _ = _min_norm_2(v1v1, v1v2, v2v2)
    new_sol = nc * sol + (1 - nc) * new_point
    if np.sum(np.abs(new_sol - sol)) < stop_crit:
      return sol
    sol = new_sol
  return sol


def _mgda(grads: torch.Tensor) -> torch.Tensor:
  gram = (grads @ grads.t()).double().numpy()
  weights = torch.from_numpy(_min_norm_weights(gram)).to(grads.dtype)
  return weights @ grads


def _cagrad(grads: torch.Tensor, calpha: float = 0.5, rescale: int = 1) -> torch.Tensor:
  """LibMTL's CAGrad: the dual over the simplex by SciPy SLSQP, then ``g0 + lambda g_w``."""
  num_tasks = grads.shape[0]
  gram = grads @ grads.t()
  x_start = np.ones(num_tasks) / num_tasks
  bounds = tuple((0, 1) for _ in x_start)
  constraints = {"type": "eq", "fun": lambda x: 1 - sum(x)}
  a = gram.numpy()
  b = x_start.copy()
  c = (calpha * np.sqrt(b @ a @ b + 1e-8)).item()

  def objective(x):
    return (x.reshape(1, -1) @ a @ b.reshape(-1, 1) + c * np.sqrt(x.reshape(1, -1) @ a @ x.reshape(-1, 1) + 1e-8)
            ).sum()

  w = torch.tensor(optimize.minimize(objective, x_start, bounds=bounds, constraints=constraints).x,
                   dtype=grads.dtype)
  gw = w @ grads
  lmbda = c / (gw.norm() + 1e-8)
  g = grads.mean(0) + lmbda * gw
  return g / (1 + calpha**2) if rescale == 1 else g / (1 + calpha) if rescale == 2 else g


def _imtl_g(grads: torch.Tensor) -> torch.Tensor:
  """LibMTL's IMTL closed form (gradient part)."""
  num_tasks = grads.shape[0]
  units = grads / torch.norm(grads, p=2, dim=-1, keepdim=True)
  d = grads[0:1].repeat(num_tasks - 1, 1) - grads[1:]
  u = units[0:1].repeat(num_tasks - 1, 1) - units[1:]
  alpha = grads[0] @ u.t() @ torch.inverse(d @ u.t())
  alpha = torch.cat((1 - alpha.sum().unsqueeze(0), alpha), dim=0)
  return alpha @ grads


def _make_gradvac(num_tasks: int, beta: float = 0.5) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """LibMTL's GradVac (``GradVac_group_type=0``, the whole model): PCGrad towards EMA similarity goals."""
  rho = torch.zeros(num_tasks, num_tasks)

  def aggregate(grads, losses):
    del losses
    pc_grads = grads.clone()
    for i in range(num_tasks):
      others = [j for j in range(num_tasks) if j != i]
      random.shuffle(others)
      for j in others:
        rho_ij = torch.dot(pc_grads[i], grads[j]) / (pc_grads[i].norm() * grads[j].norm() + 1e-8)
        if rho_ij < rho[i, j]:
          w = (pc_grads[i].norm() * (rho[i, j] * (1 - rho_ij**2).sqrt() - rho_ij * (1 - rho[i, j]**2).sqrt())
               / (grads[j].norm() * (1 - rho[i, j]**2).sqrt() + 1e-8))
          pc_grads[i] += grads[j] * w
        rho[i, j] = (1 - beta) * rho[i, j] + beta * rho_ij
    return pc_grads.sum(0)

  return aggregate


def _fairgrad(grads: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
  """LibMTL's FairGrad: ``least_squares`` on ``G w - w^(-1/alpha)`` from ``w = 1/T``, ``w >= 0``."""
  gram = (grads @ grads.t()).numpy()
  x_start = np.ones(grads.shape[0]) / grads.shape[0]
  w = optimize.least_squares(lambda x: gram @ x - np.power(1 / x, 1 / alpha), x_start, bounds=(0, np.inf)).x
  return torch.from_numpy(w).to(grads.dtype) @ grads


def _make_db_mtl(num_tasks: int, dim: int, beta: float = 0.9, beta_sigma: float = 0.0):
  """LibMTL's DB_MTL: EMA of the log-loss gradients, each task scaled to the largest norm."""
  buffer = torch.zeros(num_tasks, dim)
  step = [0]

  def aggregate(grads, losses):
    nonlocal buffer
    step[0] += 1
    batch_grads = grads / (losses.detach()[:, None] + 1e-8)  # the gradients of log(L + 1e-8)
    buffer = batch_grads + (beta / step[0]**beta_sigma) * (buffer - batch_grads)
    norms = buffer.norm(dim=-1)
    alpha = norms.max() / (norms + 1e-8)
    return sum(alpha[i] * buffer[i] for i in range(num_tasks))

  return aggregate


def _config(grads: torch.Tensor) -> torch.Tensor:
  """TorchJD's ConFIG (preference all ones)."""
  units = torch.nan_to_num(grads / grads.norm(dim=1).unsqueeze(1), 0.0)
  best = torch.linalg.pinv(units) @ torch.ones(grads.shape[0], dtype=grads.dtype)
  unit = torch.nn.functional.normalize(best, dim=0)
  return torch.sum(grads @ unit) * unit


def _dualproj(grads: torch.Tensor, norm_eps: float = 1e-4, reg_eps: float = 1e-4) -> torch.Tensor:
  """TorchJD's DualProj: the mean projected onto the dual cone, ``quadprog`` on the normalised Gram matrix."""
  from qpsolvers import solve_qp  # only this method needs it
  num_tasks = grads.shape[0]
  gram = grads @ grads.t()
  trace = gram.diagonal().sum()
  gram = torch.zeros_like(gram) if trace < norm_eps else gram / trace
  gram = (gram + reg_eps * torch.eye(num_tasks)).double().numpy()
  u = np.full(num_tasks, 1.0 / num_tasks)
  w = solve_qp(gram, np.zeros(num_tasks), -np.eye(num_tasks), -u, solver="quadprog")
  return torch.from_numpy(w).to(grads.dtype) @ grads


AGGREGATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "pcgrad": _pcgrad, "mgda": _mgda, "cagrad": _cagrad, "imtl_g": _imtl_g, "fairgrad": _fairgrad,
    "config": _config, "dualproj": _dualproj}
# Methods with state across steps: built per model, ``aggregate(grads [T, D], losses [T])``.
STATEFUL = {"gradvac": lambda num_tasks, dim: _make_gradvac(num_tasks),
            "db_mtl": lambda num_tasks, dim: _make_db_mtl(num_tasks, dim)}


def make_step(model: HardSharing, method: str, lr: float = 1e-3) -> Callable[[torch.Tensor, torch.Tensor], float]:
  """``step(inputs [n, d], targets [n, T]) -> summed loss``: one LibMTL-style training step."""
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}.")
  optimizer = torch.optim.Adam(model.parameters(), lr=lr)
  shared = list(model.encoder.parameters())
  sizes = [p.numel() for p in shared]
  num_tasks = len(model.decoders)
  if method in STATEFUL:
    aggregate = STATEFUL[method](num_tasks, sum(sizes))
  elif method != "ew":
    aggregate = lambda grads, losses: AGGREGATIONS[method](grads)

  def step(inputs, targets):
    optimizer.zero_grad()
    losses = model.task_losses(inputs, targets)
    if method == "ew":
      losses.sum().backward()
    else:
      num_tasks = losses.shape[0]
      grads = torch.zeros(num_tasks, sum(sizes))
      for t in range(num_tasks):  # _compute_grad(losses, mode="backward")
        losses[t].backward(retain_graph=t + 1 != num_tasks)
        grads[t] = torch.cat([p.grad.view(-1) for p in shared])
        for p in shared:
          p.grad.zero_()
      new_grads = aggregate(grads, losses)
      for p, g in zip(shared, torch.split(new_grads, sizes)):  # _reset_grad
        p.grad.data = g.view(p.shape).clone()
    optimizer.step()
    return float(losses.detach().sum())

  return step


LIBMTL_CLASSES = {"ew": "EW", "pcgrad": "PCGrad", "mgda": "MGDA", "cagrad": "CAGrad", "imtl_g": "IMTL"}
LIBMTL_KWARGS = {"mgda": {"mgda_gn": "none"}, "cagrad": {"calpha": 0.5, "rescale": 1}}


def libmtl_step(libmtl_dir: str, model: HardSharing, method: str, lr: float = 1e-3):
  """The same step driven by LibMTL 1.1.5's own weighting class (``IMTL`` includes its IMTL-L scales)."""
  if "LibMTL" not in sys.modules:
    package = types.ModuleType("LibMTL")  # stands in for LibMTL/__init__.py, whose imports fail
    package.__path__ = [os.path.join(libmtl_dir, "LibMTL")]
    sys.modules["LibMTL"] = package
  weighting = getattr(importlib.import_module("LibMTL.weighting"), LIBMTL_CLASSES[method])
  num_tasks = len(model.decoders)

  class Model(weighting):  # what LibMTL's Trainer builds: class MTLmodel(architecture, weighting)
    def __init__(self):
      super().__init__()
      self.net, self.task_num, self.device, self.rep_grad = model, num_tasks, "cpu", False
      self.task_name = [str(t) for t in range(num_tasks)]
      self.epoch = 0
      self.init_param()

    def get_share_params(self):
      return self.net.encoder.parameters()

    def zero_grad_share_params(self):
      self.net.encoder.zero_grad(set_to_none=False)  # LibMTL's zero_grad predates torch's set_to_none default

  mtl_model = Model()
  optimizer = torch.optim.Adam(mtl_model.parameters(), lr=lr)
  kwargs = LIBMTL_KWARGS.get(method, {})

  def step(inputs, targets):
    optimizer.zero_grad(set_to_none=False)
    losses = model.task_losses(inputs, targets)
    mtl_model.backward(losses, **kwargs)
    optimizer.step()
    return float(losses.detach().sum())

  return step
