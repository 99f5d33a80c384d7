"""Transfer learning: fine-tune chosen parts of a pretrained parameter tree; review the hardest examples.

Fine-tuning is an optax transformation, never a hand-written optimizer:
:func:`finetune_optimizer` partitions the parameters with
``optax.multi_transform`` into ``"trainable"`` leaves (updated by the given
optimizer) and ``"frozen"`` leaves (``optax.set_to_zero()``: no update and no
optimizer state, so weight decay or momentum never moves them). Which leaves
train is a *selection* over parameter paths such as ``"conv_0/kernel"``:

* ``"all"``: full fine-tuning;
* ``"head"`` (any name or pattern): a linear probe when the head is the last layer;
* ``["conv_0", "norm_0"]`` or ``"conv_[01]*"``: surgical fine-tuning of chosen
  blocks (Lee et al. 2023); :data:`CONV4_BLOCKS` names Conv-4's blocks;
* a callable ``path -> bool``.

A pattern matches a path when ``fnmatch`` matches the whole path or a prefix
of whole components (``"conv_0"`` matches ``"conv_0/kernel"``, not
``"conv_01/kernel"``).

The hard-example review (:func:`write_review`, :func:`read_corrections`,
:func:`apply_corrections`) writes the ``k`` highest-loss examples as a PNG
grid and a CSV that a person edits, and reads the corrected labels back.
"""

import csv
import fnmatch
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import optax

Selection = str | Sequence[str] | Callable[[str], bool] | None

CONV4_BLOCKS = {
    "block1": ("conv_0", "norm_0"),
    "block2": ("conv_1", "norm_1"),
    "block3": ("conv_2", "norm_2"),
    "block4": ("conv_3", "norm_3"),
    "head": ("head",),
}
"""Conv-4's blocks (``metalax.models.Conv4`` parameter names), input to output, for surgical fine-tuning."""

REVIEW_FIELDS = ("rank", "index", "label", "prediction", "loss", "corrected_label")
"""Columns of the review CSV; a person fills ``corrected_label`` (empty: keep the label)."""


def parameter_paths(params: Any) -> Any:
  """The tree of ``"a/b/c"`` path strings of every leaf of ``params``."""
  def name(path, _):
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
  return jax.tree_util.tree_map_with_path(name, params)


def _matches(path: str, pattern: str) -> bool:
  return fnmatch.fnmatchcase(path, pattern) or fnmatch.fnmatchcase(path, pattern.rstrip("/") + "/*")


def trainable_mask(params: Any, trainable: Selection) -> Any:
  """A tree of bools shaped like ``params``: True for the leaves that ``trainable`` selects.

  Args:
    params: a parameter tree.
    trainable: ``"all"``, ``None`` (nothing), a pattern, a sequence of
      patterns, or ``predicate(path) -> bool`` (see the module docstring).

  Returns:
    A tree of Python bools.

  Raises:
    ValueError: if a pattern selects no leaf (a typo would otherwise freeze everything silently).
  """
  paths = parameter_paths(params)
  if trainable is None:
    return jax.tree.map(lambda _: False, paths)
  if trainable == "all":
    return jax.tree.map(lambda _: True, paths)
  if callable(trainable):
    return jax.tree.map(lambda p: bool(trainable(p)), paths)
  patterns = [trainable] if isinstance(trainable, str) else list(trainable)
  all_paths = jax.tree.leaves(paths)
  for pattern in patterns:
    if not any(_matches(p, pattern) for p in all_paths):
      raise ValueError(f"the pattern {pattern!r} selects no parameter; the parameters are {all_paths}.")
  return jax.tree.map(lambda p: any(_matches(p, pattern) for pattern in patterns), paths)


def finetune_optimizer(optimizer: optax.GradientTransformation, params: Any,
                       trainable: Selection) -> optax.GradientTransformation:
  """``optimizer`` on the selected parameters, ``optax.set_to_zero()`` on the rest (``optax.multi_transform``).

  Args:
    optimizer: any optax transformation (e.g. ``optax.adamw(1e-3)``).
    params: the parameter tree to fine-tune (its structure fixes the partition).
    trainable: the selection, see :func:`trainable_mask`.

  Returns:
    An ``optax.GradientTransformation`` whose updates are exactly zero on frozen leaves.

  Example:
    >>> tx = finetune_optimizer(optax.adam(1e-3), params, CONV4_BLOCKS["block1"])   # surgical
    >>> tx = finetune_optimizer(optax.adam(1e-3), params, "head")                   # linear probe
    >>> opt_state = tx.init(params)

  References:
    Lee et al., Surgical Fine-Tuning Improves Adaptation to Distribution
    Shifts, ICLR 2023.
  """
  mask = trainable_mask(params, trainable)
  labels = jax.tree.map(lambda m: "trainable" if m else "frozen", mask)
  return optax.multi_transform({"trainable": optimizer, "frozen": optax.set_to_zero()}, labels)


def hardest_examples(losses: np.ndarray, k: int) -> np.ndarray:
  """Indices of the ``k`` largest losses, largest first (ties: lower index first).

  Args:
    losses: ``[n]`` per-example losses.
    k: how many (at most ``n``).

  Returns:
    ``[min(k, n)]`` int64 indices.
  """
  losses = np.asarray(losses, np.float64)
  if losses.ndim != 1:
    raise ValueError(f"losses must have shape [n], got {losses.shape}.")
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}.")
  order = np.lexsort((np.arange(losses.size), -losses))
  return order[:k]


