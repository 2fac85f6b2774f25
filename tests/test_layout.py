"""The README's layout section names what the tree holds, and the layers keep to their side of it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import medgen3d

PACKAGE = Path(medgen3d.__file__).parent
README = PACKAGE.parent.parent / "README.md"


def _layout_section() -> str:
    text = README.read_text()
    return text[text.index("## Layout") : text.index("## Development")]


def _imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_the_readme_layout_names_every_package_and_top_level_module():
    section = _layout_section()
    named = set(re.findall(r"^\s+([a-z_]+/|[a-z_]+\.py)", section, flags=re.MULTILINE))
    named |= {name.strip() for line in section.splitlines() for name in re.findall(r"([a-z_]+\.py)", line)}
    packages = {f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    synthesis = {p.name for p in (PACKAGE / "synthesis").glob("*.py") if p.name != "__init__.py"}
    assert packages - named == set() and modules - named == set() and synthesis - named == set()
    assert {n for n in named if n.endswith("/")} <= packages | {"bundles/", "tests/", "benchmarks/", "src/"}


def test_diffusion_holds_tensor_algorithms_only_and_metrics_do_not_need_the_engines():
    for path in (PACKAGE / "diffusion").glob("*.py"):
        used = _imports(path)
        assert not {"nibabel", "medgen3d.data.io", "medgen3d.data.dataset"} & used, path
        assert not any(m.startswith(("medgen3d.synthesis", "medgen3d.pipeline", "medgen3d.engines")) for m in used)
    for path in (PACKAGE / "metrics").glob("*.py"):
        assert not any(m.startswith("medgen3d.engines") for m in _imports(path)), path
