"""Tests for metalax.mtl.train_step against a transcription of the update it replaces.

The reference below follows the multi-task trainer the step replaced (the
``make_trainer`` of the former experiments/mtl.py): per-task gradients from a
Python loop of ``jax.grad`` (not ``vmap``), the aggregator applied to the trunk
only and the heads summed, GradNorm's balance loss written out by hand.
"""

from typing import Callable, NamedTuple

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import metalax
from metalax import mtl
from metalax.types import Batch

T, N, D = 3, 16, 6
MODULE = mtl.HardParameterSharing(num_outputs=(1,) * T, trunk_features=(8, 8))
INPUTS = jax.random.normal(jax.random.key(1), (N, D))
TARGETS = jax.random.normal(jax.random.key(2), (N, T)) * jnp.array([1.0, 3.0, 0.3])
BATCH = Batch(INPUTS, tuple(TARGETS[:, t:t + 1] for t in range(T)))
PARAMS = MODULE.init(jax.random.key(0), jnp.zeros((1, D)))["params"]
LOSSES_FN = mtl.multitask_loss(lambda p, x: MODULE.apply({"params": p}, x), [metalax.losses.squared_error] * T)
LR = 0.05
NUM_STEPS = 2
LAST_LAYER = {"trunk": {"Dense_0": False, "Dense_1": True}, **{f"head_{t}": False for t in range(T)}}
ENCODE = lambda p, batch: MODULE.apply({"params": p}, batch.inputs, method="encode")
DECODE_LOSSES = lambda p, z, batch: mtl.multitask_loss(
    lambda p, z: MODULE.apply({"params": p}, z, method="decode"), [metalax.losses.squared_error] * T)(
        p, Batch(z, batch.labels))


class Remembering(NamedTuple):
  """A weighting with ``update(state, task_losses)``, like FAMO: it keeps the losses after the step."""

  init: Callable
  loss: Callable
  update: Callable


def reference_losses(params):
  outputs = MODULE.apply({"params": params}, INPUTS)
  return jnp.stack([jnp.mean((outputs[t][:, 0] - TARGETS[:, t]) ** 2) for t in range(T)])


def loop_grads(fn, params):
  """Per-task gradients ``[T, ...]`` from T separate ``jax.grad`` calls."""
  grads = [jax.grad(lambda p, t=t: fn(p)[t])(params) for t in range(T)]
  return jax.tree.map(lambda *g: jnp.stack(g), *grads)


AGGREGATOR_KEY = jax.random.key(5)


def reference_init(method, aggregator_key=None):
  """``(params, state)`` of the former trainer before its first step."""
  weighting = {"uncertainty": {"log_variances": jnp.zeros(T)}, "gradnorm": {"weights": jnp.ones(T)}}
  params = {"model": PARAMS, "weighting": weighting.get(method, {})}
  if method in AGGREGATORS:
    return params, reference_aggregator(method, aggregator_key or AGGREGATOR_KEY).init({"trunk": PARAMS["trunk"]})
  return params, reference_losses(PARAMS) if method == "gradnorm" else ()  # GradNorm: L_i(0)


def reference_aggregator(method, key):
  return {"pcgrad": mtl.pcgrad(key), "mgda": mtl.mgda(), "nash_mtl": mtl.nash_mtl(T)}[method]


AGGREGATORS = ("pcgrad", "mgda", "nash_mtl")


