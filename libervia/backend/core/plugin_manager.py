"""Discovery and loading of the backend's plugins.

A plugin is a module named ``plugin_*.py`` in :mod:`libervia.backend.plugins`
with a ``PLUGIN_INFO`` mapping:

``name``
    human readable name
``import_name``
    unique key in ``host.plugins`` (e.g. ``"XEP-0060"``)
``type``
    free-form category (``"XEP"``, ``"MISC"``, ...)
``dependencies``
    import names that must be loaded first; a missing one prevents loading
    and raises :class:`PluginError`
``recommendations``
    import names loaded first when available
``main``
    name of the class instantiated with the host
``modes``
    ``["client"]``, ``["component"]`` or both
``description``
    one line

Plugins are instantiated in dependency order, so a plugin's ``__init__`` can
use ``host.plugins[dep]`` for each of its dependencies and recommendations.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
from types import ModuleType
from typing import Any

from libervia.backend.core.exceptions import PluginError

log = logging.getLogger(__name__)

PLUGINS_PACKAGE = "libervia.backend.plugins"
REQUIRED_KEYS = ("name", "import_name", "main")


def discover(package: str = PLUGINS_PACKAGE) -> dict[str, ModuleType]:
    """Import every ``plugin_*`` module of ``package``; return them by import name.

    Raises PluginError for a module without a valid ``PLUGIN_INFO`` or with an
    import name already taken.
    """
    pkg = importlib.import_module(package)
    modules: dict[str, ModuleType] = {}
    for module_info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not module_info.name.startswith("plugin_"):
            continue
        module = importlib.import_module(f"{package}.{module_info.name}")
        info = getattr(module, "PLUGIN_INFO", None)
        if not isinstance(info, dict):
            raise PluginError(f"plugin module {module.__name__} has no PLUGIN_INFO mapping")
        missing = [key for key in REQUIRED_KEYS if key not in info]
        if missing:
            raise PluginError(
                f"PLUGIN_INFO of {module.__name__} lacks {', '.join(missing)}"
            )
        import_name = info["import_name"]
        if import_name in modules:
            raise PluginError(
                f"plugins {modules[import_name].__name__} and {module.__name__} both "
                f"use the import name {import_name!r}"
            )
        modules[import_name] = module
    return modules


def _depends_on(modules: dict[str, ModuleType], name: str, target: str) -> bool:
    """Return True when plugin ``name`` needs ``target`` through its dependencies."""
    seen: set[str] = set()
    stack = [name]
    while stack:
        current = stack.pop()
        if current in seen or current not in modules:
            continue
        seen.add(current)
        deps = modules[current].PLUGIN_INFO.get("dependencies", [])
        if target in deps:
            return True
        stack.extend(deps)
    return False


def load_order(modules: dict[str, ModuleType]) -> list[str]:
    """Return the import names sorted so that each plugin follows what it needs.

    Raises PluginError for a missing dependency or a dependency cycle.
    """
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = " -> ".join(chain + (name,))
            raise PluginError(f"plugin dependency cycle: {cycle}")
        state[name] = "visiting"
        info = modules[name].PLUGIN_INFO
        for dep in info.get("dependencies", []):
            if dep not in modules:
                raise PluginError(
                    f"plugin {name!r} depends on {dep!r}, which is not installed"
                )
            visit(dep, chain + (name,))
        for rec in info.get("recommendations", []):
            # A recommendation only orders plugins when it can: one that
            # depends back on this plugin is loaded after it, not a cycle.
            if rec in modules and state.get(rec) != "visiting" and not _depends_on(
                modules, rec, name
            ):
                visit(rec, chain + (name,))
        state[name] = "done"
        order.append(name)

    for name in sorted(modules):
        visit(name, ())
    return order


def plugin_modes(plugin: Any) -> tuple[str, ...]:
    """Return the connection modes a loaded plugin supports ("client", "component").

    A plugin whose ``PLUGIN_INFO`` has no ``modes`` supports clients only.
    """
    module = sys.modules.get(type(plugin).__module__)
    info = getattr(module, "PLUGIN_INFO", None) or {}
    return tuple(info.get("modes") or ("client",))


def load_plugins(host: Any, modules: dict[str, ModuleType] | None = None) -> dict[str, Any]:
    """Instantiate every discovered plugin in dependency order into ``host.plugins``."""
    if modules is None:
        modules = discover()
    for import_name in load_order(modules):
        module = modules[import_name]
        info = module.PLUGIN_INFO
        cls = getattr(module, info["main"], None)
        if cls is None:
            raise PluginError(
                f"plugin {import_name!r}: main class {info['main']!r} not found in "
                f"{module.__name__}"
            )
        log.debug("loading plugin %s (%s)", import_name, info["name"])
        host.plugins[import_name] = cls(host)
    log.info("plugins loaded: %s", ", ".join(host.plugins))
    return host.plugins
