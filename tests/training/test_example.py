"""The training layer as a user's own script uses it: a Flax module of theirs, trained, validated, resumed."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from metalax import training

# The example below is the README's, verbatim, between the markers.
# --- example ---
class Net(nn.Module):  # the user's own model
  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(nn.relu(nn.Dense(16)(x)))


def train(workdir, num_iterations=200):
  model, optimizer = Net(), optax.adam(1e-2)
  inputs = np.linspace(-2, 2, 64, dtype=np.float32)[:, None]
  data = {"inputs": inputs, "targets": np.sin(inputs)}

  def step(state, key, data):  # pure: (state, key, data) -> (state, metrics)
    batch = jax.random.randint(key, (16,), 0, 64)
    loss_fn = lambda p: jnp.mean((model.apply(p, data["inputs"][batch]) - data["targets"][batch]) ** 2)
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, {"loss": loss}

  @jax.jit
  def validation_mse(params):
    return jnp.mean((model.apply(params, data["inputs"]) - data["targets"]) ** 2)

  def validate(state, iteration):  # called at every checkpoint; recorded and saved with it
    return {"validation_mse": float(validation_mse(state["params"]))}

  params = jax.jit(model.init)(jax.random.key(0), inputs)
  state = {"params": params, "opt_state": optimizer.init(params)}
  state = training.train_loop(step, state, data=data, key=jax.random.key(1), num_iterations=num_iterations,
                              steps_per_call=50, checkpoint_every=100, run_dir=workdir, desc="net",
                              on_checkpoint=validate, best_metric="validation_mse", best_mode="min")
  return training.restore_best(workdir, state)  # (state, step, metrics) of the best validation
# --- example ---


def test_readme_example_trains_keeps_the_best_and_resumes(tmp_path):
  best, step, metrics = train(str(tmp_path), num_iterations=200)
  records = training.read_jsonl(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in records] == [50, 100, 150, 200] and records[-1]["loss"] < records[0]["loss"]
  validated = {r["step"]: r["validation_mse"] for r in records if "validation_mse" in r}
  assert step == min(validated, key=validated.get) and metrics["validation_mse"] == validated[step]
  assert jax.tree.structure(best["params"]) == jax.tree.structure(
      jax.eval_shape(Net().init, jax.random.key(0), jnp.zeros((1, 1))))
  again, again_step, _ = train(str(tmp_path), num_iterations=200)  # a rerun finds the run finished
  assert again_step == step and training.read_jsonl(tmp_path / "metrics.jsonl") == records
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), again["params"], best["params"]))
