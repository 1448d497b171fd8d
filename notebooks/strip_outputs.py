"""Strip outputs and execution counts from the notebooks (the test suite refuses stored outputs):
``python notebooks/strip_outputs.py [NOTEBOOK ...]`` (default: every notebook here)."""

import pathlib
import sys

import nbformat


def strip(path: pathlib.Path) -> bool:
    nb = nbformat.read(path, as_version=4)
    changed = False
    for c in nb.cells:
        if c.cell_type == "code" and (c.outputs or c.execution_count is not None):
            c.outputs, c.execution_count, changed = [], None, True
    if changed:
        nbformat.write(nb, path)
    return changed


if __name__ == "__main__":
    paths = [pathlib.Path(p) for p in sys.argv[1:]] or sorted(pathlib.Path(__file__).parent.glob("*.ipynb"))
    for p in paths:
        if strip(p):
            print(f"stripped {p}")
