"""Tables and plots of the experiments: every entrypoint's figures in one module.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with an Agg canvas, so importing or running
an experiment never changes matplotlib's global backend (a notebook keeps its own).
"""

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.image
import ml_collections
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], squeeze: bool = True, **kwargs):
  """``(figure, axes)`` like ``pyplot.subplots``, on an Agg canvas of its own (no pyplot state)."""
  fig = Figure(figsize=figsize)
  FigureCanvasAgg(fig)
  return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **kwargs)


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The records of a ``metrics.jsonl`` file (a line cut short by a kill is skipped)."""
  records = []
  for line in open(path):
    try:
      records.append(json.loads(line))
    except ValueError:
      continue
  return records


def plot_fewshot_curves(metrics_path: str, path: str, title: str) -> None:
  """Training query loss and validation accuracy against iterations, from a run's ``metrics.jsonl``."""
  records = read_jsonl(metrics_path)
  fig, (left, right) = subplots(1, 2, figsize=(9, 3.4))
  train = [r for r in records if "loss" in r]
  left.plot([r["step"] for r in train], [r["loss"] for r in train])
  left.set_xlabel("iteration")
  left.set_ylabel("training query loss")
  valid = [r for r in records if "validation_accuracy" in r]
  right.plot([r["step"] for r in valid], [100 * r["validation_accuracy"] for r in valid], marker="o")
  right.set_xlabel("iteration")
  right.set_ylabel("validation accuracy (%)")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def sinusoid_table(results: dict[str, Any], config: ml_collections.ConfigDict) -> str:
  steps = config.test_num_steps
  header = (f"Sinusoid, K={config.num_shots}, {config.num_test_episodes} held-out tasks: query MSE "
            "(mean +- 95% interval)\n"
            f"{'learner':<11}{'inner lr':>9}{'pre-update':>18}{'1 step':>18}{f'{steps} steps':>18}")
  rows = [header]
  for name, r in results.items():
    cells = "".join(f"{r['mse'][k]:>10.3f} +- {r['interval'][k]:.3f}" for k in (0, 1, steps))
    rows.append(f"{name:<11}{r['inner_lr']:>9g}{cells}")
  return "\n".join(rows)



def plot_sinusoid(path: str, trained, results, tasks, episodes, config) -> None:
  """The MAML paper's sinusoid figure: example fits per learner, then MSE against gradient steps."""
  names = list(trained)
  columns = min(len(names) + 1, 4)
  rows = -(-(len(names) + 1) // columns)
  fig, axes = subplots(rows, columns, figsize=(4.2 * columns, 3.6 * rows), squeeze=False)
  axes = axes.ravel()
  for ax in axes[len(names) + 1:]:
    ax.axis("off")
  grid = jnp.linspace(-5.0, 5.0, 200)[:, None]
  example = 0
  support = jax.tree.map(lambda x: x[example], episodes.support)
  truth = tasks(grid[None])[example]
  for ax, name in zip(axes, names):
    learner, meta_params = trained[name]
    fit = jax.jit(lambda mp, steps, learner=learner: learner.predict(
        learner.adapt(mp, support, num_steps=steps), grid), static_argnums=1)
    ax.plot(grid, truth, color="tab:red", label="ground truth")
    for steps, style in ((0, ":"), (1, "--"), (config.test_num_steps, "-")):
      label = "pre-update" if steps == 0 else f"{steps} grad step{'s' if steps > 1 else ''}"
      ax.plot(grid, fit(meta_params, steps), style, color="tab:green", label=label)
    ax.scatter(support.inputs[:, 0], support.labels[:, 0], marker="^", color="black", zorder=3,
               label="used for grad")
    ax.set_title(f"{name}, K={config.num_shots}")
    ax.set_ylim(-6, 6)
    ax.legend(fontsize=7, loc="lower right")
  ax = axes[len(names)]
  steps = np.arange(config.test_num_steps + 1)
  for name in names:
    mse, interval = np.array(results[name]["mse"]), np.array(results[name]["interval"])
    ax.plot(steps, mse, marker="o", label=name)
    ax.fill_between(steps, mse - interval, mse + interval, alpha=0.2)
  pre_update = [results[name]["mse"][0] for name in names]
  ax.set_ylim(0.0, 1.2 * np.nanmax(pre_update))  # a diverging fine-tune must not hide the rest
  ax.set_xlabel("number of gradient steps")
  ax.set_ylabel("mean squared error")
  ax.set_title(f"K={config.num_shots}, {config.num_test_episodes} held-out tasks")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)



