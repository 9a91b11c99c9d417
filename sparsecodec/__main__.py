"""``python -m sparsecodec inspect FILE [--schema SCHEMA.json] [--spec SPEC.json] [--json]``.

Reads one message from ``FILE`` and prints each tensor's codec, dtype, shape, k, coders, bits
per section, bits per parameter and the bound beside them (:mod:`sparsecodec.inspect`). A
frame or bundle is read from its bytes alone; a bundle encoded against a
:class:`~sparsecodec.Schema` and a model patch need that schema, a JSON list of ``[name,
dtype, shape]`` (``json.dumps(list(schema.entries))``); a compact message needs its
:class:`~sparsecodec.MessageSpec` (``spec.to_json()``).
Exit status: 0, 1 for bytes that are not a valid message, 2 for a usage error.

    >>> import os, tempfile, numpy as np, sparsecodec as sc
    >>> path = os.path.join(tempfile.mkdtemp(), "update.sc")
    >>> _ = open(path, "wb").write(sc.TopK(k=3).encode(np.arange(10, dtype=np.float32)))
    >>> main(["inspect", path])                         # doctest: +ELLIPSIS
    frame (wire id 0x01), 30 bytes = 240 bits, CRC-32 off, 1 tensor(s), 10 parameters, 24 bits/param
    tensor   codec  dtype    shape  numel  k  idx-coder  val-coder  header  index  values  bits  bits/param  bound  payload/bound
    ...
    (frame)  topk   float32  10        10  3  raw        fp32           96     48      96   240          24  102.9         1.3994
    ...
    0

(``python -m sparsecodec.demo`` is the codec report on a sample update, unchanged.)
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import ConfigError, FrameError
from .frame import DEFAULT_MAX_NUMEL


def _fmt_bits(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def format_table(rep) -> str:
    """The table ``python -m sparsecodec inspect`` prints (``report.table()``)."""
    from .inspect import BUNDLE_OVERHEAD

    secs = list(rep.sections)
    head = ["tensor", "codec", "dtype", "shape", "numel", "k", "idx-coder", "val-coder", *secs,
            "bits", "bits/param", "bound", "payload/bound"]
    rows = []
    for t in rep.tensors:
        ratio = (f"{t.payload_bits / t.bound_bits:.4f}" if t.bound_bits else "-")
        rows.append([t.name if t.name is not None else "(frame)", t.codec, t.dtype or "?",
                     "?" if t.shape is None else "x".join(map(str, t.shape)) or "()",
                     f"{t.numel:,}" if t.numel is not None else "?",
                     "-" if t.k is None else f"{t.k:,}", t.index_coder or t.model or "-",
                     t.value_coder or "-", *[f"{t.sections[s]:,}" if s in t.sections else "" for s in secs],
                     f"{t.bits:,}", f"{t.bpp:.4g}", _fmt_bits(t.bound_bits), ratio])
    if rep.overhead:
        rows.append([BUNDLE_OVERHEAD, "", "", "", "", "", "", "",
                     *[f"{rep.overhead[s]:,}" if s in rep.overhead else "" for s in secs],
                     f"{sum(rep.overhead.values()):,}", "", "", ""])
    if len(rep.tensors) > 1 or rep.overhead:
        rows.append(["total", "", "", "", f"{rep.numel:,}", "", "", "",
                     *[f"{rep.sections[s]:,}" for s in secs], f"{rep.nbits:,}", f"{rep.bpp:.4g}",
                     _fmt_bits(rep.bound_bits), ""])
    width = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    left = {0, 1, 2, 3, 6, 7}

    def line(r) -> str:
        return "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(r, width))).rstrip()

    out = [f"{rep.kind} (wire id 0x{rep.wire_id:02X}), {rep.nbytes:,} bytes = {rep.nbits:,} bits, "
           f"CRC-32 {'on' if rep.has_checksum else 'off'}, {len(rep.tensors)} tensor(s), "
           f"{rep.numel:,} parameters, {rep.bpp:.4g} bits/param",
           line(head), line(["-" * w for w in width])] + [line(r) for r in rows]
    for t in rep.tensors:
        if t.bound:
            out.append(f"bound of {t.name or 'the frame'}: {t.bound}")
        out += [f"note ({t.name or 'frame'}): {n}" for n in t.notes]
        if not t.verified:
            out.append(f"note ({t.name or 'frame'}): payload not decoded (verify=False, or "
                       "side information missing)")
    out += [f"note: {n}" for n in rep.notes]
    return "\n".join(out)


def _load_schema(path: str):
    from .bundle import Schema

    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        entries = raw["entries"] if isinstance(raw, dict) else raw
        return Schema(tuple((str(n), str(d), tuple(int(x) for x in s)) for n, d, s in entries))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise ConfigError(f"cannot read schema {path}: {exc} (expected a JSON list of "
                          "[name, dtype, shape])") from None


def _load_spec(path: str):
    from .packed import MessageSpec

    try:
        with open(path, encoding="utf-8") as f:
            return MessageSpec.from_json(f.read())
    except OSError as exc:
        raise ConfigError(f"cannot read spec {path}: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sparsecodec",
                                description="sparsecodec tools (python -m sparsecodec.demo: the demo)")
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="what a frame or bundle holds, bits per section, bounds")
    ins.add_argument("file", help="a file holding one frame or bundle ('-' reads stdin)")
    ins.add_argument("--schema", help="JSON [[name, dtype, shape], ...] for schema bundles and model patches")
    ins.add_argument("--spec", help="MessageSpec JSON (MessageSpec.to_json()) for compact messages")
    ins.add_argument("--json", action="store_true", help="print the report as JSON")
    ins.add_argument("--max-numel", type=int, default=DEFAULT_MAX_NUMEL,
                     help=f"refuse messages with more elements (default {DEFAULT_MAX_NUMEL})")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .inspect import inspect_message

    try:
        schema = _load_schema(args.schema) if args.schema else None
        spec = _load_spec(args.spec) if args.spec else None
        if args.file == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as f:
                data = f.read()
    except (OSError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        report = inspect_message(data, schema=schema, spec=spec, max_numel=args.max_numel)
    except FrameError as exc:
        print(f"error: {args.file} is not a valid sparsecodec message: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.to_json() if args.json else format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