@functools.partial(jax.jit, static_argnums=0)
def reference_step(method, params, state):
  """One update of the former trainer, with SGD."""
  model = params["model"]
  losses = reference_losses(model)
  if method in AGGREGATORS:
    task_grads = loop_grads(reference_losses, model)
    update, state = reference_aggregator(method, None).update(
        {"trunk": task_grads["trunk"]}, state, {"trunk": model["trunk"]}, task_losses=losses)
    grads = {k: update[k] if k == "trunk" else jax.tree.map(lambda g: g.sum(0), task_grads[k]) for k in model}
    grads = {"model": grads, "weighting": {}}
  elif method == "mgda_ub":
    z = ENCODE(model, BATCH)
    z_grads = jnp.stack([jax.grad(lambda z, t=t: DECODE_LOSSES(model, z, BATCH)[t])(z) for t in range(T)])
    flat = z_grads.reshape(T, -1)
    weights = mtl.min_norm_solver(flat / (losses * jnp.linalg.norm(flat, axis=1))[:, None])
    grads = {"model": jax.grad(lambda m: jnp.sum(weights * reference_losses(m)))(model), "weighting": {}}
  elif method == "uncertainty":
    grads = jax.grad(lambda p: jnp.sum(0.5 * jnp.exp(-p["weighting"]["log_variances"]) * reference_losses(
        p["model"]) + 0.5 * p["weighting"]["log_variances"]))(params)
  elif method == "gradnorm":
    alpha = 1.5
    last = loop_grads(reference_losses, model)["trunk"]["Dense_1"]
    norms = jnp.sqrt(sum(jnp.sum(g.reshape(T, -1) ** 2, axis=1) for g in jax.tree.leaves(last)))
    rates = (losses / state) / jnp.mean(losses / state)

    def balance(w):
      target = jax.lax.stop_gradient(jnp.mean(w * norms) * rates**alpha)
      return jnp.sum(jnp.abs(w * norms - target))

    w = params["weighting"]["weights"]
    grads = {"model": jax.grad(lambda m: jnp.sum(w * reference_losses(m)))(model),
             "weighting": {"weights": jax.grad(balance)(w)}}
  else:  # equal
    grads = {"model": jax.grad(lambda m: jnp.sum(reference_losses(m)))(model), "weighting": {}}
  params = jax.tree.map(lambda p, g: p - LR * g, params, grads)
  if method == "gradnorm":
    w = params["weighting"]["weights"]
    params["weighting"] = {"weights": w * T / jnp.sum(w)}
  return params, state


def reference_run(method, num_steps=NUM_STEPS):
  params, state = reference_init(method)
  for _ in range(num_steps):
    params, state = reference_step(method, params, state)
  return params


def method_kwargs(method):
  return {
      "equal": dict(),
      "uncertainty": dict(weighting=mtl.uncertainty_weighting()),
      "gradnorm": dict(weighting=mtl.gradnorm(1.5), gradient_norm_params=LAST_LAYER),
      "pcgrad": dict(aggregator=mtl.pcgrad(AGGREGATOR_KEY)),
      "mgda": dict(aggregator=mtl.mgda()),
      "nash_mtl": dict(aggregator=mtl.nash_mtl(T)),
      "mgda_ub": dict(weighting=mtl.mgda_ub(), representation=(ENCODE, DECODE_LOSSES)),
  }[method]


def run(train, num_steps=NUM_STEPS, key=None):
  state = train.init(PARAMS)
  step = jax.jit(train.step)
  for i in range(num_steps):
    state, metrics = step(state, BATCH, None if key is None else jax.random.fold_in(key, i))
  return state, metrics


@pytest.mark.parametrize("method", ["equal", "uncertainty", "gradnorm", "pcgrad", "mgda", "nash_mtl", "mgda_ub"])
def test_matches_the_reference_update(method):
  train = mtl.train_step(LOSSES_FN, optax.sgd(LR), num_tasks=T, shared=mtl.shared_mask, **method_kwargs(method))
  state, metrics = run(train)
  expected = reference_run(method)
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
  assert jax.tree.structure(state.params) == jax.tree.structure(expected)
  assert metrics["task_losses"].shape == (T,)
  np.testing.assert_allclose(metrics["loss"], metrics["task_losses"].sum(), rtol=1e-6)
  if method == "gradnorm":
    np.testing.assert_allclose(state.params["weighting"]["weights"].sum(), T, rtol=1e-6)  # project
    assert not np.allclose(state.params["weighting"]["weights"], 1.0)
  if method in ("pcgrad", "mgda", "nash_mtl"):
    assert "weights" not in metrics


