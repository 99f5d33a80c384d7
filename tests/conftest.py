"""Shared test settings: float32 on CPU, fixed keys."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
