"""The README and docs/ pages: the worked example (a family in one module plus one zoo line) runs
as written, links resolve, and no page names a path of the machine it was written on."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README] + sorted((ROOT / "docs").glob("*.md"))


def python_blocks(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_worked_example_runs(tmp_path):
    blocks = python_blocks(README.read_text())
    family = next(b for b in blocks if "register_sampler(UnigramSampler)" in b)
    usage = next(b for b in blocks if "vargen.zoo.ZooEntry(" in b)
    assert family.startswith("# my_family.py")
    (tmp_path / "my_family.py").write_text(family)
    # A fresh process in the folder that holds my_family.py: the zoo line names that module, and
    # load_pipeline must import it (registering the model, its pipeline and its sampler) by itself.
    proc = subprocess.run([sys.executable, "-c", usage + "\nprint('ok')\n"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def _slug(heading):
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_links_resolve():
    bad = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                bad.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{page.name}: {target} (no such heading)")
    assert not bad, bad


def test_no_machine_paths():
    found = [f"{page.name}: {m}" for page in PAGES
             for m in re.findall(r"\S*(?:/tmp/|/work/|/root/|/home/)\S*", page.read_text())]
    assert not found, found


def test_bench_markers_pair():
    """demos/bench.py --update-doc rewrites what stands between these markers."""
    text = (ROOT / "docs" / "benchmarks.md").read_text()
    opened = re.findall(r"<!-- bench:([\w.-]+) -->", text)
    closed = re.findall(r"<!-- /bench:([\w.-]+) -->", text)
    assert opened and opened == closed and len(set(opened)) == len(opened)
