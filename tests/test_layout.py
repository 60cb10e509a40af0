"""The tree is the architecture (STYLE.md): driving a run → pure analysis ← presentation.

Imports are read with `ast`, so the rules hold for every import in the package, including
those inside functions.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

TOOLKIT = Path(__file__).resolve().parent.parent / "toolkit"
MAX_FUNCTION_LINES = 100

# Libraries that do I/O, patch the interpreter or draw: none of them in pure analysis.
NOT_IN_ANALYSIS = ("gevent", "locust", "psutil", "matplotlib", "jinja2", "aiohttp", "httpx",
                   "urllib.request", "http", "socket", "subprocess", "sqlalchemy")


def module_name(path: Path) -> str:
    parts = path.relative_to(TOOLKIT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("perfkit", *parts))


def imports_of(path: Path, module: str) -> set[str]:
    """Absolute names of every module that `path`, the module `module`, imports (relative
    imports resolved)."""
    package = module.split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            # `from . import rundir` imports the module perfkit.rundir
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def modules() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path, module_name(path))
            for path in TOOLKIT.rglob("*.py")}


def offending(rule_from: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for name, imported in modules().items():
        if name == rule_from or name.startswith(rule_from + "."):
            for target in sorted(imported):
                if any(target == f or target.startswith(f + ".") for f in forbidden):
                    found.append(f"{name} imports {target}")
    return found


def test_analysis_is_pure() -> None:
    assert offending("perfkit.analysis", (
        *NOT_IN_ANALYSIS, "perfkit.run", "perfkit.report", "perfkit.collectors",
        "perfkit.rundir", "perfkit.reference", "perfkit.cli")) == []


def test_report_never_imports_run() -> None:
    assert offending("perfkit.report", ("perfkit.run", "perfkit.cli", "gevent", "locust")) == []


def test_collectors_and_run_stay_below_the_cli() -> None:
    assert offending("perfkit.run", ("perfkit.cli",)) == []
    assert offending("perfkit.collectors", ("perfkit.run", "perfkit.report", "perfkit.cli",
                                            "perfkit.analysis")) == []


def test_reference_service_stands_apart() -> None:
    toolkit = [f"perfkit.{p.stem if p.is_file() else p.name}" for p in TOOLKIT.iterdir()
               if p.name not in ("reference", "errors.py", "__init__.py", "__pycache__")]
    assert offending("perfkit.reference", tuple(toolkit)) == []


def test_no_function_over_a_hundred_lines() -> None:
    long = []
    for path in TOOLKIT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{module_name(path)}.{node.name}: {length} lines")
    assert long == []


def test_the_checker_resolves_relative_imports(tmp_path: Path) -> None:
    fake = tmp_path / "fake.py"
    fake.write_text("from ..run import runner\nfrom . import stats\n\n\n"
                    "def f():\n    import gevent\n")
    found = imports_of(fake, "perfkit.analysis.fake")
    assert {"perfkit.run.runner", "perfkit.analysis.stats", "gevent"} <= found


@pytest.mark.parametrize("statement", [
    "import perfkit",
    "import perfkit.analysis.kpi, perfkit.report, perfkit.kpi_file, perfkit.settings,"
    " perfkit.rundir",
])
def test_importing_perfkit_patches_nothing(statement: str) -> None:
    """Only starting a load may monkey-patch the standard library (Locust does, with gevent)."""
    code = (f"{statement}\nimport socket, sys\n"
            "assert 'gevent' not in sys.modules and 'locust' not in sys.modules, 'gevent'\n"
            "assert socket.socket.__module__ == 'socket', socket.socket.__module__\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