def test_weighting_with_aggregator_vmapped_over_seeds():
  # uncertainty + MGDA: the aggregator combines the weighted task gradients of the trunk; the log-variances
  # train on the weighting's loss. vmap over two seeds equals two separate runs.
  train = mtl.train_step(LOSSES_FN, optax.sgd(LR), num_tasks=T, shared=mtl.shared_mask,
                         weighting=mtl.uncertainty_weighting(), aggregator=mtl.mgda())
  seeds = jax.vmap(lambda k: MODULE.init(k, jnp.zeros((1, D)))["params"])(jax.random.split(jax.random.key(7), 2))
  states = jax.vmap(train.init)(seeds)
  step = jax.jit(jax.vmap(train.step, in_axes=(0, None)))
  for _ in range(2):
    states, metrics = step(states, BATCH)
  assert metrics["weights"].shape == (2, T)
  # Seed 1 alone, by hand: weights 0.5 exp(-s), MGDA on the weighted trunk gradients, heads summed.
  @jax.jit
  def by_hand(model):
    s, aggregator = jnp.zeros(T), mtl.mgda()
    for _ in range(2):
      losses = reference_losses(model)
      weights = 0.5 * jnp.exp(-s)
      task_grads = jax.tree.map(lambda g: weights.reshape((T,) + (1,) * (g.ndim - 1)) * g,
                                loop_grads(reference_losses, model))
      trunk, _ = aggregator.update({"trunk": task_grads["trunk"]}, (), {"trunk": model["trunk"]},
                                   task_losses=losses)
      grads = {k: trunk[k] if k == "trunk" else jax.tree.map(lambda g: g.sum(0), task_grads[k]) for k in model}
      model = jax.tree.map(lambda p, g: p - LR * g, model, grads)
      s = s - LR * (-weights * losses + 0.5)
    return model, s

  model, s = by_hand(jax.tree.map(lambda x: x[1], seeds))
  for got, want in zip(jax.tree.leaves(jax.tree.map(lambda x: x[1], states.params["model"])), jax.tree.leaves(model)):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(states.params["weighting"]["log_variances"][1], s, rtol=1e-5)
  assert not np.allclose(states.params["model"]["trunk"]["Dense_0"]["kernel"][0],
                         states.params["model"]["trunk"]["Dense_0"]["kernel"][1])


