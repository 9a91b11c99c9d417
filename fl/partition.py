"""Partitions of a training set among clients: lists of index arrays.

Every function returns ``list[np.ndarray]`` with one int64 array per client, holding indices
into the training set, **sorted ascending** (the order within a client carries no meaning:
the engine shuffles each epoch). Randomised partitions take an explicit
``np.random.Generator``; the same generator state gives the same partition.

========================  ===========================================================  =========
function                  law                                                          paper
========================  ===========================================================  =========
iid                       random permutation cut into sizes differing by at most 1     FedPM
contiguous_shards         client i gets ``[s*i, s*(i+1))``                              FLARE
dirichlet_equal_size      equal sizes, class mix ~ Dir(alpha) (Flower's LDA)            SparsyFed
classes_per_client        FedPM's ``split_image_data`` (random sizes, round-robin)      FedPM
natural_writers           one client per writer id                                     FEMNIST
========================  ===========================================================  =========

    >>> rng = np.random.default_rng(0)
    >>> [len(p) for p in iid(10, 3, rng)]
    [4, 3, 3]
    >>> contiguous_shards(6000, 3, 600)[1][[0, -1]]
    array([ 600, 1199])
"""

from __future__ import annotations

import numpy as np

from sparsecodec.errors import ConfigError

__all__ = ["iid", "contiguous_shards", "dirichlet_equal_size", "classes_per_client",
           "natural_writers", "holdout_split", "class_histogram"]

# Flower's exclude_classes_and_normalize adds this to every non-exhausted class, so a class
# whose Dirichlet weight underflowed to 0 can still be drawn once the others run out.
LDA_EPS = 1e-5


def _check_counts(n_samples: int, n_clients: int) -> None:
    if int(n_clients) != n_clients or n_clients < 1:
        raise ConfigError(f"n_clients must be a positive int, got {n_clients!r}")
    if n_clients > n_samples:
        raise ConfigError(f"cannot split {n_samples} samples among {n_clients} clients")


def _as_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ConfigError("labels must be non-negative class ids")
    return labels.astype(np.int64, copy=False)