def image_grid(images: np.ndarray, num_columns: int, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
  """Tiles ``images [n, H, W, C]`` (values in [0, 1]) into one ``[rows * (H + pad), num_columns * (W + pad), C]`` array."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f"images must have shape [n, H, W, C], got {images.shape}.")
  n, h, w, c = images.shape
  rows = -(-n // num_columns)
  grid = np.full((rows * (h + pad) + pad, num_columns * (w + pad) + pad, c), pad_value, np.float32)
  for i in range(n):
    r, col = divmod(i, num_columns)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
  return grid


def write_review(directory: str, images: np.ndarray, labels: np.ndarray, losses: np.ndarray, k: int, *,
                 predictions: np.ndarray | None = None, class_names: Sequence[str] | None = None,
                 name: str = "review", num_columns: int = 10) -> tuple[str, str]:
  """Writes the ``k`` highest-loss examples as ``<name>.png`` (a captioned grid) and ``<name>.csv``.

  The CSV has the columns :data:`REVIEW_FIELDS`, one row per example, largest
  loss first; ``index`` is the example's position in ``images``.
  ``corrected_label`` is empty: a reviewer writes the right label there
  (or leaves it empty), and :func:`read_corrections` reads it back.

  Args:
    directory: where to write (created if needed).
    images: ``[n, H, W, C]`` in ``[0, 1]`` (uint8 is divided by 255).
    labels: ``[n]`` int labels as used in training.
    losses: ``[n]`` per-example losses.
    k: how many to review.
    predictions: optional ``[n]`` predicted labels, shown and written.
    class_names: optional names for the caption (indexed by label).
    name: the file stem.
    num_columns: images per row of the grid.

  Returns:
    ``(png_path, csv_path)``.

  The figure is drawn on its own Agg canvas; matplotlib's global backend is
  not changed.
  """
  # A Figure with its own Agg canvas: no pyplot, so matplotlib's global backend
  # (e.g. a notebook's) is left as it is.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  images = np.asarray(images)
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 255
  labels, losses = np.asarray(labels), np.asarray(losses)
  if images.ndim != 4 or labels.shape != images.shape[:1] or losses.shape != images.shape[:1]:
    raise ValueError(f"expected images [n, H, W, C], labels [n] and losses [n], got {images.shape}, "
                     f"{labels.shape} and {losses.shape}.")
  os.makedirs(directory, exist_ok=True)
  chosen = hardest_examples(losses, k)
  csv_path = os.path.join(directory, f"{name}.csv")
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=REVIEW_FIELDS)
    writer.writeheader()
    for rank, index in enumerate(chosen):
      writer.writerow({"rank": rank, "index": int(index), "label": int(labels[index]),
                       "prediction": "" if predictions is None else int(predictions[index]),
                       "loss": f"{float(losses[index]):.6g}", "corrected_label": ""})
  columns = min(num_columns, len(chosen))
  rows = -(-len(chosen) // columns)
  fig = Figure(figsize=(1.3 * columns, 1.55 * rows))
  FigureCanvasAgg(fig)
  axes = fig.subplots(rows, columns, squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for rank, index in enumerate(chosen):
    ax = axes.ravel()[rank]
    image = images[index]
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None,
              vmin=0, vmax=1)
    label = class_names[labels[index]] if class_names is not None else str(labels[index])
    caption = f"#{index} y={label}"
    if predictions is not None:
      caption += f"\npred={predictions[index]} "
    else:
      caption += "\n"
    ax.set_title(caption + f"l={losses[index]:.2f}", fontsize=7)
  fig.tight_layout()
  png_path = os.path.join(directory, f"{name}.png")
  fig.savefig(png_path, dpi=100)
  return png_path, csv_path


def read_corrections(csv_path: str) -> dict[int, int]:
  """``{index: corrected_label}`` from a reviewed CSV (rows with an empty ``corrected_label`` are skipped).

  Raises:
    FileNotFoundError: if the file does not exist.
    ValueError: if a column is missing or a value is not an integer.
  """
  if not os.path.exists(csv_path):
    raise FileNotFoundError(f"no review file at {csv_path!r}.")
  corrections = {}
  with open(csv_path, newline="") as f:
    reader = csv.DictReader(f)
    missing = {"index", "corrected_label"} - set(reader.fieldnames or ())
    if missing:
      raise ValueError(f"{csv_path} lacks the column(s) {sorted(missing)}; expected {REVIEW_FIELDS}.")
    for line, row in enumerate(reader, start=2):
      value = (row["corrected_label"] or "").strip()
      if not value:
        continue
      try:
        corrections[int(row["index"])] = int(value)
      except ValueError:
        raise ValueError(f"{csv_path}:{line}: index and corrected_label must be integers, got "
                         f"{row['index']!r} and {value!r}.") from None
  return corrections


def apply_corrections(labels: np.ndarray, corrections: Mapping[int, int], num_classes: int | None = None
                      ) -> np.ndarray:
  """A copy of ``labels [n]`` with ``labels[index] = corrected`` for every correction.

  Raises:
    ValueError: for an index outside ``[0, n)`` or a label outside ``[0, num_classes)``.
  """
  labels = np.array(labels, copy=True)
  for index, label in corrections.items():
    if not 0 <= index < labels.shape[0]:
      raise ValueError(f"correction index {index} is outside [0, {labels.shape[0]}).")
    if num_classes is not None and not 0 <= label < num_classes:
      raise ValueError(f"corrected label {label} (index {index}) is outside [0, {num_classes}).")
    labels[index] = label
  return labels
