"""Tests for metalax.mtl.architectures: shapes, per-task paths, gradients, jit."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metalax.models import MLP
from metalax.mtl import architectures

KEY = jax.random.key(0)
X = jax.random.normal(jax.random.key(1), (4, 2, 3))  # flattened to [4, 6]
NUM_OUTPUTS = (3, 1)

# tanh rather than ReLU: no unit is dead on the few test inputs, so every parameter a task can reach gets a non-zero
# gradient from it (the shared_mask check below relies on that).
MODELS = {
    "hard": architectures.HardParameterSharing(NUM_OUTPUTS, trunk_features=(8,), head_features=(4,),
                                               activation=jnp.tanh),
    "mmoe": architectures.MMoE(NUM_OUTPUTS, num_experts=3, expert_features=(8,), tower_features=(4,),
                               activation=jnp.tanh),
    "omoe": architectures.MMoE(NUM_OUTPUTS, num_experts=3, expert_features=(8,), single_gate=True,
                               activation=jnp.tanh),
    "cross_stitch": architectures.CrossStitch(NUM_OUTPUTS, features=(8, 8), activation=jnp.tanh),
    "task_routing": architectures.TaskRouting(NUM_OUTPUTS, features=(8, 8), activation=jnp.tanh),
    "soft": architectures.SoftParameterSharing(NUM_OUTPUTS, features=(8, 8), activation=jnp.tanh),
    "mtan": architectures.MTAN(NUM_OUTPUTS, features=(8, 8), activation=jnp.tanh),
    **{f"conditioned_{c}": architectures.TaskConditioned(NUM_OUTPUTS, conditioning=c, trunk_features=(8,), features=6,
                                                         activation=jnp.tanh)
       for c in architectures.CONDITIONINGS},
}


def _init(model, inputs=X):
  return model.init(KEY, inputs)["params"]


def _random_params(model, seed, inputs=X):
  """Random parameters of ``model`` (non-zero biases too), drawn on the host.

  The shapes come from ``jax.eval_shape`` (tracing only), so no initialiser is
  compiled: the tests stay fast on a loaded CPU.
  """
  shapes = jax.eval_shape(model.init, KEY, inputs)["params"]
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype), shapes)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_shapes_jit_and_gradients_reach_every_parameter(name):
  model = MODELS[name]
  params = _random_params(model, 2)
  apply = lambda p: model.apply({"params": p}, X)
  outputs = apply(params)
  assert isinstance(outputs, tuple)
  assert [o.shape for o in outputs] == [(4, 3), (4, 1)]
  for a, b in zip(jax.jit(apply)(params), outputs):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Per-task gradients: every parameter leaf gets one from some task, and shared_mask marks a leaf shared exactly
  # when two tasks' gradients are non-zero at the same entry (stacked per-task leaves, [T, ...] columns, attention
  # or heads, are reached by every task, but each in its own row).
  per_task = jax.jit(jax.jacrev(lambda p: jnp.stack([jnp.sum(jnp.sin(o)) for o in apply(p)])))(params)
  flat = jax.tree_util.tree_flatten_with_path(per_task)[0]
  dead = [jax.tree_util.keystr(path) for path, g in flat if not float(jnp.max(jnp.abs(g))) > 0]
  assert not dead, f"no gradient reaches {dead}"
  mask = architectures.shared_mask(params)
  for (path, grads), flag in zip(flat, jax.tree.leaves(mask)):
    reached = np.abs(np.asarray(grads)) > 0  # [T, *shape]
    assert flag == bool(np.any(reached.sum(0) > 1)), (jax.tree_util.keystr(path), flag)


@pytest.mark.parametrize("name", ["hard", "mmoe", "cross_stitch", "soft", "mtan"])
def test_heads_are_task_specific(name):
  # Task 1's output does not depend on task 0's head.
  model = MODELS[name]
  params = _random_params(model, 1)
  prefix = "tower_" if name == "mmoe" else "head_"
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, X)[1])))(params)
  assert all(float(jnp.max(jnp.abs(g))) == 0 for g in jax.tree.leaves(grads[prefix + "0"]))


def test_mmoe_with_one_expert_equals_shared_bottom():
  mmoe = architectures.MMoE(NUM_OUTPUTS, num_experts=1, expert_features=(8, 5),
                            tower_features=(4,))
  shared = architectures.HardParameterSharing(NUM_OUTPUTS, trunk_features=(8, 5),
                                              head_features=(4,))
  mmoe_params = _random_params(mmoe, 3)
  shared_params = {
      "trunk": jax.tree.map(lambda leaf: leaf[0], mmoe_params["experts"]),
      "head_0": mmoe_params["tower_0"],
      "head_1": mmoe_params["tower_1"],
  }
  for a, b in zip(mmoe.apply({"params": mmoe_params}, X),
                  shared.apply({"params": shared_params}, X)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _manual_mmoe(params, x, gate_names, keep=None):
  x = x.reshape(x.shape[0], -1)
  experts = params["experts"]["Dense_0"]
  expert_out = jax.nn.relu(jnp.einsum("nd,edk->enk", x, experts["kernel"])
                           + experts["bias"][:, None])
  outputs = []
  for t, gate_name in enumerate(gate_names):
    logits = x @ params[gate_name]["kernel"] + params[gate_name]["bias"]
    if keep is not None:
      logits = jnp.where(keep[t], logits, -jnp.inf)
    mixture = jnp.einsum("ne,enk->nk", jax.nn.softmax(logits), expert_out)
    tower = MLP(features=(), num_outputs=NUM_OUTPUTS[t])
    outputs.append(tower.apply({"params": params[f"tower_{t}"]}, mixture))
  return outputs


@pytest.mark.parametrize("single_gate", [False, True])
def test_mmoe_and_omoe_match_the_paper_formula(single_gate):
  model = architectures.MMoE(NUM_OUTPUTS, num_experts=3, expert_features=(8,),
                             tower_features=(), single_gate=single_gate)
  params = _random_params(model, 4)
  gates = ["gate_0", "gate_0"] if single_gate else ["gate_0", "gate_1"]
  assert ("gate_1" in params) != single_gate
  for a, b in zip(model.apply({"params": params}, X), _manual_mmoe(params, X, gates)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mmoe_expert_dropout_needs_rng_and_renormalises():
  model = architectures.MMoE(NUM_OUTPUTS, num_experts=4, expert_features=(8,),
                             tower_features=(), expert_dropout=0.5)
  params = _random_params(model, 5)
  # Evaluation (deterministic, the default) is the plain MMoE: no key needed.
  plain = _manual_mmoe(params, X, ["gate_0", "gate_1"])
  for a, b in zip(model.apply({"params": params}, X), plain):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  with pytest.raises(Exception, match="dropout"):
    model.apply({"params": params}, X, deterministic=False)
  outputs, state = model.apply({"params": params}, X, deterministic=False,
                               rngs={"dropout": jax.random.key(7)}, mutable=["intermediates"])
  (gates,) = state["intermediates"]["gates"]
  assert gates.shape == (2, 4, 4)
  np.testing.assert_allclose(jnp.sum(gates, axis=-1), 1.0, rtol=1e-6)
  keep = gates > 0
  assert 0 < int(jnp.sum(~keep)) < keep.size  # some, not all, gate weights dropped
  # The outputs are MMoE with the dropped experts removed from each softmax.
  for a, b in zip(outputs, _manual_mmoe(params, X, ["gate_0", "gate_1"], keep)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  other = model.apply({"params": params}, X, deterministic=False,
                      rngs={"dropout": jax.random.key(8)})
  assert not np.allclose(other[0], outputs[0])


def test_cross_stitch_initialisation():
  params = _init(architectures.CrossStitch((1, 1, 1), features=(4,)))
  expected = 0.9 * np.eye(3) + 0.05 * (1 - np.eye(3))
  np.testing.assert_allclose(params["cross_stitch_0"], expected, rtol=1e-6)
  params = _init(architectures.CrossStitch((1, 1, 1), features=(4,), other_weight=0.1))
  np.testing.assert_allclose(params["cross_stitch_0"], 0.9 * np.eye(3) + 0.1 * (1 - np.eye(3)),
                             rtol=1e-6)


def test_cross_stitch_with_identity_mixing_is_independent_networks():
  model = architectures.CrossStitch(NUM_OUTPUTS, features=(8, 5))
  params = _random_params(model, 6)
  params = {**params, "cross_stitch_0": jnp.eye(2), "cross_stitch_1": jnp.eye(2)}
  outputs = model.apply({"params": params}, X)
  for t, width in enumerate(NUM_OUTPUTS):
    task_params = {"Dense_0": jax.tree.map(lambda leaf: leaf[t], params["layer_0"]),
                   "Dense_1": jax.tree.map(lambda leaf: leaf[t], params["layer_1"]),
                   "head": params[f"head_{t}"]["head"]}
    single = MLP(features=(8, 5), num_outputs=width).apply({"params": task_params}, X)
    np.testing.assert_allclose(outputs[t], single, rtol=1e-5, atol=1e-6)
  # A non-identity unit mixes: task 0 now depends on task 1's first layer.
  params["cross_stitch_0"] = jnp.array([[0.9, 0.1], [0.1, 0.9]])
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, X)[0])))(params)
  assert float(jnp.max(jnp.abs(grads["layer_0"]["kernel"][1]))) > 0


def test_task_routing_masks_ratio_and_fixed_per_task():
  masks = architectures.task_routing_masks(6, 20, sharing_ratio=0.3, seed=4)
  assert masks.shape == (6, 20) and set(np.unique(masks)) == {0.0, 1.0}
  np.testing.assert_array_equal(masks.sum(axis=1), 6)
  np.testing.assert_array_equal(masks, architectures.task_routing_masks(6, 20, 0.3, seed=4))
  assert not np.array_equal(masks, architectures.task_routing_masks(6, 20, 0.3, seed=5))
  assert len({row.tobytes() for row in masks}) == 6  # different subsets per task
  np.testing.assert_array_equal(architectures.task_routing_masks(2, 5, 1.0), 1.0)
  with pytest.raises(ValueError, match="keeps no unit"):
    architectures.task_routing_masks(2, 4, sharing_ratio=0.1)


def test_task_routing_network_routes_each_task_through_its_masks():
  model = architectures.TaskRouting(NUM_OUTPUTS, features=(8, 6), sharing_ratio=0.5, seed=3)
  params = _random_params(model, 7)
  outputs = model.apply({"params": params}, X)
  masks = [architectures.task_routing_masks(2, width, 0.5, (3, layer))
           for layer, width in enumerate((8, 6))]
  x = X.reshape(4, -1)
  for t in range(2):
    h = jax.nn.relu(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"]) * masks[0][t]
    h = jax.nn.relu(h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]) * masks[1][t]
    head = params[f"head_{t}"]["head"]
    np.testing.assert_allclose(outputs[t], h @ head["kernel"] + head["bias"], rtol=1e-5,
                               atol=1e-6)
  # Units switched off for a task get no gradient from that task.
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, X)[0])))(params)
  off = masks[1][0] == 0
  assert float(jnp.max(jnp.abs(grads["Dense_1"]["kernel"][:, off]))) == 0
  assert float(jnp.max(jnp.abs(grads["Dense_1"]["kernel"][:, ~off]))) > 0


def test_task_routing_layer_per_example_matches_all_tasks():
  layer = architectures.TaskRoutingLayer(num_tasks=3, sharing_ratio=0.5, seed=2)
  h = jax.random.normal(KEY, (4, 6))
  task_ids = jnp.array([2, 0, 1, 2])
  every = layer.apply({}, h)
  assert every.shape == (3, 4, 6)
  np.testing.assert_allclose(layer.apply({}, h, task_ids), every[task_ids, jnp.arange(4)])
  np.testing.assert_allclose(layer.apply({}, h, 1), every[1])
  assert layer.init(KEY, h, task_ids) == {}  # no variables


def test_soft_sharing_penalty_matches_numpy_and_is_zero_when_tied():
  model = architectures.SoftParameterSharing((2, 2, 2), features=(5, 4))
  columns = _random_params(model, 9)["columns"]
  penalty = jax.jit(architectures.soft_sharing_penalty)
  reference = 0.0
  for leaf in jax.tree.leaves(columns):
    flat = np.asarray(leaf, np.float64).reshape(3, -1)
    reference += sum(np.sum((flat[i] - flat[j]) ** 2)
                     for i, j in itertools.combinations(range(3), 2))
  np.testing.assert_allclose(penalty(columns), reference, rtol=1e-5)
  np.testing.assert_allclose(penalty(columns, weight=0.1),
                             0.1 * reference, rtol=1e-5)
  per_task = [jax.tree.map(lambda leaf, t=t: leaf[t], columns) for t in range(3)]
  np.testing.assert_allclose(penalty(per_task), reference, rtol=1e-5)
  tied = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf[:1], leaf.shape), columns)
  assert float(penalty(tied)) == 0.0
  # Its gradient pulls each column towards the others: 2 T (theta_t - mean).
  grads = jax.jit(jax.grad(architectures.soft_sharing_penalty))(columns)
  kernel = columns["Dense_0"]["kernel"]
  np.testing.assert_allclose(grads["Dense_0"]["kernel"],
                             6.0 * (kernel - jnp.mean(kernel, axis=0)), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="leading task axis"):
    architectures.soft_sharing_penalty({"a": jnp.ones((2, 3)), "b": jnp.ones((3, 3))})


def test_mtan_with_open_attention_is_hard_sharing():
  model = architectures.MTAN(NUM_OUTPUTS, features=(8, 5))
  params = _random_params(model, 8)
  # Saturate every attention mask at 1: zero weights, a large final bias.
  attention = dict(params["attention"])
  for layer in range(2):
    name = f"attention_{layer}_1"
    attention[name] = {"kernel": jnp.zeros_like(attention[name]["kernel"]),
                       "bias": jnp.full_like(attention[name]["bias"], 40.0)}
  params = {**params, "attention": attention}
  shared = architectures.HardParameterSharing(NUM_OUTPUTS, trunk_features=(8, 5))
  shared_params = {"trunk": {"Dense_0": params["Dense_0"], "Dense_1": params["Dense_1"]},
                   "head_0": params["head_0"], "head_1": params["head_1"]}
  for a, b in zip(model.apply({"params": params}, X),
                  shared.apply({"params": shared_params}, X)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_architectures_reject_bad_num_outputs():
  with pytest.raises(ValueError, match="one output width per task"):
    architectures.HardParameterSharing(num_outputs=3).init(KEY, X)
  with pytest.raises(ValueError, match="expert_dropout"):
    architectures.MMoE(NUM_OUTPUTS, expert_dropout=1.0).init(KEY, X)


class TinyConv(nn.Module):
  """A user's own trunk on images ``[n, h, w, c]``: conv, ReLU, average pool (no flattening)."""

  @nn.compact
  def __call__(self, x):
    return jnp.mean(nn.relu(nn.Conv(5, (3, 3))(x)), axis=(1, 2), keepdims=True)  # [n, 1, 1, 5]


