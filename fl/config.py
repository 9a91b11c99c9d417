"""Run configuration: layered, validated, JSON-safe.

Layers, later ones win: built-in defaults, a named *setting* (``demo``, ``flare-cnn``,
``defaults``), a TOML file, CLI flags (``--dataset``, ``--rounds``), then ``--set key=value``
(dotted keys, TOML values: ``--set algo.lr=0.1 --set sim.clients_per_round=5``). Every key is
checked; an unknown key raises :class:`~sparsecodec.errors.ConfigError` listing the valid ones.

A config file looks like::

    setting = "demo"              # start from this setting (optional)
    algorithm = "ec"
    dataset = "mnist-embedded"    # fl.data.DATASETS
    model = "small-cnn"           # fl.models.MODELS
    rounds = 20
    seed = 0
    [data]                        # dataset loader options (e.g. scale = "symmetric")
    [model_options]               # model constructor options, plus init = "<scheme>"
    [partition]                   # kind = iid | contiguous | dirichlet | classes | writers
    kind = "dirichlet"
    alpha = 0.1
    [sim]                         # clients, clients_per_round (0 = all), eval_every, ...
    clients = 10
    [algo]                        # fields of the algorithm's Config dataclass
    lr = 0.05
    [algo.ec]                     # applied only when that algorithm runs (for compare)
    density = 1e-3

The resolved config (:meth:`RunConfig.to_dict`) has a flat ``algo`` table holding every field
of the chosen algorithm's config, defaults included; it resolves to itself.

    >>> cfg = resolve_config(algorithm="ec", sets=["rounds=3", "algo.density=0.01"])
    >>> cfg.setting, cfg.model, cfg.rounds, cfg.algo.density, cfg.algo.lr
    ('demo', 'fedpm-mlp', 3, 0.01, 0.05)
    >>> resolve_config(algorithm="ec", sets=["sim.clinets=3"])
    Traceback (most recent call last):
    ...
    sparsecodec.errors.ConfigError: unknown key(s) ['clinets'] in [sim]; valid keys: clients, clients_per_round, eval_every, checkpoint_every, threads, eval_batch_size, wire, values_scope, downlink, downlink_history, strict, device
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from sparsecodec.errors import ConfigError

from .algorithms import available_algorithms, get_algorithm
from .algorithms.base import check_device_name

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["RunConfig", "SimConfig", "SETTINGS", "PARTITIONS", "DEFAULT_SETTING", "resolve_config",
           "build_config", "load_toml", "parse_sets", "merge"]

DEFAULT_SETTING = "demo"


@dataclass(frozen=True)
class SimConfig:
    """Engine options. ``clients_per_round = 0`` means every client every round;
    ``checkpoint_every = 0`` means a checkpoint only at the end. ``threads`` is passed to
    ``torch.set_num_threads`` (results are reproducible for a fixed thread count)."""

    clients: int = 10
    clients_per_round: int = 0
    eval_every: int = 1
    checkpoint_every: int = 10
    threads: int = 1
    eval_batch_size: int = 1000
    #: uplink wire format: "compact" (sparsecodec.packed: names, shapes and codec configs are
    #: what both ends know, k derived where the codec fixes it) or "bundle" (self-describing
    #: bundles, as every result committed before issue 15)
    wire: str = "compact"
    #: compact uplinks' value blocks (sparsecodec.MessageSpec(values_scope=...)): "tensor" (one
    #: block, so one q8 / q8b / sign scale, per tensor; every result before issue 18) or
    #: "message" (one block per value coder and dtype: one scale per message)
    values_scope: str = "tensor"
    #: downlink: "patch" (each client gets the smaller of a lossless patch from the version it
    #: holds and the dense model, fl.downlink) or "dense" (the broadcast to everyone)
    downlink: str = "patch"
    #: versions of the model whose changed positions the server keeps for patches
    downlink_history: int = 8
    #: for developers: re-raise an unforeseen exception while receiving a client's update
    #: (by default any failure drops that client with its reason, and the round goes on)
    strict: bool = False
    #: the torch device the model, the training data and local training live on: "cpu" or
    #: "cuda" / "cuda:N" (checked against the machine when the run starts,
    #: fl.algorithms.base.resolve_device). What is sent is copied to the CPU as numpy first.
    device: str = "cpu"

    def __post_init__(self) -> None:
        choices = {"wire": ("compact", "bundle"), "values_scope": ("tensor", "message"),
                   "downlink": ("patch", "dense")}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in choices:
                if v not in choices[f.name]:
                    raise ConfigError(f"sim.{f.name} must be one of {choices[f.name]}, got {v!r}")
                continue
            if f.name == "strict":
                if not isinstance(v, bool):
                    raise ConfigError(f"sim.strict must be true or false, got {v!r}")
                continue
            if f.name == "device":
                check_device_name(v)
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"sim.{f.name} must be an int, got {v!r}")
        if self.values_scope != "tensor" and self.wire != "compact":
            raise ConfigError(f"sim.values_scope={self.values_scope!r} needs sim.wire='compact' (a "
                              f"self-describing bundle codes each tensor's values on their own), got "
                              f"sim.wire={self.wire!r}")
        if self.downlink_history < 0:
            raise ConfigError("sim.downlink_history must be >= 0")
        if self.clients < 0 or self.clients_per_round < 0 or self.checkpoint_every < 0:
            raise ConfigError("sim.clients, sim.clients_per_round and sim.checkpoint_every must be >= 0")
        if self.eval_every < 1 or self.threads < 1 or self.eval_batch_size < 1:
            raise ConfigError("sim.eval_every, sim.threads and sim.eval_batch_size must be >= 1")


#: partition kind -> its options and their defaults (see fl.partition)
PARTITIONS: dict[str, dict[str, Any]] = {
    "iid": {},
    "contiguous": {"shard_size": 0},     # 0 = n_train // clients
    "dirichlet": {"alpha": 1.0},
    "classes": {"c": 2},
    "writers": {},                       # sim.clients = 0: every writer; k: the first k writers
}

_DEMO_TRAIN = {"lr": 0.05, "momentum": 0.9, "batch_size": 32, "epochs": 1}

#: Named starting points. ``demo``: what ``make demo`` runs (the 784-600-300-10 MLP on the
#: embedded MNIST subset, every client every round, about 2 minutes on 2 cores; EC, EF21 and
#: FLARE at density 1e-3). ``flare-cnn``: FLARE's MNIST CNN setting (T2 in
#: docs/reproductions.md: 10 contiguous 600-image shards, 7 of 10 clients per round,
#: the algorithms' paper defaults) on the embedded subset, whose first 6,000 training images
#: are the official ones FLARE uses (its test set is 2,000 of the 10,000 test images).
#: ``defaults``: nothing but the built-in defaults and the algorithms' paper defaults.
SETTINGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "demo": {
        # the FedPM paper's MLP: FedPM's frozen random weights need its width (on the 44k-param
        # small-cnn FedPM stays at chance in 10 rounds), and every other algorithm trains it too
        "dataset": "mnist-embedded", "model": "fedpm-mlp", "rounds": 10,
        "partition": {"kind": "iid"},
        # every client every round: Sparse-ProxSkip's control variates need full participation
        "sim": {"clients": 10, "clients_per_round": 0, "eval_every": 1, "checkpoint_every": 5},
        "algo": {"fedavg": dict(_DEMO_TRAIN),
                 "ec": {**_DEMO_TRAIN, "density": 1e-3},
                 "ef21": {**_DEMO_TRAIN, "density": 1e-3},
                 "flare": {**_DEMO_TRAIN, "R": 0.1},                 # R in percent: density 1e-3
                 "sparse-proxskip": {"batch_size": 32, "sparsity": 0.9},
                 "fedpm": {"lambda_reg": 1.0, "epochs": 1},           # the regularized FedPM
                 # its official lr 0.5 diverges here (as in benchmarks/configs/sparsyfed)
                 "sparsyfed": {"batch_size": 32, "lr": 0.1}},
    },
    "flare-cnn": {
        "dataset": "mnist-embedded", "model": "flare-cnn", "rounds": 300,
        "partition": {"kind": "contiguous", "shard_size": 600},
        "sim": {"clients": 10, "clients_per_round": 7, "eval_every": 10, "checkpoint_every": 10},
    },
}

_DEFAULTS: dict[str, Any] = {
    "algorithm": None, "dataset": "mnist-embedded", "model": "small-cnn", "rounds": 20, "seed": 0,
    "data": {}, "model_options": {}, "partition": {"kind": "iid"},
    "sim": dataclasses.asdict(SimConfig()), "algo": {},
}
_TOP_KEYS = ("setting",) + tuple(_DEFAULTS)
_TABLES = ("data", "model_options", "partition", "sim", "algo")


@dataclass(frozen=True)
class RunConfig:
    """A validated run configuration (what the engine consumes)."""

    algorithm: str
    dataset: str
    model: str
    rounds: int
    seed: int
    data: Mapping[str, Any]
    model_options: Mapping[str, Any]
    partition: Mapping[str, Any]
    sim: SimConfig
    algo: Any                       # the algorithm's Config dataclass instance
    setting: str = DEFAULT_SETTING

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe resolved configuration (feeding it to :func:`build_config` gives it back)."""
        return {"setting": self.setting, "algorithm": self.algorithm, "dataset": self.dataset,
                "model": self.model, "rounds": self.rounds, "seed": self.seed,
                "data": dict(self.data), "model_options": dict(self.model_options),
                "partition": dict(self.partition), "sim": dataclasses.asdict(self.sim),
                "algo": dataclasses.asdict(self.algo)}

    def replace(self, **changes: Any) -> "RunConfig":
        return dataclasses.replace(self, **changes)