def _equal_sizes(n_samples: int, n_clients: int) -> np.ndarray:
    """Sizes differing by at most one, the larger ones first (sum = n_samples)."""
    sizes = np.full(n_clients, n_samples // n_clients, dtype=np.int64)
    sizes[: n_samples % n_clients] += 1
    return sizes


def iid(n_samples: int, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly random disjoint split covering all samples, sizes ``n//k`` or ``n//k + 1``.

    FedPM uses ``torch.utils.data.random_split`` into equal parts: the same law when
    ``n_clients`` divides ``n_samples`` (the torch draw itself differs).

    >>> parts = iid(100, 4, np.random.default_rng(1))
    >>> sorted(np.concatenate(parts).tolist()) == list(range(100))
    True
    """
    _check_counts(n_samples, n_clients)
    order = rng.permutation(n_samples)
    bounds = np.cumsum(_equal_sizes(n_samples, n_clients))[:-1]
    return [np.sort(part) for part in np.split(order, bounds)]


def contiguous_shards(n_samples: int, n_clients: int, shard_size: int | None = None) -> list[np.ndarray]:
    """Client ``i`` (0-based) gets ``[shard_size*i, shard_size*(i+1))``, in data order.

    FLARE: ``shard_size=600`` and 10 clients on MNIST in the official order, so only the
    first 6,000 training images are used. ``shard_size=None`` means ``n_samples // n_clients``.
    Samples past ``n_clients * shard_size`` belong to nobody.

    >>> [p[0] for p in contiguous_shards(60000, 10, 600)][:3]
    [np.int64(0), np.int64(600), np.int64(1200)]
    """
    _check_counts(n_samples, n_clients)
    if shard_size is None:
        shard_size = n_samples // n_clients
    if int(shard_size) != shard_size or shard_size < 1 or n_clients * shard_size > n_samples:
        raise ConfigError(f"{n_clients} shards of {shard_size} do not fit in {n_samples} samples")
    return [np.arange(shard_size * i, shard_size * (i + 1), dtype=np.int64) for i in range(n_clients)]


def _lda_class_counts(proportions: np.ndarray, remaining: np.ndarray, n_draw: int,
                      rng: np.random.Generator) -> np.ndarray:
    """How many samples of each class one client draws, sample by sample in law.

    Flower draws one class at a time from the client's Dirichlet proportions (+ LDA_EPS),
    removing a class and renormalising when its pool runs out. Here the draws come in
    blocks: a block of i.i.d. classes is accepted up to the draw that empties a pool (up to
    there it *is* the sequential process); the rest of the block is discarded and the
    remaining draws restart from the renormalised law. Same distribution, at most
    (number of classes + 1) blocks instead of one Python iteration per sample.
    """
    counts = np.zeros(len(remaining), dtype=np.int64)
    while n_draw > 0:
        capacity = remaining - counts
        open_ = capacity > 0
        if not open_.any():
            raise ConfigError("not enough samples left to fill the client")   # unreachable: sizes sum to n
        law = np.where(open_, proportions + LDA_EPS, 0.0)
        draws = rng.choice(len(law), size=n_draw, p=law / law.sum())
        stop = n_draw
        for cls in np.unique(draws):
            hits = np.flatnonzero(draws == cls)
            if len(hits) >= capacity[cls]:
                stop = min(stop, int(hits[capacity[cls] - 1]) + 1)
        counts += np.bincount(draws[:stop], minlength=len(law))
        n_draw -= stop
    return counts


def dirichlet_equal_size(labels, n_clients: int, alpha: float,
                         rng: np.random.Generator) -> list[np.ndarray]:
    """Equal-size clients whose class proportions follow Dirichlet(alpha * 1) (SparsyFed's LDA).

    Follows Flower's ``create_lda_partitions`` (``accept_imbalanced=True``): one Dirichlet
    vector per client over the classes present in ``labels`` (``rng.dirichlet``, size
    ``(n_clients, n_classes)``); clients are filled one after another, each sample's class
    drawn from its proportions; within a class, samples are taken uniformly at random
    without replacement; a class whose pool is exhausted is dropped and the proportions
    renormalised (so the last clients deviate from their Dirichlet draw). Sizes are
    ``n//k`` or ``n//k + 1``; the partition covers every sample exactly once.

    Deviations from Flower, none of which changes the law: the generator is explicit
    (Flower uses the global ``np.random``); classes are drawn in blocks (see
    ``_lda_class_counts``); ``LDA_EPS`` is added once to the original proportions at each
    renormalisation instead of accumulating on the previous renormalised vector (a 1e-5
    difference in the weight of classes with tiny proportions). ``alpha=inf`` (Flower's IID
    shortcut) is not supported: use ``iid`` or a large alpha such as 1000, as SparsyFed does.

    >>> labels = np.repeat(np.arange(10), 100)
    >>> parts = dirichlet_equal_size(labels, 10, 0.1, np.random.default_rng(0))
    >>> sorted({len(p) for p in parts}), len(np.unique(np.concatenate(parts)))
    ([100], 1000)
    """
    labels = _as_labels(labels)
    _check_counts(len(labels), n_clients)
    if not (np.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"alpha must be a positive finite float, got {alpha!r}")
    classes = np.unique(labels)
    proportions = rng.dirichlet(np.full(len(classes), float(alpha)), size=n_clients)
    pools = [rng.permutation(np.flatnonzero(labels == cls)) for cls in classes]
    remaining = np.array([len(pool) for pool in pools], dtype=np.int64)
    used = np.zeros(len(classes), dtype=np.int64)
    parts = []
    for client, size in enumerate(_equal_sizes(len(labels), n_clients)):
        counts = _lda_class_counts(proportions[client], remaining - used, int(size), rng)
        parts.append(np.sort(np.concatenate(
            [pool[u: u + k] for pool, u, k in zip(pools, used, counts)])))
        used += counts
    return parts


def classes_per_client(labels, n_clients: int, c: int, rng: np.random.Generator) -> list[np.ndarray]:
    """FedPM's pathological non-IID split (``split_image_data``), step for step.

    1. Sizes: ``d = rng.integers(10, 100, n_clients)`` (numpy's ``randint(10, 100)``: 10..99),
       ``n_i = floor(d_i / sum(d) * n)``, the last client gets the rounding remainder, so
       all ``n`` samples are assigned.
    2. Per class, the sample indices are shuffled (in class order 0, 1, ...).
    3. Client ``i`` starts at a random class ``rng.integers(n_labels)`` and takes
       ``min(max(1, n_i // c), left in class, budget)`` samples from successive classes,
       round-robin, until ``n_i`` are taken.

    So a client usually holds ``c`` classes in chunks of ``n_i // c`` **plus** the
    ``n_i mod c`` (< c) remaining samples from a (c+1)-th class, and a client that meets an
    exhausted class moves on to the next one: late clients can hold more classes. This is
    the official code's behaviour, kept on purpose; it is not "at most c classes".

    >>> labels = np.repeat(np.arange(10), 200)
    >>> parts = classes_per_client(labels, 20, 2, np.random.default_rng(0))
    >>> sum(len(p) for p in parts), len(np.unique(np.concatenate(parts)))
    (2000, 2000)
    """
    labels = _as_labels(labels)
    _check_counts(len(labels), n_clients)
    if int(c) != c or c < 1:
        raise ConfigError(f"c (classes per client) must be a positive int, got {c!r}")
    n_samples, n_labels = len(labels), int(labels.max()) + 1
    draws = rng.integers(10, 100, size=n_clients)
    sizes = np.floor(draws / draws.sum() * n_samples).astype(np.int64)
    sizes[-1] += n_samples - sizes.sum()
    chunk = np.maximum(1, sizes // c)
    pools = [np.flatnonzero(labels == cls) for cls in range(n_labels)]
    for pool in pools:
        rng.shuffle(pool)
    used = np.zeros(n_labels, dtype=np.int64)
    parts = []
    for client in range(n_clients):
        budget, cls = int(sizes[client]), int(rng.integers(n_labels))
        taken, idle = [np.empty(0, dtype=np.int64)], 0
        while budget > 0:
            take = min(int(chunk[client]), len(pools[cls]) - int(used[cls]), budget)
            idle = 0 if take else idle + 1
            if idle > n_labels:   # every pool empty: impossible because sizes sum to n
                raise ConfigError("classes_per_client ran out of samples")
            taken.append(pools[cls][used[cls]: used[cls] + take])
            used[cls] += take
            budget -= take
            cls = (cls + 1) % n_labels
        parts.append(np.sort(np.concatenate(taken)))
    return parts


def natural_writers(writer_ids) -> list[np.ndarray]:
    """One client per distinct writer id, in ascending id order (FEMNIST's natural split).

    Part ``j`` holds the samples of writer ``np.unique(writer_ids)[j]``.

    >>> natural_writers(np.array([3, 1, 3, 1, 2]))
    [array([1, 3]), array([4]), array([0, 2])]
    """
    writer_ids = np.asarray(writer_ids)
    if writer_ids.ndim != 1:
        raise ConfigError(f"writer_ids must be 1-D, got shape {writer_ids.shape}")
    order = np.argsort(writer_ids, kind="stable")
    _, starts = np.unique(writer_ids[order], return_index=True)
    return [part.astype(np.int64) for part in np.split(order, starts[1:])]


def holdout_split(indices, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's indices into (train, validation); ``floor(fraction * n)`` go to
    validation, chosen uniformly at random (SparsyFed holds out ``val_ratio=0.1``).

    >>> tr, va = holdout_split(np.arange(20), 0.1, np.random.default_rng(0))
    >>> len(tr), len(va), len(np.intersect1d(tr, va))
    (18, 2, 0)
    """
    indices = np.asarray(indices, dtype=np.int64)
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"fraction must be in [0, 1), got {fraction!r}")
    chosen = rng.permutation(len(indices))[: int(fraction * len(indices))]
    is_val = np.zeros(len(indices), dtype=bool)
    is_val[chosen] = True
    return np.sort(indices[~is_val]), np.sort(indices[is_val])


def class_histogram(labels, partition: list[np.ndarray], num_classes: int | None = None) -> np.ndarray:
    """``(n_clients, num_classes)`` int64 matrix: samples of each class held by each client.

    >>> class_histogram(np.array([0, 1, 1, 2]), [np.array([0, 1]), np.array([2, 3])])
    array([[1, 1, 0],
           [0, 1, 1]])
    """
    labels = _as_labels(labels)
    if num_classes is None:
        num_classes = int(labels.max()) + 1 if labels.size else 0
    return np.stack([np.bincount(labels[part], minlength=num_classes) for part in partition]
                    ) if partition else np.zeros((0, num_classes), dtype=np.int64)
