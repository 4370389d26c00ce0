"""Public names imported on first use (PEP 562), for a package's ``__init__``: `import tiers` or `import dimee`
then loads no submodule, so a torch-free client (the ONNX mobile client) can use the codec, and the command
line answers ``--help`` or a bad argument without importing torch, transformers and datasets first."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(``__getattr__``, ``__dir__``) for `package`, whose globals are `namespace`. `exports` maps a public name
    to ``"sub"`` (the package's submodule that defines that name) or ``"some.module:attr"`` (any module, and
    the attribute to take from it). Other names resolve to the package's submodules (``tiers.codec``). A name
    is imported once and then kept in `namespace`, so later look-ups skip ``__getattr__``."""

    def __getattr__(name: str) -> Any:
        target = exports.get(name)
        if target is None:
            try:
                return importlib.import_module(f".{name}", package)
            except ModuleNotFoundError as err:
                if err.name != f"{package}.{name}":
                    raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = target.partition(":")
        source = importlib.import_module(module) if attr else importlib.import_module(f".{module}", package)
        value = getattr(source, attr or name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
