"""Every row of docs/bad_inputs.md is run: each gives a clear error, and the doc is what they print today."""

from tests.experiments import bad_inputs


def test_every_bad_input_gives_one_clear_line_and_the_table_is_current():
  messages = bad_inputs.run_rows()
  for row, message in zip(bad_inputs.ROWS, messages):
    assert message != "(no error)", row.what
    assert "Traceback" not in message, (row.what, message)
    if row.argv is not None:
      assert message.endswith("(exit 1, 1 line on stderr)"), (row.what, message)
  with open(bad_inputs.DOC) as f:
    recorded = f.read()
  assert recorded == bad_inputs.render(messages), (
      "docs/bad_inputs.md is stale: regenerate it with `python -m tests.experiments.bad_inputs`")
