"""Tests of plugin discovery, dependency ordering and loading."""

from __future__ import annotations

import importlib
import itertools
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from libervia.backend.core import plugin_manager
from libervia.backend.core.exceptions import PluginError

_package_numbers = itertools.count()


def fake_plugin(
    import_name: str,
    dependencies: list[str] | None = None,
    recommendations: list[str] | None = None,
    main_class: type | None = None,
) -> ModuleType:
    """Build a plugin module in memory with a PLUGIN_INFO and an optional main class."""
    module = ModuleType(f"fake_plugin_{import_name.lower()}")
    info: dict[str, Any] = {
        "name": f"Fake {import_name}",
        "import_name": import_name,
        "type": "TEST",
        "main": "Plugin",
        "modes": ["client"],
        "description": "test plugin",
    }
    if dependencies is not None:
        info["dependencies"] = dependencies
    if recommendations is not None:
        info["recommendations"] = recommendations
    module.PLUGIN_INFO = info
    if main_class is not None:
        module.Plugin = main_class
    return module


def modules_of(*modules: ModuleType) -> dict[str, ModuleType]:
    """Map fake plugin modules by import name, as discover() returns them."""
    return {module.PLUGIN_INFO["import_name"]: module for module in modules}


@pytest.fixture
def plugin_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path]]:
    """Yield the name and folder of a new, importable, empty package.

    Each test gets a distinct package name, so modules imported by one test
    are never reused by another.
    """
    name = f"fake_plugins_{next(_package_numbers)}"
    folder = tmp_path / name
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield name, folder
    for module_name in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module_name]


def write_module(folder: Path, file_name: str, source: str) -> None:
    """Write a module file into a package folder."""
    (folder / file_name).write_text(textwrap.dedent(source))
    importlib.invalidate_caches()


PLUGIN_SOURCE = """
    PLUGIN_INFO = {{
        "name": "{name}", "import_name": "{import_name}", "type": "TEST",
        "main": "Plugin", "modes": ["client"], "description": "test",
    }}

    class Plugin:
        def __init__(self, host):
            self.host = host
"""


class LoadOrderTests:
    """Dependencies and recommendations come before the plugins needing them."""

    def test_dependencies_first(self) -> None:
        modules = modules_of(
            fake_plugin("A", dependencies=["B"]),
            fake_plugin("B", dependencies=["C"]),
            fake_plugin("C"),
        )

        assert plugin_manager.load_order(modules) == ["C", "B", "A"]

    def test_shared_dependency_once(self) -> None:
        modules = modules_of(
            fake_plugin("A", dependencies=["Z"]),
            fake_plugin("B", dependencies=["Z"]),
            fake_plugin("Z"),
        )

        order = plugin_manager.load_order(modules)

        assert sorted(order) == ["A", "B", "Z"]
        assert order.index("Z") < order.index("A")
        assert order.index("Z") < order.index("B")

    def test_independent_sorted_by_name(self) -> None:
        modules = modules_of(fake_plugin("b"), fake_plugin("c"), fake_plugin("a"))

        assert plugin_manager.load_order(modules) == ["a", "b", "c"]

    def test_present_recommendation_first(self) -> None:
        # "A" sorts before "Z", so only the recommendation puts "Z" first.
        modules = modules_of(fake_plugin("A", recommendations=["Z"]), fake_plugin("Z"))

        assert plugin_manager.load_order(modules) == ["Z", "A"]

    def test_absent_recommendation_ignored(self) -> None:
        modules = modules_of(fake_plugin("A", recommendations=["NOT_INSTALLED"]))

        assert plugin_manager.load_order(modules) == ["A"]

    def test_missing_dependency_message(self) -> None:
        modules = modules_of(fake_plugin("XEP-0277", dependencies=["XEP-0060"]))

        with pytest.raises(PluginError) as info:
            plugin_manager.load_order(modules)

        message = str(info.value)
        assert "'XEP-0277'" in message
        assert "'XEP-0060'" in message
        assert "not installed" in message

    def test_cycle_raises(self) -> None:
        modules = modules_of(
            fake_plugin("A", dependencies=["B"]),
            fake_plugin("B", dependencies=["C"]),
            fake_plugin("C", dependencies=["A"]),
        )

        with pytest.raises(PluginError, match="cycle: A -> B -> C -> A"):
            plugin_manager.load_order(modules)

    def test_self_dependency_raises(self) -> None:
        modules = modules_of(fake_plugin("A", dependencies=["A"]))

        with pytest.raises(PluginError, match="cycle: A -> A"):
            plugin_manager.load_order(modules)

    def test_recommendation_cycle_not_fatal(self) -> None:
        modules = modules_of(
            fake_plugin("A", recommendations=["B"]),
            fake_plugin("B", dependencies=["A"]),
        )

        assert plugin_manager.load_order(modules) == ["A", "B"]


