"""Imports point down: pipelines -> components -> tipsv2_core (docs/architecture.md,
"Layers"), and no lower layer reaches the CLI through a subprocess either."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "tipsv2_core": {
        "ray",
        "kfp",
        "mlflow",
        "dvc",
        "great_expectations",
        "boto3",
        "components",
        "pipelines",
    },
    "components": {"kfp", "pipelines"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("layer", list(FORBIDDEN))
def test_layer_imports_only_downwards(layer):
    bad = {}
    for path in sorted((ROOT / layer).rglob("*.py")):
        hits = imported_roots(path) & FORBIDDEN[layer]
        if hits:
            bad[str(path.relative_to(ROOT))] = sorted(hits)
    assert bad == {}


# Calls that start a program (or hand a command line to one that does, like a Ray job).
LAUNCHERS = {
    "run", "Popen", "call", "check_call", "check_output", "system", "spawnl", "spawnv",
    "execv", "execvp", "execl", "execlp", "submit_job", "create_subprocess_exec",
    "create_subprocess_shell", "which", "with_name",
}  # fmt: skip
CLI = "tipsv2"


def _names_cli(node: ast.AST) -> bool:
    """True when `node` is the CLI's program name or a command line that starts with it:
    "tipsv2", ".../bin/tipsv2", "tipsv2 train ...", or f"tipsv2 {cmd}"."""
    if isinstance(node, ast.JoinedStr) and node.values:
        node = node.values[0]
    if not isinstance(node, ast.Constant) or not isinstance(node.value, str):
        return False
    first = node.value.split(" ", 1)[0]
    return Path(first).name == CLI and (first == node.value or node.value.startswith(first + " "))


def cli_invocations(source: str) -> list[int]:
    """Lines where `source` starts the `tipsv2` CLI: a command list whose first item names
    it (`["tipsv2", "train"]`, wherever the list is then run), or a launcher called with
    its name or a command line that starts with it (`os.system("tipsv2 train")`,
    `submit_job(entrypoint="tipsv2 train ...")`, `shutil.which("tipsv2")`)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.List | ast.Tuple) and node.elts and _names_cli(node.elts[0]):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            args = [*node.args, *(k.value for k in node.keywords)]
            if name in LAUNCHERS and any(_names_cli(a) for a in args):
                lines.append(node.lineno)
    return sorted(set(lines))


def test_the_cli_detector_finds_each_way_of_starting_the_cli():
    """The check below is only as good as this detector: it must see every form."""
    found = textwrap.dedent(
        """
        subprocess.run(["tipsv2", "train", "--out", out])
        cmd = ("/opt/venv/bin/tipsv2", "eval")
        os.system("tipsv2 train --recipe demo")
        client.submit_job(entrypoint=f"tipsv2 {kind} --out {out}")
        exe = Path(sys.executable).with_name("tipsv2")
        """
    )
    assert cli_invocations(found) == [2, 3, 4, 5, 6]
    harmless = textwrap.dedent(
        '''
        """Run `tipsv2 train` to make one."""
        experiment = "tipsv2"
        subprocess.run(["python", "-m", "components.train_entry", "--experiment", "tipsv2"])
        bucket = storage.run("tipsv2-data")
        log.info("tipsv2-train started")
        '''
    )
    assert cli_invocations(harmless) == []


@pytest.mark.parametrize("layer", ["tipsv2_core", "components"])
def test_lower_layers_never_start_the_cli(layer):
    """The CLI (`pipelines/cli`) is the top layer: a step or the library that shells out
    to it depends on everything above it, invisibly to the import check."""
    bad = {}
    for path in sorted((ROOT / layer).rglob("*.py")):
        if lines := cli_invocations(path.read_text()):
            bad[str(path.relative_to(ROOT))] = lines
    assert bad == {}
