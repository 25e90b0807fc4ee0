"""The README's worked example (add a generator and a sampler) runs as written."""
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_worked_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "register_sampler(UnigramSampler)" in b)
    # A fresh process: the example registers a model and a sampler globally.
    proc = subprocess.run([sys.executable, "-c", example + "\nprint('ok')\n"], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
