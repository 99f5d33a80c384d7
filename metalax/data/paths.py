"""Where datasets live on disk: one convention for every loader.

A loader for dataset ``name`` reads from the first of:

1. the ``data_dir`` argument (``--config.data_dir`` in the experiments): the
   dataset's own folder, used as given;
2. ``$METALAX_DATA_DIR/<name>`` when the environment variable
   ``METALAX_DATA_DIR`` is set (one root holding a subfolder per dataset, e.g.
   ``omniglot/``, ``mnist/``, ``cifar100/``);
3. ``~/metalax_data/<name>``, a per-user default (like TFDS's
   ``~/tensorflow_datasets``).

Nothing defaults to a folder beside the source tree. Downloads (see
:mod:`metalax.data.download`) are written into the same folder. Decoded-image
caches (``.npz``) go to :func:`default_cache_dir` instead, which can be deleted
at any time.
"""

import os
from typing import Sequence

DATA_DIR_ENV = "METALAX_DATA_DIR"
"""The environment variable naming the root folder with one subfolder per dataset."""

DEFAULT_DATA_ROOT = os.path.join("~", "metalax_data")
"""The per-user default root, ``~/metalax_data`` (expanded when used)."""


def default_data_root() -> str:
  """``$METALAX_DATA_DIR`` when set, else ``~/metalax_data`` (expanded)."""
  root = os.environ.get(DATA_DIR_ENV)
  return os.path.expanduser(root) if root else os.path.expanduser(DEFAULT_DATA_ROOT)


def _resolve(name: str, data_dir: str | os.PathLike | None) -> tuple[str, str]:
  """Returns ``(folder, how it was chosen)``."""
  if not isinstance(name, str) or not name or os.sep in name or name in (".", ".."):
    raise ValueError(f"name must be a dataset folder name such as 'omniglot', got {name!r}.")
  if data_dir is not None and os.fspath(data_dir) != "":
    return os.path.expanduser(os.fspath(data_dir)), "the data_dir argument (--config.data_dir)"
  root = os.environ.get(DATA_DIR_ENV)
  if root:
    return (os.path.join(os.path.expanduser(root), name),
            f"${DATA_DIR_ENV}={root}, so its {name}/ subfolder")
  return (os.path.join(os.path.expanduser(DEFAULT_DATA_ROOT), name),
          f"the per-user default {os.path.join(DEFAULT_DATA_ROOT, name)} (neither a data_dir "
          f"argument nor ${DATA_DIR_ENV} was given)")


def resolve_data_dir(name: str, data_dir: str | os.PathLike | None = None) -> str:
  """The folder that holds dataset ``name``'s files.

  Args:
    name: the dataset's folder name, e.g. ``"omniglot"``, ``"mnist"``,
      ``"cifar100"``, ``"cub"``, ``"mini_imagenet"``, ``"tiered_imagenet"``.
    data_dir: an explicit folder (returned as given, ``~`` expanded); None or
      ``""`` to use ``$METALAX_DATA_DIR/<name>``, else ``~/metalax_data/<name>``.

  Returns:
    The folder path (it need not exist yet).

  Raises:
    ValueError: if ``name`` is empty or holds a path separator.

  Example:
    >>> os.environ["METALAX_DATA_DIR"] = "/data"
    >>> resolve_data_dir("omniglot")
    '/data/omniglot'
    >>> resolve_data_dir("omniglot", "/elsewhere/omni")
    '/elsewhere/omni'
  """
  return _resolve(name, data_dir)[0]


def default_cache_dir() -> str:
  """Where decoded images are cached: ``$XDG_CACHE_HOME/metalax``, else ``~/.cache/metalax``."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "metalax")


def not_found_message(title: str, name: str, data_dir: str | os.PathLike | None,
                      expected: Sequence[str], remedy: str) -> str:
  """The text of every missing-data error.

  Args:
    title: the dataset as people write it, e.g. ``"Omniglot"``.
    name: its folder name (see :func:`resolve_data_dir`).
    data_dir: the ``data_dir`` argument the loader got (None for the default).
    expected: the files or layouts expected in the folder.
    remedy: what would fetch them: the download that would have been made, or
      where to get the files when there is no stable public URL.

  Returns:
    A message naming the files, the folder, how the folder was chosen, the
    flag and the environment variable that choose it, and ``remedy``.
  """
  folder, how = _resolve(name, data_dir)
  return (
      f"{title} not found: expected {', '.join(expected)} in {folder} (the folder comes from "
      f"{how}). Choose the folder with data_dir=... (--config.data_dir=... in the experiments) or "
      f"set {DATA_DIR_ENV} to a root folder with the subfolder {name}/; the default is "
      f"{os.path.join(DEFAULT_DATA_ROOT, name)}. {remedy}")
