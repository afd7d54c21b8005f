"""scripts/clean_outputs.py stores outputs the way nbval compares them, without environment noise."""

import nbformat

from notebook_utils import load_script

WARNING = ("/venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: IProgress not found. "
           "Please update jupyter and ipywidgets.\n  from .autonotebook import tqdm as notebook_tqdm\n")


def test_warning_only_stderr_is_dropped_and_other_streams_are_kept_merged():
    clean = load_script("scripts/clean_outputs.py")
    outputs = [nbformat.v4.new_output("stream", name="stdout", text="a\n"),
               nbformat.v4.new_output("stream", name="stderr", text=WARNING),
               nbformat.v4.new_output("stream", name="stdout", text="b\n")]
    cleaned = clean.clean_cell_outputs(outputs)
    assert [(o["name"], o["text"]) for o in cleaned] == [("stdout", "a\nb\n")]
    assert clean.clean_cell_outputs(cleaned) == cleaned  # idempotent


def test_stderr_with_more_than_the_warning_keeps_the_rest():
    clean = load_script("scripts/clean_outputs.py")
    cleaned = clean.clean_cell_outputs([nbformat.v4.new_output("stream", name="stderr", text=WARNING + "real\n")])
    assert [(o["name"], o["text"]) for o in cleaned] == [("stderr", "real\n")]
