r"""Peak memory of second-order MAML against the number of inner steps, with and without remat.

The figure is XLA's own buffer assignment for the compiled meta-gradient
(``compiled.memory_analysis().temp_size_in_bytes``: every intermediate buffer
alive at the peak, inputs and outputs excluded), so it is exact, repeatable and
needs no run. Prints a table and, with ``--plot``, writes a PNG.

Usage:
  python -m benchmarks.maml_memory
  python -m benchmarks.maml_memory --steps=1,2,4,8,16,32 --plot=/tmp/maml_memory.png
"""

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

import metalax

_STEPS = flags.DEFINE_list("steps", ["1", "2", "4", "8", "16", "32"], "Inner step counts.")
_PLOT = flags.DEFINE_string("plot", None, "Write the curves to this PNG.")

SETTINGS = {
    # name: (model, episodes), Omniglot-shaped: 5-way 1-shot, 15 queries, meta-batch 8.
    "sinusoid MLP 2x40, meta-batch 25": "mlp",
    "Conv-4 strided, 5-way 1-shot, meta-batch 8": "strided",
}


def temp_megabytes(model_kind: str, num_steps: int, remat: bool) -> float:
  key_model, key_data = jax.random.split(jax.random.key(0))
  if model_kind == "mlp":
    model = metalax.models.MLP(features=(40, 40), num_outputs=1)
    episodes = metalax.data.sample_sinusoid(key_data, 25, 10, 10)
    params = model.init(key_model, jnp.zeros((1, 1)))["params"]
    loss_fn, inner_lr = metalax.losses.squared_error, 0.01
  else:
    model = metalax.models.Conv4(num_outputs=5, variant=model_kind)
    shape = lambda n: (8, n, 28, 28, 1)
    episodes = metalax.Episode(
        metalax.Batch(jax.random.uniform(key_data, shape(5)), jnp.tile(jnp.arange(5), (8, 1))),
        metalax.Batch(jax.random.uniform(key_data, shape(75)), jnp.tile(jnp.arange(5), (8, 15))))
    params = model.init(key_model, jnp.zeros((2, 28, 28, 1)))["params"]
    loss_fn, inner_lr = metalax.losses.cross_entropy, 0.4
  learner = metalax.meta.maml(metalax.models.from_linen(model), loss_fn, inner_lr=inner_lr,
                              num_steps=num_steps, remat=remat)
  grad_fn = jax.jit(jax.grad(lambda mp: metalax.meta.batch_loss(learner)(mp, episodes)[0]))
  compiled = grad_fn.lower(learner.init(params)).compile()
  return compiled.memory_analysis().temp_size_in_bytes / 2**20


def main(argv):
  del argv
  steps = [int(s) for s in _STEPS.value]
  curves = {}
  for setting, model_kind in SETTINGS.items():
    print(f"\n{setting}: peak temporary memory (MiB) of the meta-gradient")
    print(f"{'inner steps':>12}{'plain':>12}{'remat':>12}{'ratio':>8}")
    for remat in (False, True):
      curves[setting, remat] = [temp_megabytes(model_kind, k, remat) for k in steps]
    for k, plain, rematted in zip(steps, curves[setting, False], curves[setting, True]):
      print(f"{k:>12}{plain:>12.2f}{rematted:>12.2f}{plain / rematted:>8.1f}")
  if _PLOT.value:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(5 * len(SETTINGS), 3.6))
    for ax, setting in zip(axes, SETTINGS):
      for remat, label in ((False, "plain"), (True, "remat (jax.checkpoint per step)")):
        ax.plot(steps, curves[setting, remat], marker="o", label=label)
      ax.set_xlabel("inner steps")
      ax.set_ylabel("peak temporary memory (MiB)")
      ax.set_title(setting, fontsize=9)
      ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(_PLOT.value, dpi=120)


if __name__ == "__main__":
  app.run(main)