IMAGES = jax.random.normal(jax.random.key(3), (4, 6, 6, 1))
WITH_TRUNK = {
    "hard": architectures.HardParameterSharing(NUM_OUTPUTS, trunk=TinyConv()),
    "mmoe": architectures.MMoE(NUM_OUTPUTS, experts=TinyConv(), num_experts=2, tower_features=(4,)),
    "cross_stitch": architectures.CrossStitch(NUM_OUTPUTS, trunk=TinyConv(), features=(4,)),
    "task_routing": architectures.TaskRouting(NUM_OUTPUTS, trunk=TinyConv(), features=(4,)),
    "soft": architectures.SoftParameterSharing(NUM_OUTPUTS, columns=TinyConv()),
    "mtan": architectures.MTAN(NUM_OUTPUTS, trunk=TinyConv(), features=(4,)),
    "conditioned": architectures.TaskConditioned(NUM_OUTPUTS, trunk=TinyConv(), features=4),
}


def test_any_module_as_trunk_expert_or_column():
  for name, model in WITH_TRUNK.items():
    params = _random_params(model, 4, IMAGES)
    where = {"mmoe": "experts", "soft": "columns"}.get(name, "trunk")
    kernel = params[where]["Conv_0"]["kernel"]
    copies = {"mmoe": 2, "soft": 2}.get(name)
    assert kernel.shape == ((copies,) if copies else ()) + (3, 3, 1, 5), name  # experts / columns stacked
    outputs = jax.jit(lambda p, model=model: model.apply({"params": p}, IMAGES))(params)
    assert [o.shape for o in outputs] == [(4, 3), (4, 1)], name
  # The trunk sees the images unflattened: the hard-sharing representation is the conv's pooled channels.
  model = WITH_TRUNK["hard"]
  params = _random_params(model, 4, IMAGES)
  z = model.apply({"params": params}, IMAGES, method="encode")
  np.testing.assert_allclose(z, TinyConv().apply({"params": params["trunk"]}, IMAGES).reshape(4, 5), rtol=1e-6)


