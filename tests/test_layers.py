"""The library's declared layer order (.importlinter) holds, its modules import each other without cycles, a
planted back-import breaks the contract, and no source file is over 500 lines."""
import glob
import os
import shutil
import subprocess
import sys

import grimp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def _lint(cwd: str, pythonpath: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=pythonpath)
    return subprocess.run([LINT, "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_layer_contract_is_kept():
    r = _lint(ROOT, ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "1 kept, 0 broken" in r.stdout


def test_a_planted_back_import_breaks_the_contract(tmp_path):
    """The model layer importing the training loop must fail the check (the contract is not vacuous)."""
    shutil.copytree(os.path.join(ROOT, "jaxlava"), tmp_path / "jaxlava",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, ".importlinter"), tmp_path / ".importlinter")
    layers = tmp_path / "jaxlava" / "model" / "layers.py"
    layers.write_text(layers.read_text() + "\nfrom jaxlava.training import loop  # planted\n")
    r = _lint(str(tmp_path), str(tmp_path))
    assert r.returncode != 0
    assert "jaxlava.model.layers -> jaxlava.training.loop" in r.stdout


def test_no_import_cycles_between_modules():
    graph = grimp.build_graph("jaxlava")
    cycles = []
    for m in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(m):
            if graph.chain_exists(importer=imported, imported=m):
                cycles.append(" -> ".join(graph.find_shortest_chain(importer=imported, imported=m) + (imported,)))
    assert not cycles, "import cycles:\n" + "\n".join(sorted(set(cycles)))


@pytest.mark.parametrize("folder", ["jaxlava", "train", "data", "eval", "bench", "tests"])
def test_source_files_stay_readable_in_one_sitting(folder):
    long = {}
    for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True):
        with open(path) as fh:
            n = sum(1 for _ in fh)
        if n > 500:
            long[os.path.relpath(path, ROOT)] = n
    assert not long, f"files over 500 lines: {long}"
