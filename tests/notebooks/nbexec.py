"""Execute a notebook top to bottom with parameters injected after its ``parameters`` cell (as
papermill does), in a fresh kernel whose working directory is ``notebooks/``; fail on any cell
error, naming the cell."""

from __future__ import annotations

import os
import pathlib

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"


def parameters_cell(nb) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    return tagged[0]


def execute(name: str, params: dict, timeout: int = 1200):
    """The executed notebook (outputs in memory; nothing is written into notebooks/)."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    src = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    i = parameters_cell(nb)
    nb.cells.insert(i + 1, nbformat.v4.new_code_cell(src, metadata={"tags": ["injected-parameters"]}))
    env = dict(os.environ, RLHF_JAX_NO_PROGRESS="1")
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    try:
        client.execute(env=env)
    except CellExecutionError as e:
        raise AssertionError(f"{name}: a cell failed:\n{str(e)[-4000:]}") from None
    return nb


def outputs_of(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def images_of(nb) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs_of(nb))
