"""The example of docs/segmentation.md runs and prints what the text says."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "segmentation.md"


def test_the_sampled_loss_example_prints_the_documented_numbers(capsys):
    [example] = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    exec(compile(example, str(DOC), "exec"), {"__name__": "docs_example"})
    assert capsys.readouterr().out.strip() == "1.5351 3.0 0.5"
