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




# === Multi-task experiments (experiments.mmoe, experiments.gradnorm, experiments.multimnist) ================
# This section belongs to the multi-task entrypoints; it uses only subplots() from above.


def balance(ratios: np.ndarray) -> float:
  """Spread of the per-task loss ratios, ``max_i r_i / min_i r_i`` (1 = perfectly balanced)."""
  return float(np.max(ratios) / np.min(ratios))


def gradnorm_table(results: dict[str, Any], sigmas: np.ndarray, config: ml_collections.ConfigDict) -> str:
  """Mean over seeds of the test loss ratios at three task scales; max/min and ``sum_i L_i/L_i(0)`` (the paper's
  task-normalised test loss) per seed, mean +- std over seeds."""
  mid = len(sigmas) // 2
  rows = [f"GradNorm toy problem, T={len(sigmas)} tasks, sigma {sigmas[0]:g}..{sigmas[-1]:g}, "
          f"{config.num_iterations} iterations: test loss ratio L_i(end)/L_i(0), mean over {config.num_seeds} seeds; "
          f"max/min and sum over tasks per seed, mean +- std",
          f"{'method':<13}{'sigma=' + format(sigmas[0], 'g'):>12}{'sigma=' + format(sigmas[mid], '.3g'):>13}"
          f"{'sigma=' + format(sigmas[-1], 'g'):>12}{'max/min':>16}{'sum_i L_i/L_i(0)':>20}"]
  for method, r in results.items():
    per_seed = np.asarray(r["loss_ratio"])  # [S, T]
    ratios = per_seed.mean(0)
    spread = [balance(x) for x in per_seed]
    total = per_seed.sum(1)
    rows.append(f"{method:<13}{ratios[0]:>12.4f}{ratios[mid]:>13.4f}{ratios[-1]:>12.4f}"
                f"{np.mean(spread):>9.2f} +- {np.std(spread):.2f}{np.mean(total):>13.3f} +- {np.std(total):.3f}")
  return "\n".join(rows)


