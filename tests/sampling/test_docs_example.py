"""The sampler example of docs/hard-sampling.md runs and prints what the text says."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "hard-sampling.md"


def test_the_standalone_sampler_example_prints_the_documented_selection(capsys):
    [example] = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    exec(compile(example, str(DOC), "exec"), {"__name__": "docs_example"})
    assert capsys.readouterr().out.strip() == "[1, 3] [0, 1] 0.0"
