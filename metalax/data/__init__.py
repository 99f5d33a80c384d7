"""Task families and datasets."""

from metalax.data.sinusoid import SinusoidTasks
from metalax.data.sinusoid import sample_sinusoid
from metalax.data.sinusoid import sample_sinusoid_tasks
from metalax.data.sinusoid import sinusoid_episodes

__all__ = (
    "SinusoidTasks",
    "sample_sinusoid",
    "sample_sinusoid_tasks",
    "sinusoid_episodes",
)
