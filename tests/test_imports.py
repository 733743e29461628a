"""Every module of src/panosync imports, so that even the fast tier (`make test-fast`, which leaves out
the slow, Ray, browser, benchmark and training tests) touches all of them. A module whose optional
dependency is missing fails here rather than being skipped: `make setup` installs every extra."""

import importlib
import pkgutil
from pathlib import Path

import pytest

import panosync

PACKAGE = Path(panosync.__file__).parent


def module_names(path: list[str], prefix: str) -> list[str]:
    """Every module and package under `path`, found from the files alone: pkgutil.walk_packages would
    import each subpackage to look inside it and pass over one that fails to import."""
    names = []
    for info in pkgutil.iter_modules(path, prefix):
        names.append(info.name)
        if info.ispkg:
            names += module_names([str(Path(info.module_finder.path) / info.name.rpartition(".")[2])],
                                  info.name + ".")
    return names


MODULES = ["panosync", *module_names(panosync.__path__, "panosync.")]


def test_the_walk_finds_every_python_file():
    files = {".".join(("panosync", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
             for path in PACKAGE.rglob("*.py")}
    assert set(MODULES) == files


@pytest.mark.parametrize("name", MODULES)
def test_the_module_imports(name):
    importlib.import_module(name)
