"""Tests for metalax.mtl.experts: CGC/PLE, DSelect-k and sluice networks against forward passes
computed by hand in NumPy from the same parameters."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax import mtl
from metalax.mtl import experts

X = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def _relu(z):
  return np.maximum(z, 0.0)


def _experts(p, x):
  """Stacked default experts (one Dense + ReLU): ``[E, n, w]``."""
  return _relu(np.einsum("nd,edw->enw", x, p["Dense_0"]["kernel"]) + p["Dense_0"]["bias"][:, None])


def _dense(p, x):
  return x @ p["kernel"] + p["bias"]


def _random_params(model, seed, scale=0.7, inputs=X[:1]):
  """Parameters of ``model``'s shapes drawn in NumPy (no init program to compile; biases and gates,
  zeros or tiny at init, become generic)."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), inputs)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (scale * rng.normal(size=s.shape)).astype(np.float32), shapes)


def test_ple_and_cgc_match_hand_computed_forward():
  counts = (1, 2)
  ple = mtl.PLE(num_outputs=(2, 1), num_levels=2, num_shared_experts=2, num_task_experts=counts,
                expert_features=((3,), (4,)), tower_features=())
  cgc = mtl.CGC(num_outputs=(2, 1), num_shared_experts=2, num_task_experts=counts,
                expert_features=(3,), tower_features=())
  ple_params, cgc_params = _random_params(ple, 1), _random_params(cgc, 2)
  run = jax.jit(lambda pp, cp, x: (ple.apply({"params": pp}, x), cgc.apply({"params": cp}, x)))
  ple_out, cgc_out = run(ple_params, cgc_params, X)

  def forward(p, num_levels):
    x = X.astype(np.float64)
    reps, shared_rep = [x, x], x
    for level in range(num_levels):
      shared = _experts(p[f"shared_experts_{level}"], shared_rep)
      own = [_experts(p[f"task_{t}_experts_{level}"], reps[t]) for t in range(2)]
      new = []
      for t in range(2):
        candidates = np.concatenate([shared, own[t]])
        gates = _softmax(_dense(p[f"task_{t}_gate_{level}"], reps[t]))
        new.append(np.einsum("ne,enw->nw", gates, candidates))
      if level < num_levels - 1:
        gates = _softmax(_dense(p[f"shared_gate_{level}"], shared_rep))
        shared_rep = np.einsum("ne,enw->nw", gates, np.concatenate([shared] + own))
      reps = new
    return [_dense(p[f"task_{t}_tower"]["head"], reps[t]) for t in range(2)]

  for got, expected in zip(ple_out, forward(_np(ple_params), 2)):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  for got, expected in zip(cgc_out, forward(_np(cgc_params), 1)):
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  assert "shared_gate_0" not in cgc_params and "shared_gate_1" not in ple_params
  assert ple_params["task_1_experts_1"]["Dense_0"]["kernel"].shape == (2, 3, 4)
  mask = mtl.experts_shared_mask(ple_params)
  assert mask["shared_gate_0"]["kernel"] and not mask["task_0_tower"]["head"]["kernel"]
  with pytest.raises(ValueError, match="one per level"):
    mtl.PLE(num_outputs=(1, 1), num_levels=3, expert_features=((3,), (4,))).init(
        jax.random.key(0), X[:1])


