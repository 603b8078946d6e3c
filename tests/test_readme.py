"""The README's code and links stay true to the code: every Python block parses and its imports resolve, every
relative link and backticked repository path exists."""

from __future__ import annotations

import ast
import importlib
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "tfds_builders" / "seqcsist" / "README.md",
        REPO / "tfds_builders" / "csist100k" / "README.md"]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_blocks_parse_and_their_imports_resolve():
    blocks = _python_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 5
    for block in blocks:
        tree = ast.parse(block)  # a SyntaxError names the block's line
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
            elif isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):  # a submodule imported by name
                        importlib.import_module(f"{node.module}.{alias.name}")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_exist(doc):
    text = doc.read_text()
    anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        if path and not (doc.parent / path).exists():
            missing.append(target)
        elif not path and anchor not in anchors:
            missing.append(target)
    assert not missing, missing


def test_backticked_repository_paths_exist():
    text = (REPO / "README.md").read_text()
    candidates = set(re.findall(r"`((?:seqcsist_jax|experiments|tests|tfds_builders|docs)/[\w./-]+?)`", text))
    missing = [c for c in sorted(candidates) if not (REPO / c.split("::")[0]).exists()]
    assert not missing, missing


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"[`*_]", "", heading.strip().lower())
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")
