"""``fl`` on Flower: the same algorithms, codecs and ledger on Flower's engines (extra ``[flower]``).

* :func:`run_flower` runs a config on Flower's simulation engine
  (``python -m fl run --engine flower ...``); :func:`make_server_app` /
  :func:`make_client_app` build the ServerApp / ClientApp (Flower's Message API) for any
  ``fl`` algorithm; :func:`write_flower_app` writes a Flower app for the deployment engine
  (SuperLink + SuperNodes, ``flwr run``).
* :func:`sparse_update_mod` (client Mod) and :class:`SparseUpdateStrategy` (a wrapper
  around any stock strategy: ``FedAvg``, ``FedAdam``, ...) put a sparsecodec codec (with
  error feedback) into anyone's own Flower app; :class:`DecodingGrid` /
  :func:`decode_update` / :func:`decode_replies` decode for hand-written server loops.
* :func:`encode_state` / :func:`decode_state`: client state as bytes for ``Context.state``.

Everything that needs ``flwr`` imports it on first use, so ``import fl.flower`` works without
the extra (only calling into Flower needs it).
"""

from __future__ import annotations

import importlib

__all__ = ["run_flower", "make_server_app", "make_client_app", "FlowerServer", "write_flower_app",
           "sparse_update_mod", "SparseUpdateStrategy", "decode_update", "decode_replies",
           "DecodingGrid", "encode_state", "decode_state"]

_LAZY = {"run_flower": "engine", "make_server_app": "engine", "make_client_app": "engine",
         "FlowerServer": "engine", "write_flower_app": "deploy", "sparse_update_mod": "mod",
         "decode_update": "mod", "decode_replies": "mod", "DecodingGrid": "mod",
         "SparseUpdateStrategy": "strategy", "encode_state": "state",
         "decode_state": "state"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
