"""Registry of FL algorithms: ``get_algorithm(name)`` returns a (stateless) algorithm object.

Built-in algorithms are imported on first use; others register with
:func:`register_algorithm`. Unknown names raise ConfigError listing the valid ones.

    >>> get_algorithm("ec").name, sorted(available_algorithms())[:3]
    ('ec', ['ec', 'ef21', 'fedavg'])
    >>> get_algorithm("fedsgd")
    Traceback (most recent call last):
    ...
    sparsecodec.errors.ConfigError: unknown algorithm 'fedsgd'; valid algorithms: ec, ef21, fedavg, fedavg-topk, fedpm, flare, proxskip, sparse-proxskip, sparse-proxskip-server, sparsyfed, topk-prune
"""

from __future__ import annotations

import importlib

from sparsecodec.errors import ConfigError

from .base import Algorithm

__all__ = ["get_algorithm", "register_algorithm", "available_algorithms", "Algorithm"]

# name -> "module:Class" inside this package, imported lazily
_BUILTIN = {
    "fedavg": "fedavg:FedAvg",
    "ec": "ec:EC",
    "ef21": "ef21:EF21",
    "fedpm": "fedpm:FedPM",
    "flare": "flare:FLARE",
    "proxskip": "proxskip:ProxSkip",
    "sparse-proxskip": "proxskip:SparseProxSkip",
    "sparse-proxskip-server": "proxskip:SparseProxSkipServer",
    "fedavg-topk": "fedavg_topk:FedAvgTopK",
    "sparsyfed": "sparsyfed:SparsyFed",
    "topk-prune": "sparsyfed:TopKPrune",
}
_REGISTERED: dict[str, type[Algorithm]] = {}


def register_algorithm(cls: type[Algorithm]) -> type[Algorithm]:
    """Class decorator adding an Algorithm subclass under ``cls.name``."""
    if not (isinstance(cls, type) and issubclass(cls, Algorithm)) or not cls.name:
        raise ConfigError("register_algorithm needs an Algorithm subclass with a name")
    _REGISTERED[cls.name] = cls
    return cls


def available_algorithms() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTERED))


def get_algorithm(name: str) -> Algorithm:
    """A fresh instance of algorithm ``name``."""
    if name in _REGISTERED:
        return _REGISTERED[name]()
    if name not in _BUILTIN:
        raise ConfigError(f"unknown algorithm {name!r}; valid algorithms: "
                          + ", ".join(available_algorithms()))
    module, cls = _BUILTIN[name].split(":")
    return getattr(importlib.import_module(f".{module}", __name__), cls)()