def test_default_trunks_equal_mlp_trunks():
  default = architectures.HardParameterSharing(NUM_OUTPUTS, trunk_features=(8, 5))
  given = architectures.HardParameterSharing(NUM_OUTPUTS, trunk=architectures.MLPTrunk((8, 5)))
  params = _init(default)
  assert jax.tree.structure(params) == jax.tree.structure(_init(given))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(_init(given))):
    np.testing.assert_array_equal(a, b)  # the same names, so the same initialisation
  pairs = [(architectures.MMoE(NUM_OUTPUTS, num_experts=3, expert_features=(8,)),
            architectures.MMoE(NUM_OUTPUTS, num_experts=3, experts=architectures.MLPTrunk((8,)))),
           (architectures.SoftParameterSharing(NUM_OUTPUTS, features=(8, 5)),
            architectures.SoftParameterSharing(NUM_OUTPUTS, columns=architectures.MLPTrunk((8, 5))))]
  for built_in, from_trunk in [(default, given)] + pairs:
    params = _random_params(built_in, 5)
    for a, b in zip(built_in.apply({"params": params}, X), from_trunk.apply({"params": params}, X)):
      np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("name", ["hard", "conditioned_film", "conditioned_multi_head"])
def test_encode_then_decode_is_the_network(name):
  model = MODELS[name]
  params = _random_params(model, 6)
  z = model.apply({"params": params}, X, method="encode")
  assert z.shape == (4, 8)
  for a, b in zip(model.apply({"params": params}, z, method="decode"), model.apply({"params": params}, X)):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_task_conditioned_closed_forms():
  activation = np.tanh  # that of MODELS
  onehot = np.eye(2)
  for conditioning in architectures.CONDITIONINGS:
    model = MODELS[f"conditioned_{conditioning}"]
    params = jax.tree.map(np.asarray, _random_params(model, 7))
    trunk = params["trunk"]["Dense_0"]
    h = activation(np.asarray(X).reshape(4, -1) @ trunk["kernel"] + trunk["bias"])
    outputs = model.apply({"params": jax.tree.map(jnp.asarray, params)}, X)
    for t, width in enumerate(NUM_OUTPUTS):
      z = np.broadcast_to(onehot[t], (4, 2))
      if conditioning == "multi_head":
        expected = h @ params["heads"]["kernel"][t] + params["heads"]["bias"][t]
      else:
        c = params["conditioned"]
        if conditioning == "concat":
          hidden = np.concatenate([h, z], 1) @ c["dense"]["kernel"] + c["dense"]["bias"]
        elif conditioning == "additive":
          hidden = h @ c["inputs"]["kernel"] + c["inputs"]["bias"] + z @ c["task"]["kernel"]
        else:
          u = h @ params["dense"]["kernel"] + params["dense"]["bias"]
          gamma = z @ c["scale"]["kernel"] + c["scale"]["bias"] + 1.0
          hidden = gamma * u + z @ c["shift"]["kernel"] + c["shift"]["bias"]
        expected = activation(hidden) @ params["output"]["kernel"] + params["output"]["bias"]
      np.testing.assert_allclose(outputs[t], expected[:, :width], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="conditioning must be one of"):
    _init(architectures.TaskConditioned(NUM_OUTPUTS, conditioning="gate"))
