"""The user guide and the README stay true: their python blocks run, in order, per file."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("doc", ["README.md", "docs/guide.md"])
def test_python_blocks_run(doc, capsys):
    text = (ROOT / doc).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, f"{doc} has no python example"
    namespace = {}
    for block in blocks:
        exec(compile(block, doc, "exec"), namespace)
