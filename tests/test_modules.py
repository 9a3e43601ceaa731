"""Every module of the package imports: a name removed from one module and still imported by another fails
here, in the fast loop, not only in the slow test that starts the server using it."""

import importlib
import pkgutil

import pytest

import higgs_tts

MODULES = sorted(m.name for m in pkgutil.walk_packages(higgs_tts.__path__, "higgs_tts."))


def test_the_package_has_its_layers():
    assert {f"higgs_tts.{layer}" for layer in ("delivery", "service", "synthesis", "engine", "core")} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    importlib.import_module(name)
