"""Components by name: a plain dict from a name to a constructor, or a user's own by import path.

A registry is an ordinary ``dict`` written where it is used (the experiment
entrypoints keep theirs beside the code that calls them). :func:`lookup` reads
one, and also accepts ``"package.module:attribute"`` for a component of the
user's own, so ``--config.model=my_pkg.models:MyNet`` works with no
registration step.
"""

import importlib
from typing import Any, Mapping


def is_import_path(name: str) -> bool:
  """Whether ``name`` is a ``module:attribute`` import path rather than a registry name."""
  return isinstance(name, str) and ":" in name and not name.startswith(("folder:", "npz:", "tfds:"))


def import_object(path: str, field: str = "component") -> Any:
  """The object at ``"package.module:attribute"`` (the attribute may be dotted: ``module:Class.method``).

  Raises:
    ValueError: if ``path`` is not of that form, the module cannot be imported
      or has no such attribute; the message names ``field``.
  """
  module_name, _, attribute = path.partition(":")
  if not module_name or not attribute:
    raise ValueError(f"{field}: expected an import path 'package.module:attribute', got {path!r}.")
  try:
    obj = importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(f"{field}={path!r}: cannot import module {module_name!r} ({e}); is it on PYTHONPATH?") from None
  for part in attribute.split("."):
    if not hasattr(obj, part):
      raise ValueError(f"{field}={path!r}: module {module_name!r} has no attribute {attribute!r}.")
    obj = getattr(obj, part)
  return obj


def lookup(registry: Mapping[str, Any], name: str, field: str) -> Any:
  """``registry[name]``, or the object at ``name`` when it is a ``module:attribute`` import path.

  Args:
    registry: names to components (constructors, modules, functions).
    name: a key of ``registry`` or an import path.
    field: what the name configures, e.g. ``"--config.model"``, for errors.

  Returns:
    The component.

  Raises:
    ValueError: for an unknown name (listing the known ones) or an import path
      that does not resolve.

  Example:
    >>> MODELS = {"mlp": metalax.models.MLP, "conv4": metalax.models.Conv4}
    >>> lookup(MODELS, "conv4", "--config.model")          # metalax.models.Conv4
    >>> lookup(MODELS, "my_pkg.nets:Net", "--config.model")  # the user's own module
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"{field} must be a name ({', '.join(sorted(registry))}) or 'package.module:attribute', "
                     f"got {name!r}.")
  if name in registry:
    return registry[name]
  if is_import_path(name):
    return import_object(name, field)
  raise ValueError(f"{field}: unknown {name!r}; expected one of {', '.join(sorted(registry))}, or an import path "
                   "'package.module:attribute' for your own.")