# -- layering ----------------------------------------------------------------------------------
def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: tables merge key by key, anything else is replaced."""
    out = copy.deepcopy(dict(base))
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _layer(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """Merge one layer over the previous ones. Later layers win over earlier ones even across
    specificity: a common ``[algo]`` key set here also replaces that key in the earlier
    layers' ``[algo.<name>]`` subtables (``--set algo.lr=0.3`` beats a setting's ``algo.ec.lr``)."""
    base = copy.deepcopy(dict(base))
    algo_layer = layer.get("algo")
    if isinstance(algo_layer, Mapping) and isinstance(base.get("algo"), Mapping):
        names = set(available_algorithms())
        common = [k for k, v in algo_layer.items() if not (k in names and isinstance(v, Mapping))]
        for sub in base["algo"].values():
            if isinstance(sub, dict):
                for k in common:
                    sub.pop(k, None)
    return merge(base, layer)


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML config file (syntax errors name the file)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}``; values are TOML (else strings).

    >>> parse_sets(["algo.lr=0.1", "algorithm=ec", "sim.clients=5", "data.scale='unit'"])
    {'algo': {'lr': 0.1}, 'algorithm': 'ec', 'sim': {'clients': 5}, 'data': {'scale': 'unit'}}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"--set expects key=value with a dotted key, got {item!r}")
        try:
            value = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()     # bare words: --set algorithm=ec
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is both a value and a table")
        node[parts[-1]] = value
    return out


def resolve_config(*, setting: str | None = None, file: str | os.PathLike | None = None,
                   sets: Sequence[str] = (), **flags: Any) -> RunConfig:
    """Defaults <- setting <- ``file`` <- ``flags`` (top-level keys, None = not given) <- ``sets``.

    The setting is ``setting``, else the file's ``setting`` key, else :data:`DEFAULT_SETTING`.
    """
    from_file = load_toml(file) if file is not None else {}
    name = setting or from_file.get("setting") or DEFAULT_SETTING
    if name not in SETTINGS:
        raise ConfigError(f"unknown setting {name!r}; valid settings: {', '.join(sorted(SETTINGS))}")
    raw = _layer(_layer(_DEFAULTS, SETTINGS[name]), from_file)
    raw = _layer(raw, {k: v for k, v in flags.items() if v is not None})
    raw = _layer(raw, parse_sets(sets))
    raw["setting"] = name
    return build_config(raw)


# -- validation --------------------------------------------------------------------------------
def _unknown(keys, valid, where: str) -> None:
    unknown = sorted(set(keys) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}; valid keys: {', '.join(valid)}")


def _typed(value: Any, kind: type, where: str) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{where} must be a {kind.__name__}, got {value!r}")
    return value


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{key}] must be a table, got {value!r}")
    return dict(value)


def _algo_options(name: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """Common keys of [algo] merged with [algo.<name>]; every subtable is checked too."""
    names = set(available_algorithms())
    common = {k: v for k, v in table.items() if not (k in names and isinstance(v, Mapping))}
    for other in names & set(table):
        if isinstance(table[other], Mapping):
            fields = [f.name for f in dataclasses.fields(get_algorithm(other).Config)]
            _unknown(table[other], fields, f"[algo.{other}]")
    fields = [f.name for f in dataclasses.fields(get_algorithm(name).Config)]
    stray = sorted(set(common) - set(fields))
    if stray:
        raise ConfigError(f"unknown key(s) {stray} in [algo] for algorithm {name!r}; valid keys: "
                          f"{', '.join(fields)} (keys for one algorithm only go under [algo.<name>])")
    return {**common, **dict(table.get(name, {}))}


def build_config(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a (merged) config mapping into a :class:`RunConfig`."""
    from .data import DATASETS
    from .models import MODELS

    _unknown(raw, _TOP_KEYS, "the config (top level)")
    raw = merge(_DEFAULTS, raw)
    algorithm = raw["algorithm"]
    if algorithm is None:
        raise ConfigError("no algorithm given; valid algorithms: " + ", ".join(available_algorithms()))
    algo = get_algorithm(_typed(algorithm, str, "algorithm"))   # unknown name: lists the valid ones
    dataset, model = _typed(raw["dataset"], str, "dataset"), _typed(raw["model"], str, "model")
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(sorted(DATASETS))}")
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; valid models: {', '.join(sorted(MODELS))}")
    rounds, seed = _typed(raw["rounds"], int, "rounds"), _typed(raw["seed"], int, "seed")
    if rounds < 1 or seed < 0:
        raise ConfigError(f"rounds must be >= 1 and seed >= 0, got rounds={rounds}, seed={seed}")
    for key in _TABLES:
        _table(raw, key)

    data = _table(raw, "data")
    _unknown(data, list(DATASETS[dataset].option_defaults()), f"[data] for dataset {dataset!r}")
    model_options = _table(raw, "model_options")
    _unknown(model_options, list(MODELS[model].option_defaults()) + ["init"],
             f"[model_options] for model {model!r}")

    partition = _table(raw, "partition")
    kind = partition.get("kind", "iid")
    if kind not in PARTITIONS:
        raise ConfigError(f"unknown partition kind {kind!r}; valid kinds: {', '.join(PARTITIONS)}")
    _unknown(partition, ["kind", *PARTITIONS[kind]], f"[partition] of kind {kind!r}")
    partition = {"kind": kind, **{k: _typed(partition.get(k, d), type(d), f"partition.{k}")
                                  for k, d in PARTITIONS[kind].items()}}

    sim_table = _table(raw, "sim")
    _unknown(sim_table, [f.name for f in dataclasses.fields(SimConfig)], "[sim]")
    sim = SimConfig(**sim_table)
    if sim.clients == 0 and kind != "writers":
        raise ConfigError("sim.clients = 0 (all writers) is only meaningful with partition kind 'writers'")
    if sim.clients and sim.clients_per_round > sim.clients:
        raise ConfigError(f"sim.clients_per_round={sim.clients_per_round} > sim.clients={sim.clients}")

    algo_cfg = algo.make_config(**_algo_options(algo.name, _table(raw, "algo")))
    setting = raw.get("setting", DEFAULT_SETTING)
    return RunConfig(algo.name, dataset, model, rounds, seed, data, model_options, partition, sim,
                     algo_cfg, setting if isinstance(setting, str) else DEFAULT_SETTING)