def test_ple_takes_one_expert_module_per_level():
  class Conv(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.relu(nn.Conv(2, (3, 3))(x))

  model = mtl.PLE(num_outputs=(1, 3), num_levels=2, experts=[Conv(), Conv()], tower_features=())
  images = jnp.ones((2, 6, 6, 1))
  params = _random_params(model, 0, inputs=images)
  outputs = jax.jit(model.apply)({"params": params}, images)
  assert [o.shape for o in outputs] == [(2, 1), (2, 3)]
  assert params["shared_experts_1"]["Conv_0"]["kernel"].shape == (1, 3, 3, 2, 2)


def test_smooth_step_and_dselect_k_match_hand_computed_forward_and_regularizer():
  t = np.linspace(-0.7, 0.7, 15)
  expected = np.where(t <= -0.5, 0, np.where(t >= 0.5, 1, -2 * t**3 + 1.5 * t + 0.5))
  np.testing.assert_allclose(mtl.smooth_step(jnp.asarray(t)), expected, atol=1e-7)
  gamma, num_experts, k = 2.0, 5, 2  # 5 experts: 3 binary digits, 3 unreachable codes
  model = mtl.DSelectK(num_outputs=(2, 1), num_experts=num_experts, num_nonzeros=k, gamma=gamma,
                       expert_features=(3,), tower_features=())
  params = _random_params(model, 3, scale=0.3)  # smooth steps inside (0, 1)
  assert params["task_0_gate"]["z_logits"]["kernel"].shape == (5, k * 3)
  outputs, state = jax.jit(lambda p, x: model.apply({"params": p}, x, deterministic=False,
                                                     mutable=["losses"]))(params, X)
  p = _np(params)
  x = X.astype(np.float64)
  experts = _experts(p["experts"], x)
  codes = np.array([[int(b) for b in np.binary_repr(e, width=3)] for e in range(num_experts)])
  penalty = 0.0
  for task in range(2):
    gate = p[f"task_{task}_gate"]
    s = np.clip(_dense(gate["z_logits"], x).reshape(-1, k, 3), -gamma / 2, gamma / 2)
    s = -2 / gamma**3 * s**3 + 3 / (2 * gamma) * s + 0.5
    selectors = np.prod(np.where(codes[None, None], s[:, :, None], 1 - s[:, :, None]), -1)  # [n, k, E]
    weights = np.einsum("nk,nke->ne", _softmax(_dense(gate["w_logits"], x)), selectors)
    expected = _dense(p[f"task_{task}_tower"]["head"], np.einsum("ne,enw->nw", weights, experts))
    np.testing.assert_allclose(outputs[task], expected, rtol=1e-5, atol=1e-5)
    penalty += 1e-6 * -np.sum(selectors * np.log(selectors + 1e-6)) + np.sum(1 / selectors.sum(-1))
  np.testing.assert_allclose(sum(jax.tree.leaves(state["losses"])), penalty, rtol=1e-5)
  # Saturated logits select single experts exactly: weights are a convex mix of one-hots.
  sel = mtl.smooth_step(jnp.array([1.0, -1.0]))
  assert sel.tolist() == [1.0, 0.0]


def test_sluice_matches_hand_computed_forward_and_penalty():
  groups = 2
  model = mtl.Sluice(num_outputs=(2, 1), features=(4, 4), num_subspaces=groups)
  alpha = experts._sluice_alpha_init(groups, "imbalanced")(None, (4, 4))  # what init uses
  np.testing.assert_allclose(alpha, np.kron([[0.9, 0.1], [0.1, 0.9]], np.eye(2)), atol=1e-7)
  params = _random_params(model, 4)
  outputs = jax.jit(model.apply)({"params": params}, X)
  p = _np(params)
  h = np.stack([X.astype(np.float64)] * 2)
  layers = []
  for layer in range(2):
    k, b = p[f"layer_{layer}"]["kernel"], p[f"layer_{layer}"]["bias"]
    h = _relu(np.einsum("tnd,tdw->tnw", h, k) + b[:, None])
    mixed = np.zeros_like(h)
    a = p[f"sluice_{layer}"]
    for t in range(2):
      for g in range(groups):
        for s in range(2):
          for g2 in range(groups):
            mixed[t, :, 2 * g:2 * g + 2] += a[t * groups + g, s * groups + g2] * h[s, :, 2 * g2:2 * g2 + 2]
    h = mixed
    layers.append(h)
  for t in range(2):
    beta = p[f"task_{t}_layer_stitch"]
    rep = beta[0] * layers[0][t] + beta[1] * layers[1][t]
    np.testing.assert_allclose(outputs[t], _dense(p[f"task_{t}_head"], rep), rtol=1e-5, atol=1e-5)
  expected = 0.0
  for layer in range(2):
    for t in range(2):
      kernel = p[f"layer_{layer}"]["kernel"][t]
      expected += np.sum((kernel[:, :2].T @ kernel[:, 2:]) ** 2)
  np.testing.assert_allclose(mtl.sluice_subspace_penalty(params, groups), expected, rtol=1e-5)
  mask = mtl.experts_shared_mask(params)
  assert mask["sluice_1"] and mask["layer_0"]["kernel"] and not mask["task_1_layer_stitch"]
  with pytest.raises(ValueError, match="divisible"):
    mtl.Sluice(num_outputs=(1, 1), features=(3,)).init(jax.random.key(0), X[:1])
