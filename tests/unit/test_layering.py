"""One dependency direction: common <- producer, jobs, orchestration, dashboards <- stack; the
DAGs on orchestration; testkit (helpers of the tests and benchmarks) on anything but them."""

from __future__ import annotations

import ast

import pytest

from common.env import REPO_ROOT

PACKAGES = ("common", "producer", "jobs", "orchestration", "dashboards", "stack", "dags", "testkit", "benchmarks",
            "tests")
MAY_IMPORT = {
    "common": {"common"},
    "producer": {"common", "producer"},
    "jobs": {"common", "jobs"},
    "orchestration": {"common", "orchestration"},
    "dashboards": {"common", "dashboards"},
    "stack": {"common", "producer", "jobs", "orchestration", "dashboards", "stack"},
    "dags": {"common", "orchestration", "dags"},
    "testkit": {"common", "producer", "jobs", "orchestration", "dashboards", "stack", "testkit"},
    "benchmarks": {"common", "producer", "jobs", "orchestration", "dashboards", "stack", "testkit", "benchmarks"},
}


def project_imports(path) -> set[str]:
    """The project's top-level packages a module imports (at module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES}
    return found


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_each_package_imports_only_what_is_below_it(package):
    wrong = {str(path.relative_to(REPO_ROOT)): sorted(project_imports(path) - MAY_IMPORT[package])
             for path in sorted((REPO_ROOT / package).rglob("*.py")) if "jvm" not in path.parts}
    assert {module: names for module, names in wrong.items() if names} == {}


def test_the_check_sees_a_wrong_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\nfrom stack.settings import X\n\ndef f():\n    from tests.unit import y\n")
    assert project_imports(module) == {"stack", "tests"}
