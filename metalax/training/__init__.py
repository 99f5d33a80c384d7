"""The training layer: a step loop with orbax checkpoints and exact resume, run records, configs and a CLI.

Everything a training script needs besides its model and step, importable by a
user's own script::

  from metalax import training

  def step(state, key, data):            # pure: (state, key, data) -> (state, metrics)
    ...
    return state, {"loss": loss}

  state = training.train_loop(step, state, data=data, key=key, num_iterations=1000, steps_per_call=100,
                              checkpoint_every=250, run_dir=workdir, desc="train",
                              on_checkpoint=validate, best_metric="accuracy")
  best_state, best_step, best_metrics = training.restore_best(workdir, state)
"""

from metalax.training import checkpoints
from metalax.training import cli
from metalax.training import config
from metalax.training import loop
from metalax.training import records
from metalax.training import registry
from metalax.training import stats
from metalax.training.checkpoints import CheckpointMismatch
from metalax.training.checkpoints import abstract
from metalax.training.checkpoints import checkpoint_manager
from metalax.training.checkpoints import checkpoint_mismatch
from metalax.training.checkpoints import restore_best
from metalax.training.checkpoints import restore_latest
from metalax.training.checkpoints import restore_or_init
from metalax.training.checkpoints import save_checkpoint
from metalax.training.cli import initialize_distributed
from metalax.training.cli import quiet_orbax_logs
from metalax.training.cli import run
from metalax.training.cli import user_error
from metalax.training.config import HELP
from metalax.training.config import base_config
from metalax.training.config import check_choice
from metalax.training.config import check_divisor
from metalax.training.config import check_fraction
from metalax.training.config import check_nonnegative_float
from metalax.training.config import check_nonnegative_int
from metalax.training.config import check_positive_float
from metalax.training.config import check_positive_floats
from metalax.training.config import check_positive_int
from metalax.training.config import check_positive_ints
from metalax.training.config import make_mesh
from metalax.training.config import run_settings
from metalax.training.config import validate
from metalax.training.loop import MetricWriter
from metalax.training.loop import chunks
from metalax.training.loop import train_loop
from metalax.training.records import append_jsonl
from metalax.training.records import check_resume
from metalax.training.records import is_main_process
from metalax.training.records import prepare_workdir
from metalax.training.records import read_jsonl
from metalax.training.records import truncate_jsonl
from metalax.training.records import write_atomic
from metalax.training.records import write_json
from metalax.training.records import write_run_info
from metalax.training.registry import import_object
from metalax.training.registry import lookup
from metalax.training.stats import mean_and_interval
from metalax.training.stats import timed

__all__ = (
    "HELP",
    "CheckpointMismatch",
    "MetricWriter",
    "abstract",
    "append_jsonl",
    "base_config",
    "check_choice",
    "check_divisor",
    "check_fraction",
    "check_nonnegative_float",
    "check_nonnegative_int",
    "check_positive_float",
    "check_positive_floats",
    "check_positive_int",
    "check_positive_ints",
    "check_resume",
    "checkpoint_manager",
    "checkpoint_mismatch",
    "checkpoints",
    "chunks",
    "cli",
    "config",
    "import_object",
    "initialize_distributed",
    "is_main_process",
    "lookup",
    "loop",
    "make_mesh",
    "mean_and_interval",
    "prepare_workdir",
    "quiet_orbax_logs",
    "read_jsonl",
    "records",
    "registry",
    "restore_best",
    "restore_latest",
    "restore_or_init",
    "run",
    "run_settings",
    "save_checkpoint",
    "stats",
    "timed",
    "train_loop",
    "truncate_jsonl",
    "user_error",
    "validate",
    "write_atomic",
    "write_json",
    "write_run_info",
)
