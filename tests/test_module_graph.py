"""Issue 18, item 3: the registry owns the wire ids; frame.py and the registry do not import
each other in a circle, and frame_info lives above both (sparsecodec.info)."""

from __future__ import annotations

import ast
from pathlib import Path

import sparsecodec as sc
from sparsecodec import frame, packed, patch, registry

PKG = Path(sc.__file__).resolve().parent


def _imports(module: str) -> set[str]:
    tree = ast.parse((PKG / f"{module}.py").read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out.add(node.module or "")
    return out


def test_the_registry_imports_no_wire_format_module():
    assert not _imports("registry") & {"frame", "bundle", "packed", "patch", "info"}


def test_frame_takes_its_ids_from_the_registry_and_frame_info_is_above_both():
    assert "registry" in _imports("frame") and "info" not in _imports("frame")
    assert {"frame", "registry"} <= _imports("info")
    assert frame.BUNDLE_WIRE_ID is registry.BUNDLE_WIRE_ID
    assert (packed.PACKED_WIRE_ID, patch.PATCH_WIRE_ID) == (registry.PACKED_WIRE_ID, registry.PATCH_WIRE_ID)
    assert set(registry.RESERVED_WIRE_IDS) == set(registry.MESSAGE_KINDS)
    assert sc.frame_info is frame.frame_info      # the old import path still works
