"""Packaging and typing (issue 17, item 7): what type checkers see, what pip installs.

* ``sparsecodec`` ships ``py.typed`` and spells its lazy exports out for type checkers, so
  ``sc.TopK`` is a class to mypy, not ``Any``;
* hypothesis is only needed by ``sparsecodec.testing`` (the ``[testing]`` extra);
* ``benchmarks`` is not installed, and ``python -m fl`` / ``python -m benchmarks`` run from the
  checkout.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import sparsecodec

ROOT = Path(__file__).resolve().parents[1]

try:
    import tomllib
except ImportError:   # Python 3.10
    tomllib = None


def _pyproject() -> dict:
    if tomllib is None:
        pytest.skip("tomllib needs Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _run(code: str, *, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


def test_type_checking_block_names_every_lazy_export():
    tree = ast.parse((ROOT / "sparsecodec" / "__init__.py").read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If)
                 and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
    seen: dict[str, str | None] = {}
    for stmt in block.body:
        assert isinstance(stmt, ast.ImportFrom) and stmt.level == 1, ast.dump(stmt)
        for alias in stmt.names:
            seen[alias.asname or alias.name] = stmt.module
    assert seen == sparsecodec._LAZY, "TYPE_CHECKING imports and _LAZY disagree"
    for name in sparsecodec._LAZY:   # and each resolves at run time
        assert getattr(sparsecodec, name) is not None


def test_py_typed_is_shipped():
    assert (ROOT / "sparsecodec" / "py.typed").is_file()
    assert "py.typed" in _pyproject()["tool"]["setuptools"]["package-data"]["sparsecodec"]


def test_mypy_sees_real_types_for_sc_names():
    pytest.importorskip("mypy.api", reason="mypy is in the [test] extra")
    from mypy import api

    snippet = ("import sparsecodec as sc\n"
               "codec: int = sc.TopK(k=1)\n"          # an error only if sc.TopK is not Any
               "writer: sc.FrameWriter = sc.FrameWriter(100)\n"
               "sc.NoSuchName\n")
    out, err, status = api.run(["--follow-imports=silent", "--no-error-summary", "-c", snippet])
    assert status == 1, out + err
    assert 'expression has type "TopK", variable has type "int"' in out, out
    assert 'Module has no attribute "NoSuchName"' in out, out
    assert out.count("error:") == 2, out


def test_hypothesis_is_only_needed_by_sparsecodec_testing():
    project = _pyproject()["project"]
    assert not any(d.startswith("hypothesis") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert any(d.startswith("hypothesis") for d in extras["testing"])
    assert "sparsecodec[testing]" in extras["test"]        # make test installs it
    # without hypothesis: the codecs work, sparsecodec.testing names the extra to install
    r = _run("import sys; sys.modules['hypothesis'] = None\n"
             "import numpy as np, sparsecodec as sc\n"
             "x = np.arange(10, dtype=np.float32)\n"
             "assert sc.decode(bytes(sc.TopK(k=3).encode(x)))[-1] == 9\n"
             "try:\n    import sparsecodec.testing\n"
             "except ImportError as e:\n    print(e)\n")
    assert r.returncode == 0, r.stderr
    assert "pip install 'sparsecodec[testing]'" in r.stdout


@pytest.mark.parametrize("name", ["benchmarks", "fl"])
def test_top_level_names_that_collide_are_not_installed(name):
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    assert include == ["sparsecodec*"]
    # outside the checkout the name is free (no editable finder maps it to ours)
    r = _run(f"import importlib.util; print(importlib.util.find_spec({name!r}))", cwd=Path("/"))
    assert r.returncode == 0, r.stderr
    spec_line = r.stdout.strip()
    assert str(ROOT) not in spec_line, spec_line


@pytest.mark.parametrize("module", ["fl", "benchmarks"])
def test_module_clis_run_from_the_checkout(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"usage: python -m {module}" in r.stdout


def test_tests_import_the_checkouts_fl_and_benchmarks():
    # pytest's pythonpath = ["."]: the suite imports them from this checkout, installed or not
    assert "." in _pyproject()["tool"]["pytest"]["ini_options"]["pythonpath"]
    for name in ("fl", "benchmarks"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        assert Path(spec.origin).resolve().is_relative_to(ROOT), spec.origin
