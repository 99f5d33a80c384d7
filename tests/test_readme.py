"""The README's Python example runs as written (only its run directory moved into the test's)."""

import os
import re

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_example(marker: str) -> str:
  text = open(os.path.join(REPO_ROOT, "README.md")).read()
  match = re.search(rf"<!-- readme-example: {marker} -->\n```python\n(.*?)```", text, re.S)
  assert match, f"no '{marker}' example in README.md"
  return match.group(1)


def test_training_layer_example(tmp_path):
  code = readme_example("training").replace('"/tmp/sine_run"', repr(str(tmp_path / "run")))
  namespace = {}
  exec(compile(code, "README.md", "exec"), namespace)
  assert namespace["best_step"] in (500, 1000, 1500, 2000)
  assert namespace["best_metrics"]["mse"] < 0.1  # 2000 Adam steps fit sin on [-3, 3]
  assert os.path.exists(tmp_path / "run" / "metrics.jsonl")
  exec(compile(code, "README.md", "exec"), {})  # a rerun resumes the finished run