def representation_table(run_dirs: dict[str, str], path: str) -> str:
  """A markdown table of several runs' ``results.json`` (rows in the given order), written to ``path``.

  Args:
    run_dirs: ``{row label: workdir}``.
    path: the markdown file to write.

  Returns:
    The table.
  """
  rows = {label: json.load(open(os.path.join(d, "results.json"))) for label, d in run_dirs.items()}
  first = next(iter(rows.values()))
  cells = [key[:-len("_prototype")] for key in first if key.endswith("_prototype")]
  header = ["encoder"] + [f"{c.replace('way_', '-way ').replace('shot', '-shot')} proto / 1-NN" for c in cells]
  header += ["linear probe", "eff. rank", "train s"]
  lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
  for label, r in rows.items():
    line = [label]
    for c in cells:
      line.append(f"{100 * r[c + '_prototype']:.1f} ± {100 * r[c + '_prototype_interval']:.1f} / "
                  f"{100 * r[c + '_nearest_neighbour']:.1f}")
    line += [f"{100 * r['linear_probe_accuracy']:.1f}", f"{r['effective_rank']:.1f}", f"{r['train_seconds']:.0f}"]
    lines.append("| " + " | ".join(line) + " |")
  table = "\n".join(lines) + "\n"
  with open(path, "w") as f:
    f.write(table)
  return table



def plot_representation_training(run_dirs: dict[str, str], path: str) -> None:
  """Training loss (each method's own scale) and the collapse diagnostics of several runs against iterations."""
  fig, axes = subplots(1, 3, figsize=(12, 3.2))
  for label, directory in run_dirs.items():
    records = [r for r in read_jsonl(os.path.join(directory, "metrics.jsonl")) if "loss" in r]
    steps = [r["step"] for r in records]
    first = records[0]["loss"]
    axes[0].plot(steps, [r["loss"] / first for r in records], label=label)
    axes[1].plot(steps, [r["embedding_std"] for r in records], label=label)
    axes[2].plot(steps, [r["effective_rank"] for r in records], label=label)
  for ax, title in zip(axes, ("training loss / its first value", "embedding std x sqrt(d) (0 = collapse)",
                              "effective rank of the batch's features")):
    ax.set_xlabel("iteration")
    ax.set_title(title, fontsize=9)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)



def stack_images(paths: list[str], path: str) -> None:
  """Stacks PNG files vertically into one PNG (e.g. the reconstruction grids of several autoencoders)."""
  images = [matplotlib.image.imread(p)[..., :3] for p in paths]
  width = max(image.shape[1] for image in images)
  padded = [np.pad(image, ((0, 0), (0, width - image.shape[1]), (0, 0)), constant_values=1.0) for image in images]
  matplotlib.image.imsave(path, np.concatenate(padded))



def write_surgical_table(table, config, clean_accuracy: float, path: str) -> None:
  selections = list(config.selections)
  lines = [f"Clean MNIST test accuracy after pretraining: {100 * clean_accuracy:.2f}%.", "",
           "| shift | " + " | ".join(selections) + " |", "|---|" + "---|" * len(selections)]
  for shift, row in table.items():
    best = max((row[s]["mean"] for s in selections if s != "all"), default=0.0)
    cells = []
    for s in selections:
      text = f"{100 * row[s]['mean']:.1f} ± {100 * row[s]['std']:.1f}"
      cells.append(f"**{text}**" if s != "all" and row[s]["mean"] == best else text)
    lines.append(f"| {shift} | " + " | ".join(cells) + " |")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")



def plot_surgical(table, path: str, shots: int) -> None:
  shifts = list(table)
  selections = list(next(iter(table.values())))
  fig, axes = subplots(1, len(shifts), figsize=(3.4 * len(shifts), 3), squeeze=False)
  for ax, shift in zip(axes[0], shifts):
    means = [100 * table[shift][s]["mean"] for s in selections]
    stds = [100 * table[shift][s]["std"] for s in selections]
    ax.bar(range(len(selections)), means, yerr=stds, color=["0.6", "0.3"] + ["C0"] * (len(selections) - 2))
    ax.set_xticks(range(len(selections)), selections, rotation=45, fontsize=8)
    ax.set_title(shift)
    ax.set_ylabel("shifted test accuracy (%)")
    ax.set_ylim(0, 100)
  fig.suptitle(f"MNIST: fine-tuning one block at a time on {shots} labelled shifted images per class", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