class DiscoverTests:
    """discover() imports plugin_* modules and checks their PLUGIN_INFO."""

    def test_real_plugins_found(self) -> None:
        modules = plugin_manager.discover()

        assert {"XEP-0060", "PUBSUB_CACHE", "XEP-0277"} <= set(modules)

    def test_real_plugins_order(self) -> None:
        order = plugin_manager.load_order(plugin_manager.discover())

        assert order.index("XEP-0060") < order.index("PUBSUB_CACHE")
        assert order.index("PUBSUB_CACHE") < order.index("XEP-0277")

    def test_only_plugin_modules(self, plugin_package: tuple[str, Path]) -> None:
        package, folder = plugin_package
        write_module(folder, "plugin_one.py", PLUGIN_SOURCE.format(name="One", import_name="ONE"))
        write_module(folder, "helpers.py", "RAISE_IF_IMPORTED = 1 / 0\n")

        modules = plugin_manager.discover(package)

        assert list(modules) == ["ONE"]
        assert modules["ONE"].__name__ == f"{package}.plugin_one"

    def test_missing_info_raises(self, plugin_package: tuple[str, Path]) -> None:
        package, folder = plugin_package
        write_module(folder, "plugin_bare.py", "class Plugin:\n    pass\n")

        with pytest.raises(PluginError, match=rf"{package}\.plugin_bare has no PLUGIN_INFO"):
            plugin_manager.discover(package)

    def test_missing_keys_raises(self, plugin_package: tuple[str, Path]) -> None:
        package, folder = plugin_package
        write_module(folder, "plugin_partial.py", 'PLUGIN_INFO = {"name": "Partial"}\n')

        with pytest.raises(PluginError, match="lacks import_name, main"):
            plugin_manager.discover(package)

    def test_duplicate_import_name_raises(self, plugin_package: tuple[str, Path]) -> None:
        package, folder = plugin_package
        write_module(folder, "plugin_a.py", PLUGIN_SOURCE.format(name="A", import_name="SAME"))
        write_module(folder, "plugin_b.py", PLUGIN_SOURCE.format(name="B", import_name="SAME"))

        with pytest.raises(PluginError) as info:
            plugin_manager.discover(package)

        message = str(info.value)
        assert f"{package}.plugin_a" in message
        assert f"{package}.plugin_b" in message
        assert "'SAME'" in message


class LoadPluginsTests:
    """load_plugins() instantiates the plugins in dependency order."""

    def test_dependency_visible_in_init(self) -> None:
        seen: dict[str, Any] = {}

        class Base:
            def __init__(self, host: Any) -> None:
                self.host = host

        class Dependent:
            def __init__(self, host: Any) -> None:
                seen["base"] = host.plugins.get("BASE")

        host = SimpleNamespace(plugins={})
        modules = modules_of(
            fake_plugin("AAA", dependencies=["BASE"], main_class=Dependent),
            fake_plugin("BASE", main_class=Base),
        )

        plugins = plugin_manager.load_plugins(host, modules)

        assert list(plugins) == ["BASE", "AAA"]
        assert isinstance(seen["base"], Base)
        assert plugins["BASE"].host is host

    def test_missing_main_class_raises(self) -> None:
        host = SimpleNamespace(plugins={})
        modules = modules_of(fake_plugin("NO_CLASS"))

        with pytest.raises(PluginError, match="main class 'Plugin' not found"):
            plugin_manager.load_plugins(host, modules)