def plot_gradnorm(path: str, results: dict[str, Any], sigmas: np.ndarray, config: ml_collections.ConfigDict) -> None:
  """Each weighting's task weights against iterations, the task-normalised test loss, and the final ratio per
  task scale."""
  weighted = [m for m in results if not np.all(np.isnan(np.asarray(results[m]["weights"], float)))
              and m != "equal" and not m.startswith("single_")]
  fig, axes = subplots(1, len(weighted) + 2, figsize=(4.2 * (len(weighted) + 2), 3.6), squeeze=False)
  axes = axes.ravel()
  colors = [matplotlib.colormaps["viridis"](x) for x in np.linspace(0, 1, len(sigmas))]
  for ax, method in zip(axes, weighted):
    weights = np.array(results[method]["weights"], float)
    for t in range(len(sigmas)):
      ax.plot(results[method]["steps"], weights[:, t], color=colors[t], label=f"sigma={sigmas[t]:.3g}")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("task weight")
    ax.set_title(f"{method}: weights (mean over seeds)")
  if weighted:
    axes[0].legend(fontsize=6, ncol=2)
  ax = axes[-2]
  for method, r in results.items():
    ax.plot(r["eval_steps"], r["test_normalized_loss_curve"], label=method)
  ax.set_xlabel("iteration")
  ax.set_ylabel("sum_i L_i(t) / L_i(0) (test)")
  ax.set_title("task-normalised test loss (mean over seeds)")
  ax.legend(fontsize=8)
  ax = axes[-1]
  for method, r in results.items():
    ax.plot(sigmas, np.mean(r["loss_ratio"], axis=0), marker="o", label=method)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("task output scale sigma_i")
  ax.set_ylabel("test loss ratio L_i(end) / L_i(0)")
  ax.set_title("per-task progress (flat = balanced)")
  ax.legend(fontsize=8)
  fig.suptitle(f"GradNorm toy problem (Chen et al. 2018), {config.num_iterations} iterations")
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def mmoe_table(results: dict[str, Any], config: ml_collections.ConfigDict) -> str:
  """Per architecture and measure: mean +- std over seeds at each correlation, and the change from the first
  correlation to the last (absolute, with its standard error, and relative); then the interquartile ranges."""
  ps = [f"{p:g}" for p in config.mmoe.correlations]
  measures = (("mean_train_mse", "curve"), ("train_mse", "final train"), ("test_mse", "final test"))
  rows = [f"MMoE synthetic benchmark, {config.num_iterations} iterations, method {config.method}: MSE (mean of the "
          f"2 tasks), mean +- std over {config.num_seeds} seeds; 'curve' = training MSE averaged over the run (area "
          f"under the loss curve); change from p={ps[0]} to p={ps[-1]}, +- its standard error",
          "Adam learning rates: " + ", ".join(f"{model} {by_p[ps[0]]['lr']:g}" for model, by_p in results.items()),
          f"{'model':<15}{'measure':<12}" + "".join(f"{'p=' + p:>20}" for p in ps) + f"{'change':>28}"]
  first = next(iter(results.values()))
  rows.append(f"{'(labels)':<15}{'corr.':<12}" + "".join(f"{first[p]['label_correlation']:>20.2f}" for p in ps))
  for key, name in measures:
    for model, by_p in results.items():
      values = [np.asarray(by_p[p][key]) for p in ps]
      change = values[-1].mean() - values[0].mean()
      error = (np.sqrt(values[-1].var(ddof=1) / values[-1].size + values[0].var(ddof=1) / values[0].size)
               if min(values[0].size, values[-1].size) > 1 else float("nan"))  # one seed: no error estimate
      rows.append(f"{model:<15}{name:<12}" + "".join(f"{v.mean():>11.4f} +- {v.std():.4f}" for v in values)
                  + f"{change:>+13.4f} +- {error:.4f} ({100 * change / values[0].mean():+.0f}%)")
  rows.append("spread across seeds, interquartile range:")
  for key, name in measures:
    for model, by_p in results.items():
      rows.append(f"{model:<15}{name:<12}" + "".join(
          f"{np.subtract(*np.percentile(by_p[p][key], [75, 25])):>20.4f}" for p in ps))
  return "\n".join(rows)