def test_scheduling_trains_only_the_drawn_tasks():
  # With all probability on task 1, one task per step is the single-task update of task 1.
  probabilities = jnp.array([0.0, 1.0, 0.0])
  scheduled = mtl.train_step(LOSSES_FN, optax.sgd(LR), num_tasks=T, task_probabilities=probabilities,
                             tasks_per_step=1)
  single = mtl.train_step(LOSSES_FN, optax.sgd(LR), num_tasks=T, weighting=mtl.static_weighting([0.0, 1.0, 0.0]))
  state, metrics = run(scheduled, num_steps=2, key=jax.random.key(3))
  expected, _ = run(single, num_steps=2)
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(expected.params)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(metrics["scheduled"], [0.0, 1.0, 0.0])
  assert metrics["task_losses"].shape == (T,)  # the metrics still see every task

  # An aggregator sees the K drawn tasks' gradients only: MGDA on tasks {0, 2}.
  probabilities = jnp.array([0.5, 0.0, 0.5])
  train = mtl.train_step(LOSSES_FN, optax.sgd(LR), num_tasks=T, aggregator=mtl.mgda(), shared=mtl.shared_mask,
                         task_probabilities=probabilities, tasks_per_step=2)
  state, _ = run(train, num_steps=1, key=jax.random.key(4))

  @jax.jit
  def by_hand(params):
    task_grads = jax.tree.map(lambda g: g[jnp.array([0, 2])], loop_grads(reference_losses, params))
    trunk, _ = mtl.mgda().update({"trunk": task_grads["trunk"]}, (), None)
    grads = {k: trunk[k] if k == "trunk" else jax.tree.map(lambda g: g.sum(0), task_grads[k]) for k in params}
    return jax.tree.map(lambda p, g: p - LR * g, params, grads)

  expected = by_hand(PARAMS)
  for got, want in zip(jax.tree.leaves(state.params["model"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
  np.testing.assert_array_equal(state.params["model"]["head_1"]["head"]["kernel"], PARAMS["head_1"]["head"]["kernel"])


def test_regularizer_nothing_shared_and_an_after_step_weighting():
  # A regulariser adds its gradient; with nothing shared an aggregator leaves the plain sum; a weighting with
  # update(state, losses) gets the losses of the updated model.
  penalty = lambda p: 0.1 * sum(jnp.sum(x**2) for x in jax.tree.leaves(p))
  regularized = mtl.train_step(LOSSES_FN, optax.sgd(LR), num_tasks=T, aggregator=mtl.mgda(),
                               shared=lambda params: jax.tree.map(lambda _: False, params), regularizer=penalty)
  state, metrics = run(regularized, num_steps=1)
  grads = jax.jit(jax.grad(lambda p: jnp.sum(reference_losses(p)) + penalty(p)))(PARAMS)
  for got, want in zip(jax.tree.leaves(state.params["model"]), jax.tree.leaves(
      jax.tree.map(lambda p, g: p - LR * g, PARAMS, grads))):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(metrics["regularizer"], penalty(PARAMS), rtol=1e-6)

  base = mtl.equal_weighting()
  weighting = Remembering(init=lambda n: ({}, jnp.zeros(n)), loss=base.loss, update=lambda state, losses: losses)
  train = mtl.train_step(LOSSES_FN, optax.sgd(LR), num_tasks=T, weighting=weighting)
  state, _ = run(train, num_steps=1)
  np.testing.assert_allclose(state.method_state.weighting, reference_losses(state.params["model"]), rtol=1e-6)


def test_errors():
  with pytest.raises(ValueError, match="representation"):
    mtl.train_step(LOSSES_FN, optax.sgd(LR), num_tasks=T, weighting=mtl.mgda_ub())
  with pytest.raises(ValueError, match="tasks_per_step=4"):
    mtl.train_step(LOSSES_FN, optax.sgd(LR), num_tasks=T, task_probabilities=jnp.ones(T), tasks_per_step=4)
  with pytest.raises(ValueError, match=r"task_probabilities must have shape \[3\]"):
    mtl.train_step(LOSSES_FN, optax.sgd(LR), num_tasks=T, task_probabilities=jnp.ones(2), tasks_per_step=1)
  with pytest.raises(ValueError, match="tasks_per_step needs task_probabilities"):
    mtl.train_step(LOSSES_FN, optax.sgd(LR), num_tasks=T, tasks_per_step=1)
  with pytest.raises(ValueError, match="num_tasks"):
    mtl.train_step(LOSSES_FN, optax.sgd(LR), num_tasks=0)
  train = mtl.train_step(LOSSES_FN, optax.sgd(LR), num_tasks=T, task_probabilities=jnp.ones(T), tasks_per_step=1)
  with pytest.raises(ValueError, match="key"):
    train.step(train.init(PARAMS), BATCH)
  train = mtl.train_step(LOSSES_FN, optax.sgd(LR), num_tasks=2)
  with pytest.raises(ValueError, match=r"\[T\] = \[2\]"):
    train.step(train.init(PARAMS), BATCH)
  train = mtl.train_step(LOSSES_FN, optax.sgd(LR), num_tasks=T, weighting=mtl.gradnorm(),
                         gradient_norm_params=jax.tree.map(lambda _: False, PARAMS))
  with pytest.raises(ValueError, match="selects no parameter"):
    train.step(train.init(PARAMS), BATCH)
