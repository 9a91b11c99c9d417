"""Write the MaskCodec golden frames ONCE: tests/golden/mask_<name>.bin + .npy (+ .p.npy).

``tests/test_mask.py::test_golden_mask_frame_decodes`` checks that the committed frames still
decode to the committed arrays; it never regenerates them. Run this script again only for a
deliberate format change (with a FORMAT_VERSION bump and a reader for the old version):

    .venv/bin/python tests/golden/make_mask_golden.py
"""

from pathlib import Path

import numpy as np

from sparsecodec.mask import MaskCodec

HERE = Path(__file__).resolve().parent


def cases():
    rng = np.random.default_rng(20240611)
    p_small = rng.beta(0.5, 0.5, 500)
    p_large = rng.beta(5.0, 5.0, 3000).astype(np.float32)
    yield "adaptive_bool", MaskCodec(), rng.random(1000) < 0.1, None
    yield "adaptive_uint8_2d", MaskCodec(), (rng.random((3, 5)) < 0.5).astype(np.uint8), None
    yield "adaptive_empty", MaskCodec(), np.zeros(0, bool), None
    yield "adaptive_all_ones", MaskCodec(), np.ones(77, bool), None
    yield "fixed_p005", MaskCodec(), rng.random(2000) < 0.05, 0.05
    yield "fixed_p0_contrary_crc", MaskCodec(checksum=True), rng.random(300) < 0.02, 0.0
    yield "per_entry_one_lane", MaskCodec(lanes=1), rng.random(500) < p_small, p_small
    yield "per_entry_two_lanes", MaskCodec(lanes=2), rng.random(3000) < p_large, p_large


def main() -> None:
    for name, codec, mask, p in cases():
        side = {} if p is None else {"p": p}
        frame = codec.encode(mask, **side)
        (HERE / f"mask_{name}.bin").write_bytes(bytes(frame))
        np.save(HERE / f"mask_{name}.npy", mask)
        if p is not None and np.ndim(p) > 0:
            np.save(HERE / f"mask_{name}.p.npy", p)
        print(f"mask_{name}: {len(bytes(frame))} bytes {dict(frame.sections)}")


if __name__ == "__main__":
    main()