def plot_mmoe(path: str, results: dict[str, Any], config: ml_collections.ConfigDict) -> None:
  """Top: the mean training-loss curve of each architecture per correlation (paper Fig. 4); bottom: histograms of
  the seeds' final training MSE per correlation (paper Fig. 5)."""
  ps = [f"{p:g}" for p in config.mmoe.correlations]
  models = list(results)
  width = max(len(models), len(ps))
  fig, axes = subplots(2, width, figsize=(4.0 * width, 7.2), squeeze=False)
  colors = {p: f"C{i}" for i, p in enumerate(ps)}
  mean_curves = [np.mean(results[m][p]["curve_train_mse"], axis=1) for m in models for p in ps]
  high = max(curve[len(curve) // 10] for curve in mean_curves)  # one scale for all models: the gaps compare
  low = 0.8 * min(curve.min() for curve in mean_curves)
  for ax, model in zip(axes[0], models):
    for p in ps:
      r = results[model][p]
      ax.plot(r["curve_steps"], np.mean(r["curve_train_mse"], axis=1), color=colors[p], label=f"p={p}")
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training MSE (mean over seeds, log)")
    ax.set_title(f"{model} (Adam {results[model][ps[0]]['lr']:g})")
    ax.legend(fontsize=8)
  finals = np.concatenate([results[m][p]["train_mse"] for m in models for p in ps])
  bins = np.linspace(finals.min(), np.quantile(finals, 0.99), 30)
  for ax, p in zip(axes[1], ps):
    for i, model in enumerate(models):
      values = np.asarray(results[model][p]["train_mse"])
      ax.hist(np.clip(values, None, bins[-1]), bins=bins, histtype="step", linewidth=1.5, color=f"C{i}",
              label=f"{model} (median {np.median(values):.4f}, IQR {np.subtract(*np.percentile(values, [75, 25])):.4f})")
    ax.set_xlabel("final training MSE")
    ax.set_ylabel("runs")
    ax.set_title(f"p={p}: final loss of {config.num_seeds} runs")
    ax.legend(fontsize=7)
  for ax in list(axes[0, len(models):]) + list(axes[1, len(ps):]):
    ax.axis("off")
  fig.suptitle(f"MMoE synthetic benchmark (Ma et al. 2018), {config.num_iterations} iterations, "
               f"{config.num_seeds} runs (new data, task pair and initialisation each)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def multimnist_table(results: dict[str, Any], baselines: np.ndarray | None, config: ml_collections.ConfigDict) -> str:
  """Test accuracy (or loss, for regression tasks) per method and task, mean +- std over seeds, and Delta_m%."""
  num_tasks = len(next(iter(results.values()))["accuracy"][0])
  rows = [f"{config.dataset}, {config.architecture} on {config.trunk}, {config.num_iterations} iterations of batch "
          f"{config.batch_size}: test accuracy (%), mean +- std over {config.num_seeds} seeds; Delta_m% against the "
          "single-task models",
          f"{'method':<20}" + "".join(f"{'task ' + str(t):>16}" for t in range(num_tasks)) + f"{'Delta_m%':>16}"]
  for method, r in results.items():
    acc = np.asarray(r["accuracy"], float)
    score = np.where(np.isnan(acc), np.asarray(r["loss"], float), 100 * acc)  # [S, T]
    if method.startswith("single_"):
      cells = ["-" * 3] * num_tasks
      t = int(method.split("_")[1])
      cells[t] = f"{score[:, t].mean():.2f} +- {score[:, t].std():.2f}"
      rows.append(f"{method:<20}" + "".join(f"{c:>16}" for c in cells) + f"{'(baseline)':>16}")
      continue
    delta = f"{np.mean(r['delta_m']):+.2f} +- {np.std(r['delta_m']):.2f}" if "delta_m" in r else "-"
    rows.append(f"{method:<20}" + "".join(f"{score[:, t].mean():>9.2f} +- {score[:, t].std():.2f}"
                                          for t in range(num_tasks)) + f"{delta:>16}")
  return "\n".join(rows)


def plot_multimnist(path: str, results: dict[str, Any], baselines: np.ndarray | None,
                    config: ml_collections.ConfigDict) -> None:
  """Bars of each method's test accuracy per task (mean +- std over seeds), the single-task models dashed."""
  methods = [m for m in results if not m.startswith("single_")]
  if not methods:
    return
  num_tasks = len(results[methods[0]]["accuracy"][0])
  fig, ax = subplots(figsize=(max(5.0, 0.9 * len(methods) + 2), 3.6))
  positions = np.arange(len(methods))
  width = 0.8 / num_tasks
  for t in range(num_tasks):
    acc = np.array([100 * np.asarray(results[m]["accuracy"], float)[:, t] for m in methods])  # [M, S]
    ax.bar(positions + (t - (num_tasks - 1) / 2) * width, acc.mean(1), width, yerr=acc.std(1), capsize=2,
           label=f"task {t}")
    if baselines is not None:
      ax.axhline(100 * baselines[t], color=f"C{t}", linestyle="--", linewidth=1, label=f"single-task {t}")
  ax.set_xticks(positions, methods, rotation=45, ha="right")
  scores = np.concatenate([100 * np.asarray(results[m]["accuracy"], float).ravel() for m in methods])
  scores = scores[np.isfinite(scores)]
  if scores.size:
    low, high = scores.min(), scores.max()
    if baselines is not None:
      low, high = min(low, 100 * np.nanmin(baselines)), max(high, 100 * np.nanmax(baselines))
    ax.set_ylim(low - 1, high + 1)
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"{config.dataset}, mean +- std over {config.num_seeds} seeds")
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
