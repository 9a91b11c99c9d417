"""Testing helpers for sparsecodec users: hypothesis strategies and a conformance suite.

* strategies: :func:`update_vectors`, :func:`update_tensors`, :func:`model_updates`,
  :func:`sparse_supports`, :func:`topk_configs`, :func:`dense_configs`, :func:`codec_configs`
  and, for masks, :func:`masks` / :func:`mask_probabilities`;
* :func:`check_codec`: run the conformance properties against any codec (needs the
  ``[testing]`` extra: ``pip install 'sparsecodec[testing]'``, which brings hypothesis).

Example:
    >>> import sparsecodec as sc
    >>> from sparsecodec.testing import check_codec
    >>> check_codec(sc.Dense(), max_examples=3)
"""

try:
    import hypothesis  # noqa: F401
except ImportError:   # the [testing] extra is optional (tests/test_packaging.py)
    raise ImportError("sparsecodec.testing needs hypothesis, which the [testing] extra installs: "
                      "pip install 'sparsecodec[testing]'") from None

from .conformance import check_codec, check_frame_properties, check_hostile_bytes, is_registered
from .strategies import (codec_configs, dense_configs, model_updates, sparse_supports,
                         topk_configs, update_tensors, update_vectors)

__all__ = ["check_codec", "check_frame_properties", "check_hostile_bytes", "is_registered",
           "codec_configs",
           "dense_configs", "model_updates", "sparse_supports", "topk_configs", "update_tensors",
           "update_vectors"]

from . import masks as _masks  # mask strategies live beside the mask codec's own properties
from .masks import *  # noqa: E402,F401,F403

__all__ += list(_masks.__all__)
