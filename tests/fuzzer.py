"""The readers' fuzzer: mutated shards, indexes, masks and manifests must read or raise a named error.

Every input a reader is given must either read correctly or raise a
:class:`streamprune.errors.StreamPruneError` subclass: any other exception (``IndexError``,
``KeyError``, ``ValueError``, ``struct.error``, ``UnicodeDecodeError``, JSON or NumPy errors,
...), a result that breaks the reader's own invariants, or a hang is a bug.

Targets (each starts from small real files written by ``tarfile`` and ``write_shards``):
  tar       ``iter_tar_members`` / ``walk_headers`` / ``index_tar`` on mutated tars (bit flips,
            truncation, inserted / deleted / duplicated blocks, corrupt size, checksum, typeflag,
            name, magic fields, PAX and GNU long-name payloads; checksums usually re-fixed so the
            mutation gets past the checksum test);
  index     ``indexfile.load_index`` on mutated index files: whatever files ``save_index``
            wrote (the JSON sidecar, its companion), mutated as JSON, as raw bytes or, for
            ``.npz`` files, array by array;
  mask      ``masks.MaskFile`` (magic, header length, header JSON, bitsets) then ``.check``,
            ``.shard(k)``, ``.to_bool()`` against the manifest;
  manifest  ``Manifest.load`` on mutated ``manifest.json`` (types swapped, fields missing,
            negative and huge numbers), then its properties and ``labels()``;
  e2e       ``PrunedWebDataset(manifest, mask)`` iterated after one shard's bytes were mutated
            (its index and manifest unchanged): the samples must equal the bytes at the index's
            ranges, or a named error is raised;
  atheris   (when ``atheris`` is installed) a coverage-guided run of the ``tar`` target in a
            subprocess, seeded with the same tars.

Each input runs under a watchdog (``hang`` seconds, default 5); inputs slower than 1 s are
reported. Outcomes: ``ok`` (read, invariants hold), ``named`` (a StreamPruneError), ``other``
(any other exception: a bug), ``wrong`` (read without error but the result breaks an
invariant: a bug), ``hang`` (watchdog fired: a bug), and for the index companion ``stale``
(only the binary companion was damaged and the index loaded differs from the JSON's: a bug,
since the companion's digest covers its meta and columns and a damaged one must be refused
with a named error). Each bug is recorded with its input seed, the
mutations applied and a hex prefix of the input.

It lives beside the tests: ``tests/benchmarks/test_fuzz.py`` drives the same mutators and checks through
hypothesis (which shrinks a failing input); a timed campaign runs on its own, from the
repository root::

    python -m tests.fuzzer --seconds 60 [--targets tar,e2e] [--seed 0] [--json report.json]

and ``python -m benchmarks fuzz`` runs :func:`campaign` as a benchmark suite (results in
``benchmarks/results/fuzz_bench.json``). It imports streamprune only.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
import types
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from streamprune.errors import StreamPruneError
from streamprune.indexfile import load_index, save_index
from streamprune.manifest import Manifest
from streamprune.masks import MaskFile, random_mask
from streamprune.shardindex import ShardIndex
from streamprune.tarindex import BLOCK, index_tar, iter_tar_members, walk_headers
from streamprune.writers import write_shards

__all__ = [
    "OUTCOMES",
    "Corpus",
    "FuzzInput",
    "FuzzTimeout",
    "Outcome",
    "RandomDraw",
    "WrongResult",
    "build_corpus",
    "campaign",
    "make_targets",
    "run_one",
]

#: The repository root: the atheris child process imports this module from there.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Outcome kinds, in table order; ``stale``, ``other``, ``wrong`` and ``hang`` are bugs.
OUTCOMES = ("ok", "named", "stale", "other", "wrong", "hang")
BUGS = ("stale", "other", "wrong", "hang")
SLOW_SECONDS = 1.0
HEX_PREFIX = 96


# --------------------------------------------------------------------------------------------
# drawing choices: from a seeded Random (a campaign) or from hypothesis (tests/benchmarks/test_fuzz.py)


class RandomDraw:
    """Choices drawn from a seeded :class:`random.Random`; tests draw through hypothesis instead.

    Any object with these three methods drives the mutators.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        """An integer in ``[lo, hi]``."""
        return self.rng.randint(lo, hi)

    def bytes(self, n: int) -> bytes:
        """``n`` random bytes."""
        return self.rng.randbytes(n)

    def choice(self, seq: Sequence[Any]) -> Any:
        """One element of ``seq``."""
        return seq[self.int(0, len(seq) - 1)]


def _chance(draw, percent: int) -> bool:
    return draw.int(0, 99) < percent


# --------------------------------------------------------------------------------------------
# byte-level mutations (any file)

INTERESTING_BYTES = (0x00, 0xFF, 0x80, 0x7F, 0x20, 0x30, 0x37, 0x38, 0x2D, 0x2E, 0x2F, 0x0A, 0x22, 0x5B, 0x7B)


def _pos(draw, data: bytes, aligned: bool = False) -> int:
    if aligned and len(data) >= BLOCK:
        return draw.int(0, len(data) // BLOCK) * BLOCK
    return draw.int(0, len(data))


def mutate_bytes(data: bytes, draw, ops: list[str], block_ops: bool = True) -> bytes:
    """Apply one random byte-level mutation (flip, set, overwrite, truncate, insert, delete, ...)."""
    kinds = ["flip", "set", "overwrite", "truncate", "insert", "delete", "duplicate", "append"]
    kind = draw.choice(kinds)
    buf = bytearray(data)
    if kind in ("flip", "set", "overwrite") and not buf:
        kind = "append"
    if kind == "flip":
        p, bit = draw.int(0, len(buf) - 1), draw.int(0, 7)
        buf[p] ^= 1 << bit
        ops.append(f"flip bit {bit} of byte {p}")
    elif kind == "set":
        p = draw.int(0, len(buf) - 1)
        v = draw.choice(INTERESTING_BYTES) if _chance(draw, 70) else draw.int(0, 255)
        buf[p] = v
        ops.append(f"byte {p} = {v:#x}")
    elif kind == "overwrite":
        p = draw.int(0, len(buf) - 1)
        junk = draw.bytes(draw.int(1, 24))
        buf[p : p + len(junk)] = junk
        ops.append(f"overwrite {len(junk)} bytes at {p}")
    elif kind == "truncate":
        p = _pos(draw, data, aligned=block_ops and _chance(draw, 50))
        del buf[p:]
        ops.append(f"truncate at {p}")
    elif kind == "insert":
        p = _pos(draw, data, aligned=block_ops and _chance(draw, 60))
        what = draw.int(0, 2)
        if what == 0:
            junk = bytes(BLOCK)
        elif what == 1 and len(data) >= BLOCK:
            q = draw.int(0, len(data) // BLOCK - 1) * BLOCK
            junk = data[q : q + BLOCK]
        else:
            junk = draw.bytes(draw.int(1, 600))
        buf[p:p] = junk
        ops.append(f"insert {len(junk)} bytes at {p}")
    elif kind == "delete":
        p = _pos(draw, data, aligned=block_ops and _chance(draw, 60))
        n = BLOCK if _chance(draw, 50) else draw.int(1, 600)
        del buf[p : p + n]
        ops.append(f"delete {n} bytes at {p}")
    elif kind == "duplicate":
        p = _pos(draw, data, aligned=block_ops and _chance(draw, 60))
        n = BLOCK * draw.int(1, 3) if _chance(draw, 50) else draw.int(1, 600)
        buf[p:p] = data[p : p + n]
        ops.append(f"duplicate {n} bytes at {p}")
    else:
        junk = bytes(BLOCK) if _chance(draw, 40) else draw.bytes(draw.int(1, 1200))
        buf += junk
        ops.append(f"append {len(junk)} bytes")
    return bytes(buf)


# --------------------------------------------------------------------------------------------
# tar-aware mutations

#: (name, offset, width) of the ustar header fields.
FIELDS = (
    ("name", 0, 100), ("mode", 100, 8), ("uid", 108, 8), ("gid", 116, 8), ("size", 124, 12), ("mtime", 136, 12),
    ("chksum", 148, 8), ("typeflag", 156, 1), ("linkname", 157, 100), ("magic", 257, 6), ("version", 263, 2),
    ("prefix", 345, 155),
)
NUMERIC = ("mode", "uid", "gid", "size", "mtime", "chksum")
TYPEFLAGS = b"0\x001234567xgLKVSDMA"
NAMES = (
    b"a.txt", b"k.cls", b"__meta__.json", b"__key__", b"dir/", b"noext", b".hidden", b"a/b.c.d", b"x.", b"/abs.txt",
    b"\xff\xfe.txt", b"k\xc3(.bin", b"s00000.bin", b"s00000.txt", b"a" * 100, b"\0.txt", b"k..cls", b"A.CLS",
)


def header_offsets(data: bytes, limit: int = 4096) -> list[int]:
    """Offsets of the header blocks of a (possibly damaged) tar, found leniently; ``[0]`` at least."""
    out: list[int] = []
    pos = 0
    while pos + BLOCK <= len(data) and len(out) < limit:
        head = data[pos : pos + BLOCK]
        if head == bytes(BLOCK):
            break
        out.append(pos)
        text = head[124:136].split(b"\0", 1)[0].strip()
        try:
            size = int(text, 8) if text else 0
        except ValueError:
            break
        if size < 0:
            break
        pos += BLOCK + (size + BLOCK - 1) // BLOCK * BLOCK
    return out or [0]


def fix_checksum(buf: bytearray, h: int) -> None:
    """Write a valid checksum into the header at ``h`` (if a whole block is there)."""
    if h + BLOCK > len(buf):
        return
    buf[h + 148 : h + 156] = b" " * 8
    buf[h + 148 : h + 156] = b"%06o\0 " % sum(buf[h : h + BLOCK])


def _numeric_value(draw, data_len: int) -> bytes:
    kind = draw.int(0, 9)
    if kind == 0:
        return b"%011o\0" % draw.int(0, 8**11 - 1)
    if kind == 1:
        return b"%011o\0" % draw.choice((0, 1, 511, 512, 513, data_len, data_len + 1, 2**33 - 1))
    if kind == 2:
        return draw.choice((b"-1", b"-777", b"-0", b"+17", b"1_0", b" 1 2 ", b"8", b"9", b"0x10", b"\xff\xff"))
    if kind == 3:
        return b"\x80" + draw.int(0, 2**80).to_bytes(11, "big")  # base-256, positive
    if kind == 4:
        return b"\xff" + (2**88 - draw.int(1, 2**20)).to_bytes(11, "big")  # base-256, negative
    if kind == 5:
        return b"\x80" + draw.int(0, 2**16).to_bytes(11, "big")
    if kind == 6:
        return b"7" * 12  # no terminator
    if kind == 7:
        return b" " * 12
    if kind == 8:
        return b"%o" % draw.int(0, 4096)
    return draw.bytes(draw.int(1, 12))


def _field_value(draw, name: str, width: int, data_len: int) -> bytes:
    if name in NUMERIC:
        value = _numeric_value(draw, data_len)
    elif name == "typeflag":
        value = bytes([draw.choice(TYPEFLAGS) if _chance(draw, 85) else draw.int(0, 255)])
    elif name in ("magic", "version"):
        value = draw.choice((b"ustar\0", b"ustar ", b"00", b"  \0", b"\0\0\0\0\0\0")) if _chance(draw, 80) else draw.bytes(width)
    elif _chance(draw, 70):
        value = draw.choice(NAMES)
    else:
        value = draw.bytes(draw.int(0, width))
    value = value[:width]
    return value + bytes(width - len(value)) if _chance(draw, 80) else value


def mutate_tar_field(data: bytes, draw, ops: list[str]) -> bytes:
    """Set one header field of one member to an odd value, usually re-fixing the checksum."""
    offsets = header_offsets(data)
    h = draw.choice(offsets)
    name, off, width = draw.choice(FIELDS)
    value = _field_value(draw, name, width, len(data))
    buf = bytearray(data)
    if h + off >= len(buf):
        return mutate_bytes(data, draw, ops)
    buf[h + off : h + off + len(value)] = value
    fixed = name != "chksum" and _chance(draw, 85)
    if fixed:
        fix_checksum(buf, h)
    ops.append(f"header at {h}: {name} = {value[:24]!r}" + (" (checksum fixed)" if fixed else ""))
    return bytes(buf)


def _pax_record(draw, key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n += 1
    length = str(n).encode()
    if _chance(draw, 15):
        length = draw.choice((b"0", b"-5", b"abc", b"99999", str(n + draw.int(-20, 20)).encode(), b"", b"1" * 30))
    return length + body


def _pax_payload(draw) -> bytes:
    records = []
    for _ in range(draw.int(1, 4)):
        key = draw.choice((b"path", b"size", b"path", b"size", b"linkpath", b"mtime", b"uid", b"", b"comment", b"\xff"))
        if key == b"size":
            value = draw.choice((b"-1", b"0", b"abc", b"99999999999999999999", b"1e3", b" 12", b"512", b"-512", b"", b"1_000", b"\xd9\xa3"))
        elif key == b"path":
            value = draw.choice(NAMES) if _chance(draw, 70) else draw.bytes(draw.int(0, 40))
        else:
            value = draw.bytes(draw.int(0, 20))
        records.append(_pax_record(draw, key, value))
    payload = b"".join(records)
    if _chance(draw, 15):
        payload += draw.choice((b"12 ab", b" ", b"5", b"\0" * 8, draw.bytes(8)))
    return payload


def extended_header(typeflag: bytes, payload: bytes) -> bytes:
    head = bytearray(BLOCK)
    name = b"././@LongLink" if typeflag in (b"L", b"K") else b"PaxHeader/x"
    head[0 : len(name)] = name
    head[100:108] = b"0000644\0"
    head[108:116] = b"0000000\0"
    head[116:124] = b"0000000\0"
    head[124:136] = b"%011o\0" % len(payload)
    head[136:148] = b"%011o\0" % 0
    head[156:157] = typeflag
    head[257:265] = b"ustar\x0000"
    fix_checksum(head, 0)
    return bytes(head) + payload + bytes(-len(payload) % BLOCK)


def mutate_tar_extended(data: bytes, draw, ops: list[str]) -> bytes:
    """Insert (or replace) a PAX / GNU long-name header with a damaged payload before a member."""
    offsets = header_offsets(data)
    h = draw.choice(offsets)
    typeflag = draw.choice((b"x", b"x", b"g", b"L", b"K"))
    if typeflag in (b"x", b"g"):
        payload = _pax_payload(draw)
    else:
        name = draw.choice(NAMES) if _chance(draw, 60) else draw.bytes(draw.int(0, 300))
        payload = name + (b"\0" if _chance(draw, 70) else b"")
    block = extended_header(typeflag, payload)
    head = data[h : h + BLOCK]
    replace = len(head) == BLOCK and head[156:157] in (b"x", b"g", b"L", b"K") and _chance(draw, 70)
    if replace:
        text = head[124:136].split(b"\0", 1)[0].strip()
        try:
            old = BLOCK + (int(text, 8) + BLOCK - 1) // BLOCK * BLOCK if text else BLOCK
        except ValueError:
            old = BLOCK
        data = data[:h] + block + data[h + old :]
    else:
        data = data[:h] + block + data[h:]
    ops.append(f"{'replace' if replace else 'insert'} {typeflag.decode()} header at {h}: payload {payload[:40]!r}")
    return data


def mutate_tar(data: bytes, draw, ops: list[str], max_ops: int = 3, length_preserving: bool = False) -> bytes:
    """Apply 1..``max_ops`` tar-aware or byte-level mutations."""
    for _ in range(draw.int(1, max_ops)):
        kind = draw.int(0, 9)
        if kind < 4:
            data = mutate_tar_field(data, draw, ops)
        elif kind < 6 and not length_preserving:
            data = mutate_tar_extended(data, draw, ops)
        elif length_preserving and kind < 9 and data:  # an empty shard has no byte to overwrite
            buf = bytearray(data)
            if kind % 2 and len(buf) >= 2 * BLOCK:  # swap two blocks
                a, b = (draw.int(0, len(buf) // BLOCK - 1) * BLOCK for _ in range(2))
                buf[a : a + BLOCK], buf[b : b + BLOCK] = data[b : b + BLOCK], data[a : a + BLOCK]
                ops.append(f"swap blocks at {a} and {b}")
            else:
                p = draw.int(0, len(buf) - 1)
                junk = draw.bytes(draw.int(1, 16))[: len(buf) - p]
                buf[p : p + len(junk)] = junk
                ops.append(f"overwrite {len(junk)} bytes at {p}")
            data = bytes(buf)
        else:
            data = mutate_bytes(data, draw, ops)
    return data


# --------------------------------------------------------------------------------------------
# JSON-aware mutations

INTERESTING_VALUES: tuple[Any, ...] = (
    None, True, False, 0, -1, 1, 7, 2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 0.5, -0.0, 1e308,
    float("nan"), float("inf"), "", "x", "-1", "0", "\udcff", "ü", [], {}, [1], [[]], [None], {"a": 1}, ["x", 1, 2],
)
DEEP_MARK = "\u2603DEEP\u2603"


def _paths(obj: Any, prefix: tuple = (), out: list | None = None, limit: int = 4000) -> list[tuple]:
    out = [] if out is None else out
    if len(out) >= limit:
        return out
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        _paths(v, prefix + (k,), out, limit)
    return out


def _get(obj: Any, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def _interesting(draw) -> Any:
    """One of :data:`INTERESTING_VALUES`, a fresh copy: the same list or dict put in two places (or
    inside itself, by a later mutation) would make the document a graph with cycles."""
    return copy.deepcopy(draw.choice(INTERESTING_VALUES))


def _variant(draw, value: Any) -> Any:
    kind = draw.int(0, 7)
    if kind <= 2 or value is None:
        return _interesting(draw)
    if kind == 3 and isinstance(value, (int, float)) and not isinstance(value, bool):
        return draw.choice((-value, value + 1, value - 1, value * 2**40, float(value), str(value), [value]))
    if kind == 4 and isinstance(value, str):
        return draw.choice((value + "x", value[:-1], value.upper(), value * 3, len(value), [value], value + "\0"))
    if kind == 5 and isinstance(value, list):
        return draw.choice((value[:-1], value + value[-1:], value[::-1], value[1:], {"0": value}, len(value), value * 2))
    if kind == 6 and isinstance(value, dict):
        keys = list(value)
        return {k: value[k] for k in keys[: draw.int(0, len(keys))]} if keys else [value]
    if kind == 7 and _chance(draw, 20):
        return DEEP_MARK
    return _interesting(draw)


def mutate_json_obj(obj: Any, draw, ops: list[str]) -> Any:
    """Mutate one value of a parsed JSON document: delete it, retype it, or put an odd value there."""
    paths = _paths(obj)
    if not paths:
        ops.append("replace the whole document")
        return _variant(draw, obj)
    path = draw.choice(paths)
    parent = _get(obj, path[:-1])
    key = path[-1]
    action = draw.int(0, 9)
    if action == 0:
        del parent[key]
        ops.append(f"delete {list(path)}")
    elif action == 1 and isinstance(parent, dict):
        parent[draw.choice(("extra", "format", "version", "shards", "keys", "__proto__"))] = _interesting(draw)
        ops.append(f"add a key beside {list(path)}")
    else:
        new = _variant(draw, parent[key])
        parent[key] = new
        ops.append(f"{list(path)} = {'<deeply nested>' if new is DEEP_MARK else repr(new)[:40]}")
    return obj


def dump_json(obj: Any, draw) -> bytes:
    """Serialise a mutated document; a :data:`DEEP_MARK` becomes a 100k-deep nested list."""
    text = json.dumps(obj, ensure_ascii=_chance(draw, 50), separators=(",", ":"))
    if DEEP_MARK in text or "\\u2603DEEP\\u2603" in text:
        deep = "[" * 100_000 + "]" * 100_000
        text = text.replace(json.dumps(DEEP_MARK, ensure_ascii=False), deep).replace(json.dumps(DEEP_MARK), deep)
    return text.encode("utf-8", "surrogatepass")


def mutate_json(data: bytes, draw, ops: list[str], max_ops: int = 3) -> bytes:
    """Mutate a JSON file: structurally (parsed, changed, re-serialised) or as raw bytes."""
    if _chance(draw, 75):
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if obj is not None:
            for _ in range(draw.int(1, max_ops)):
                obj = mutate_json_obj(obj, draw, ops)
            try:
                return dump_json(obj, draw)
            except ValueError:  # a mutation put a document inside itself: no file can hold that, so mutate the bytes
                pass
    for _ in range(draw.int(1, max_ops)):
        data = mutate_bytes(data, draw, ops, block_ops=False)
    return data


def mutate_npz(data: bytes, draw, ops: list[str]) -> bytes | None:
    """Mutate one array of an ``.npz`` file and write it back (``None`` when ``data`` is no npz)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError):
        return None
    if not arrays:
        return None
    name = draw.choice(sorted(arrays))
    a = arrays[name]
    kind = draw.int(0, 7)
    if a.dtype.kind in "US":
        text = str(a)
        new = mutate_json(text.encode("utf-8", "surrogatepass"), draw, ops).decode("utf-8", "replace")
        arrays[name] = np.array(new)
        ops.append(f"npz {name}: text mutated")
    elif kind <= 2 and a.size:
        flat = a.reshape(-1).copy()
        i = draw.int(0, flat.size - 1)
        value = draw.choice((0, -1, 1, 2**31 - 1, 255, 2**62, -(2**62), int(flat[i]) + 1, int(flat[i]) ^ 0x80))
        try:
            flat[i] = value
        except OverflowError:
            flat[i] = 0
        arrays[name] = flat.reshape(a.shape)
        ops.append(f"npz {name}[{i}] = {value}")
    elif kind == 3:
        arrays[name] = a.astype(draw.choice((np.float64, np.int8, np.uint64, np.bool_, np.int32)))
        ops.append(f"npz {name} as {arrays[name].dtype}")
    elif kind == 4:
        arrays[name] = a.reshape(-1)[: max(a.size - draw.int(1, 3), 0)]
        ops.append(f"npz {name} shortened")
    elif kind == 5:
        flat = a.reshape(-1)
        arrays[name] = np.concatenate([flat, flat[:2]]) if flat.size else np.zeros(2, a.dtype)
        ops.append(f"npz {name} lengthened")
    elif kind == 6:
        arrays[name] = a.reshape(-1, 1) if a.ndim else a.reshape(1)
        ops.append(f"npz {name} reshaped")
    else:
        del arrays[name]
        ops.append(f"npz {name} removed")
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# the seed corpus: small real files


@dataclass
class Corpus:
    """Small real files the mutators start from, all under ``root``.

    Attributes:
        root: Work directory.
        tars: Seed tars by name (bytes).
        dataset: Directory of a dataset written by ``write_shards`` (manifest, shards, indexes).
        manifest: That dataset's manifest.
        mask_path: A ``.spmask`` made for it.
        index_files: ``{file name: bytes}`` of what ``save_index`` wrote for one shard (generic:
            whatever files appeared), with ``index_json`` naming the sidecar among them.
    """

    root: str
    tars: dict[str, bytes]
    dataset: str
    manifest: Manifest
    mask_path: str
    index_files: dict[str, bytes]
    index_json: str
    index_pristine: ShardIndex


def _samples(n: int, prefix: str, seed: int, long_keys: bool = True) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        key = f"{prefix}{i:05d}"
        if long_keys and i % 5 == 3:
            key = f"{prefix}{i:05d}_" + "k" * 110  # past 100 bytes: a PAX path record
        payload = rng.integers(0, 256, size=int(rng.integers(0, 1500)), dtype=np.uint8).tobytes()
        out.append((key, {"bin": payload, "txt": f"sample {i}".encode()}, i % 3))
    return out


def _tarfile_seed(fmt: int, entries: list[tuple[str, bytes | None]], global_pax: bool = False) -> bytes:
    out = io.BytesIO()
    pax = {"comment": "global ü"} if global_pax else None
    with tarfile.open(fileobj=out, mode="w", format=fmt, pax_headers=pax) as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def build_corpus(root: str, seed: int = 0) -> Corpus:
    """Write the seed files under ``root`` (created) and return them."""
    os.makedirs(root, exist_ok=True)
    dataset = os.path.join(root, "dataset")
    shutil.rmtree(dataset, ignore_errors=True)
    manifest = write_shards(_samples(18, "s", seed), dataset, samples_per_shard=6, shuffle=False, class_names=["a", "b", "c"],
                            progress=False)
    mask = random_mask(manifest, 0.4, seed=seed)
    mask_path = os.path.join(root, "keep.spmask")
    mask.save(mask_path)
    tars = {}
    with open(manifest.shard_path(0), "rb") as fh:
        tars["write_shards"] = fh.read()
    long_dir = "d" * 60 + "/" + "e" * 60
    entries: list[tuple[str, bytes | None]] = [
        ("dir", None), ("__meta__.json", b"{}"), ("a.cls", b"1"), ("a.seg.png", b"\x89PNG" + bytes(700)),
        (f"{long_dir}/b.cls", b"2"), (f"{long_dir}/b.txt", b"x" * 1000), ("c_" + "n" * 120 + ".cls", b"0"),
    ]
    tars["gnu"] = _tarfile_seed(tarfile.GNU_FORMAT, entries)
    tars["pax"] = _tarfile_seed(tarfile.PAX_FORMAT, entries + [("ü.cls", b"3")], global_pax=True)
    tars["ustar"] = _tarfile_seed(tarfile.USTAR_FORMAT, [e for e in entries if len(e[0]) < 100 or "/" in e[0]])
    # what save_index writes for one shard, whatever the files are
    index_dir = os.path.join(root, "index_seed")
    shutil.rmtree(index_dir, ignore_errors=True)
    os.makedirs(index_dir)
    index = manifest.index(0)
    json_name = "shard.tar.index.json"
    save_index(index, os.path.join(index_dir, json_name))
    files = {}
    for name in sorted(os.listdir(index_dir)):
        with open(os.path.join(index_dir, name), "rb") as fh:
            files[name] = fh.read()
    pristine = load_index(os.path.join(index_dir, json_name))
    return Corpus(root, tars, dataset, manifest, mask_path, files, json_name, pristine)


# --------------------------------------------------------------------------------------------
# running one input: watchdog, outcome


class FuzzTimeout(BaseException):
    """The watchdog fired (a BaseException, so no ``except Exception`` in the library swallows it)."""


class WrongResult(Exception):
    """An input read without error but the result breaks the reader's invariants."""


class StaleCompanion(Exception):
    """Only the index companion was damaged and the loaded index differs from the JSON's."""


@dataclass
class FuzzInput:
    """One mutated input: what was written where, and how it was made."""

    target: str
    seed_name: str
    ops: list[str]
    files: dict[str, bytes]  # path -> bytes written before the run
    payload: bytes  # the mutated file, for the hex prefix
    note: dict[str, Any] = field(default_factory=dict)


@dataclass
class Outcome:
    """How one input ended."""

    kind: str  # one of OUTCOMES
    exc_type: str = ""
    message: str = ""
    seconds: float = 0.0
    trace: str = ""
    where: str = ""

    def describe(self, inp: FuzzInput | None = None) -> str:
        """A readable account, for assertion messages."""
        lines = [f"{self.kind}: {self.exc_type}: {self.message}"]
        if inp is not None:
            lines += [f"target {inp.target}, seed file {inp.seed_name}", "mutations: " + "; ".join(inp.ops),
                      f"input prefix: {inp.payload[:HEX_PREFIX].hex()}"]
        if self.trace:
            lines.append(self.trace)
        return "\n".join(lines)


@contextlib.contextmanager
def watchdog(seconds: float):
    """Raise :class:`FuzzTimeout` in the main thread after ``seconds`` (no-op elsewhere)."""
    if seconds <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum, frame):
        raise FuzzTimeout(f"no result after {seconds} s")

    try:
        old = signal.signal(signal.SIGALRM, fire)
    except ValueError:  # not the main thread: no watchdog
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_one(check: Callable[[FuzzInput], None], inp: FuzzInput, hang_seconds: float = 5.0) -> Outcome:
    """Write the input's files, run ``check`` under the watchdog, and classify the result."""
    for path, data in inp.files.items():
        with open(path, "wb") as fh:
            fh.write(data)
    t0 = time.perf_counter()
    try:
        with watchdog(hang_seconds):
            check(inp)
    except FuzzTimeout as exc:
        return Outcome("hang", "FuzzTimeout", str(exc), time.perf_counter() - t0, traceback.format_exc(limit=-6), _where(exc))
    except StreamPruneError as exc:
        return Outcome("named", type(exc).__name__, str(exc)[:300], time.perf_counter() - t0)
    except WrongResult as exc:
        return Outcome("wrong", "WrongResult", str(exc)[:500], time.perf_counter() - t0, traceback.format_exc(limit=-4), _where(exc))
    except StaleCompanion as exc:
        return Outcome("stale", "StaleCompanion", str(exc)[:300], time.perf_counter() - t0, traceback.format_exc(limit=-4), _where(exc))
    except Exception as exc:  # noqa: BLE001 - any other exception is the bug being looked for
        return Outcome("other", type(exc).__name__, str(exc)[:300], time.perf_counter() - t0, traceback.format_exc(limit=-6),
                       _where(exc))
    return Outcome("ok", seconds=time.perf_counter() - t0)


def _where(exc: BaseException) -> str:
    """``file:line in function`` of the innermost frame that raised ``exc`` (library frames first)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"{os.sep}streamprune{os.sep}" in f.filename] or frames
    f = ours[-1]
    return f"{os.path.basename(os.path.dirname(f.filename))}/{os.path.basename(f.filename)}:{f.lineno} in {f.name}"


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise WrongResult(what)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


# --------------------------------------------------------------------------------------------
# targets: (make an input, check it)


class FuzzTarget:
    """A reader under test: ``make(draw) -> FuzzInput`` and ``check(input)`` (raises on failure)."""

    name = ""

    def __init__(self, corpus: Corpus, scratch: str) -> None:
        self.corpus = corpus
        self.scratch = scratch
        os.makedirs(scratch, exist_ok=True)

    def make(self, draw) -> FuzzInput:
        """Draw one mutated input."""
        raise NotImplementedError

    def check(self, inp: FuzzInput) -> None:
        """Read the input; raise a named error, or :class:`WrongResult` when the result is wrong."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Undo what inputs changed in shared files (the e2e target restores its shard)."""


class TarTarget(FuzzTarget):
    """``iter_tar_members``, ``walk_headers`` and ``index_tar`` on a mutated tar."""

    name = "tar"

    def make(self, draw) -> FuzzInput:
        seed_name = draw.choice(sorted(self.corpus.tars))
        ops: list[str] = []
        data = mutate_tar(self.corpus.tars[seed_name], draw, ops)
        path = os.path.join(self.scratch, "fuzz.tar")
        return FuzzInput(self.name, seed_name, ops, {path: data}, data, {"path": path})

    def check(self, inp: FuzzInput) -> None:
        check_tar_bytes(inp.note["path"], inp.payload)


def check_tar_bytes(path: str, data: bytes) -> None:
    """The tar target's reads and invariants on ``data`` (already written to ``path``)."""
    size = len(data)
    members = list(iter_tar_members(path))
    if size:
        again = list(walk_headers(data, size, path))  # any sliceable buffer walks the same
        _expect(again == members, "walk_headers over bytes differs from iter_tar_members over the file")
    end = 0
    for m in members:
        _expect(isinstance(m.name, str) and _is_int(m.size), f"member {m}: bad types")
        _expect(end <= m.header_offset < m.data_offset and m.data_offset % BLOCK == 0, f"member {m}: header range")
        _expect(0 <= m.size and m.data_offset + m.size <= size, f"member {m}: data outside the file ({size} bytes)")
        end = m.data_offset + m.size
    index = index_tar(path, label_ext="cls", require_labels=False)
    n = len(index.keys)
    _expect(len(set(index.keys)) == n, "duplicate keys in the index")
    _expect(len(index.labels) == len(index.start) == len(index.end) == len(index.members) == n, "misaligned index arrays")
    _expect(index.shard_bytes == size, "shard_bytes differs from the file size")
    prev = 0
    for i in range(n):
        lo, hi = int(index.start[i]), int(index.end[i])
        _expect(prev <= lo < hi <= size + BLOCK, f"sample {i}: range {lo}..{hi} (previous end {prev}, file {size})")
        prev = hi
        for ext, offset, nbytes in index.members[i]:
            _expect(isinstance(ext, str) and lo < offset and offset + nbytes <= min(hi, size), f"sample {i}: member {ext} outside its range")
    with contextlib.suppress(StreamPruneError):  # unlabelled samples are fine here; with labels every one must parse
        index_tar(path, label_ext="cls", require_labels=True)


class IndexTarget(FuzzTarget):
    """``load_index`` on mutated copies of whatever files ``save_index`` wrote."""

    name = "index"

    def make(self, draw) -> FuzzInput:
        files = dict(self.corpus.index_files)
        names = sorted(files)
        target = draw.choice(names)
        ops: list[str] = []
        data = files[target]
        if target == self.corpus.index_json or data[:1] in (b"{", b"["):
            new = mutate_json(data, draw, ops)
        else:
            new = mutate_npz(data, draw, ops) if _chance(draw, 60) else None
            if new is None:
                new = data
                for _ in range(draw.int(1, 3)):
                    new = mutate_bytes(new, draw, ops, block_ops=False)
        if _chance(draw, 5):
            ops.append(f"remove {target}")
            files.pop(target)
            new = b""
        else:
            files[target] = new
        paths = {os.path.join(self.scratch, k): v for k, v in files.items()}
        for name in set(names) - set(files):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self.scratch, name))
        only_companion = target != self.corpus.index_json
        note = {"path": os.path.join(self.scratch, self.corpus.index_json), "only_companion": only_companion,
                "expected_sha256": draw.choice((None, "json", "pristine"))}
        return FuzzInput(self.name, target, ops, paths, new, note)

    def check(self, inp: FuzzInput) -> None:
        path = inp.note["path"]
        expected = inp.note["expected_sha256"]
        digest = None
        if expected == "json" and os.path.exists(path):
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()
        elif expected == "pristine":
            digest = hashlib.sha256(self.corpus.index_files[self.corpus.index_json]).hexdigest()
        index = load_index(path, expected_sha256=digest)
        check_index(index)
        if inp.note["only_companion"]:
            if not same_index(index, self.corpus.index_pristine):
                raise StaleCompanion("the damaged companion was used: the loaded index differs from the JSON's")


def check_index(index: ShardIndex) -> None:
    """A loaded index is well typed: string keys, aligned 1-D int64 arrays, (str, int, int) members."""
    _expect(isinstance(index, ShardIndex), "not a ShardIndex")
    _expect(isinstance(index.shard, str) and _is_int(index.shard_bytes), "shard / shard_bytes types")
    n = len(index.keys)
    _expect(all(isinstance(k, str) for k in index.keys), "a key is not a string")
    for name in ("labels", "start", "end"):
        a = getattr(index, name)
        _expect(isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype == np.int64 and len(a) == n, f"{name} is not int64[{n}]")
    _expect(len(index.members) == n, "members misaligned")
    for i in range(n):
        group = index.members[i]
        for member in group:
            _expect(len(member) == 3, f"sample {i}: member {member!r} is not (ext, offset, size)")
            ext, offset, size = member
            _expect(isinstance(ext, str) and _is_int(offset) and _is_int(size), f"sample {i}: member {member!r} types")


def same_index(a: ShardIndex, b: ShardIndex) -> bool:
    """Two indexes describe the same samples (keys, labels, ranges, members, shard)."""
    return (
        a.shard == b.shard and a.shard_bytes == b.shard_bytes and list(a.keys) == list(b.keys)
        and np.array_equal(a.labels, b.labels) and np.array_equal(a.start, b.start) and np.array_equal(a.end, b.end)
        and [list(map(tuple, g)) for g in a.members] == [list(map(tuple, g)) for g in b.members]
    )


class MaskTarget(FuzzTarget):
    """``MaskFile`` on a mutated ``.spmask``, then ``check``/``shard``/``to_bool`` against the manifest."""

    name = "mask"

    def make(self, draw) -> FuzzInput:
        with open(self.corpus.mask_path, "rb") as fh:
            data = fh.read()
        ops: list[str] = []
        length = int.from_bytes(data[8:16], "little")
        header, bits = data[16 : 16 + length], data[16 + length :]
        kind = draw.int(0, 9)
        if kind <= 5:
            header = mutate_json(header, draw, ops)
            if _chance(draw, 20):
                bits = mutate_bytes(bits, draw, ops, block_ops=False)
            data = data[:8] + len(header).to_bytes(8, "little") + header + bits
        elif kind == 6:
            value = draw.choice((0, 1, length - 1, length + 1, length + 8, 2**63, 2**64 - 1, len(data), 2**32))
            data = data[:8] + value.to_bytes(8, "little") + data[16:]
            ops.append(f"header length = {value}")
        elif kind == 7:
            bits = mutate_bytes(bits, draw, ops, block_ops=False)
            data = data[: 16 + length] + bits
        else:
            for _ in range(draw.int(1, 3)):
                data = mutate_bytes(data, draw, ops, block_ops=False)
        path = os.path.join(self.scratch, "fuzz.spmask")
        return FuzzInput(self.name, "keep.spmask", ops, {path: data}, data, {"path": path})

    def check(self, inp: FuzzInput) -> None:
        check_mask(inp.note["path"], self.corpus.manifest)


def check_mask(path: str, manifest: Manifest) -> None:
    """Open a mask file, use every reader method, check the results are consistent."""
    mask = MaskFile(path)
    kept, n = mask.kept, mask.num_samples
    _expect(_is_int(kept) and _is_int(n) and 0 <= kept <= n, f"kept {kept!r} / num_samples {n!r}")
    _expect(isinstance(mask.provenance, dict), "provenance is not an object")
    _expect(isinstance(mask.manifest_fingerprint, str), "fingerprint is not a string")
    counts = mask.shard_kept_counts()
    _expect(counts.dtype == np.int64 and counts.ndim == 1, "shard kept counts")
    bits = mask.to_bool()
    _expect(bits.dtype == bool and len(bits) == n and int(bits.sum()) == kept, "to_bool disagrees with the header counts")
    mask.check(manifest)
    offsets = manifest.shard_offsets
    for k in range(len(manifest.shards)):
        shard = mask.shard(k)
        _expect(shard.dtype == bool and len(shard) == manifest.shards[k].samples, f"shard {k} has {len(shard)} bits")
        _expect(np.array_equal(shard, bits[offsets[k] : offsets[k + 1]]), f"shard {k} differs from to_bool")
    loaded = mask.load(manifest)
    _expect(loaded.kept == kept, "load() kept count")


class ManifestTarget(FuzzTarget):
    """``Manifest.load`` on a mutated ``manifest.json`` (shards and indexes untouched)."""

    name = "manifest"

    def make(self, draw) -> FuzzInput:
        with open(os.path.join(self.corpus.dataset, "manifest.json"), "rb") as fh:
            data = fh.read()
        ops: list[str] = []
        data = mutate_json(data, draw, ops)
        path = os.path.join(self.corpus.dataset, "fuzz-manifest.json")  # beside the shards it names
        return FuzzInput(self.name, "manifest.json", ops, {path: data}, data, {"path": path})

    def check(self, inp: FuzzInput) -> None:
        check_manifest(inp.note["path"])


def check_manifest(path: str) -> None:
    """Load a manifest and use its properties; they must be well typed."""
    m = Manifest.load(path)
    _expect(isinstance(m.shards, list) and all(isinstance(s.name, str) and isinstance(s.index, str) for s in m.shards), "shard names")
    n, total = m.num_samples, m.total_bytes
    _expect(_is_int(n) and n >= 0 and _is_int(total) and total >= 0, f"num_samples {n!r} / total_bytes {total!r}")
    _expect(isinstance(m.fingerprint, str), "fingerprint")
    offsets = m.shard_offsets
    _expect(len(offsets) == len(m.shards) + 1 and int(offsets[-1]) == n, "shard offsets")
    _expect(all(isinstance(c, str) for c in m.classes), "class names")
    _expect(m.label_ext is None or isinstance(m.label_ext, str), "label_ext")
    for k in range(len(m.shards)):
        _expect(isinstance(m.shard_path(k), str), "shard path")
    labels = m.labels()
    _expect(len(labels) == n, "labels() length")
    _expect(len(m.keys()) == n and len(m.sample_bytes()) == n, "keys() / sample_bytes() length")
    _expect(isinstance(m.num_classes, int), "num_classes")


class E2ETarget(FuzzTarget):
    """``PrunedWebDataset(manifest, mask)`` over a dataset with one shard's bytes mutated."""

    name = "e2e"

    def __init__(self, corpus: Corpus, scratch: str) -> None:
        super().__init__(corpus, scratch)
        self.manifest_path = os.path.join(corpus.dataset, "manifest.json")
        self.pristine = {}
        for k in range(len(corpus.manifest.shards)):
            with open(corpus.manifest.shard_path(k), "rb") as fh:
                self.pristine[k] = fh.read()
        self.kept = MaskFile(corpus.mask_path).to_bool()
        # torch and webdataset load in seconds: only this target needs them, loaded here, outside the watchdog
        from streamprune.readers import PrunedWebDataset

        self.reader = PrunedWebDataset

    def make(self, draw) -> FuzzInput:
        k = draw.int(0, len(self.pristine) - 1)
        ops: list[str] = []
        data = mutate_tar(self.pristine[k], draw, ops, length_preserving=_chance(draw, 85))
        files = {self.corpus.manifest.shard_path(j): (data if j == k else self.pristine[j]) for j in self.pristine}
        return FuzzInput(self.name, f"shard {k}", ops, files, data, {"shard": k})

    def check(self, inp: FuzzInput) -> None:
        manifest = self.corpus.manifest
        ds = self.reader(self.manifest_path, self.corpus.mask_path, check_headers=True)
        got = list(ds)
        offsets = manifest.shard_offsets
        expected = []
        for k in range(len(manifest.shards)):
            index = manifest.index(k)
            data = inp.files[manifest.shard_path(k)]
            for i in np.flatnonzero(self.kept[offsets[k] : offsets[k + 1]]):
                sample = {"__key__": index.keys[i]}
                for ext, offset, size in index.members[i]:
                    sample[ext] = data[offset : offset + size]
                expected.append(sample)
        _expect(len(got) == len(expected), f"{len(got)} samples read, {len(expected)} kept")
        for g, e in zip(got, expected):
            g = {k: v for k, v in g.items() if k != "__url__"}
            _expect(g == e, f"sample {e['__key__']!r} differs from the bytes at its index ranges")

    def cleanup(self) -> None:
        for k, data in self.pristine.items():
            with open(self.corpus.manifest.shard_path(k), "wb") as fh:
                fh.write(data)


TARGETS: dict[str, type[FuzzTarget]] = {t.name: t for t in (TarTarget, IndexTarget, MaskTarget, ManifestTarget, E2ETarget)}


def make_targets(corpus: Corpus, names: Sequence[str] | None = None) -> dict[str, FuzzTarget]:
    """The targets by name, each with a scratch directory under the corpus root."""
    names = list(TARGETS) if names is None else list(names)
    return {n: TARGETS[n](corpus, os.path.join(corpus.root, "scratch", n)) for n in names}


# --------------------------------------------------------------------------------------------
# a campaign


def atheris_available() -> bool:
    """Whether ``atheris`` can be imported (in a subprocess: it is a native extension)."""
    probe = subprocess.run([sys.executable, "-c", "import atheris"], capture_output=True)
    return probe.returncode == 0


def fuzz_target(target: FuzzTarget, seconds: float, max_inputs: int | None, seed: int, hang: float) -> dict[str, Any]:
    """Run one target for ``seconds`` (or ``max_inputs``); return its counts and bug reports."""
    counts = {k: 0 for k in OUTCOMES}
    errors: dict[str, int] = {}
    bugs: list[dict[str, Any]] = []
    slow: list[dict[str, Any]] = []
    seen_bugs: dict[tuple, int] = {}
    t0 = time.perf_counter()
    i = 0
    while time.perf_counter() - t0 < seconds and (max_inputs is None or i < max_inputs):
        draw = RandomDraw(random.Random(f"{seed}:{target.name}:{i}"))
        inp = target.make(draw)
        outcome = run_one(target.check, inp, hang)
        counts[outcome.kind] += 1
        if outcome.kind in ("named", "other"):
            errors[outcome.exc_type] = errors.get(outcome.exc_type, 0) + 1
        record = {"input": i, "seed": seed, "seed_file": inp.seed_name, "mutations": inp.ops, "outcome": outcome.kind,
                  "exception": outcome.exc_type, "message": outcome.message, "seconds": round(outcome.seconds, 3),
                  "hex_prefix": inp.payload[:HEX_PREFIX].hex(), "input_bytes": len(inp.payload)}
        if outcome.kind in BUGS:
            where = outcome.where
            sig = (outcome.kind, outcome.exc_type, where)
            seen_bugs[sig] = seen_bugs.get(sig, 0) + 1
            if seen_bugs[sig] == 1:
                bugs.append({**record, "where": where})
        if outcome.seconds > SLOW_SECONDS and len(slow) < 20:
            slow.append(record)
        i += 1
    target.cleanup()
    elapsed = time.perf_counter() - t0
    for bug in bugs:
        sig = (bug["outcome"], bug["exception"], bug["where"])
        bug["count"] = seen_bugs[sig]
    return {"target": target.name, "inputs": i, "seconds": elapsed, "inputs_per_s": i / elapsed if elapsed else 0.0,
            "counts": counts, "errors": dict(sorted(errors.items())), "bugs": bugs, "slow": slow}


def run_atheris(corpus: Corpus, seconds: float, work: str, hang: float) -> dict[str, Any]:
    """Coverage-guided fuzzing of the ``tar`` target with atheris, in a subprocess."""
    seeds = os.path.join(work, "atheris_corpus")
    os.makedirs(seeds, exist_ok=True)
    for name, data in corpus.tars.items():
        with open(os.path.join(seeds, name + ".tar"), "wb") as fh:
            fh.write(data)
    stats = os.path.join(work, "atheris_stats.json")
    child = f"from tests.fuzzer import atheris_child; atheris_child({stats!r}, {hang!r}, __import__('sys').argv[1:])"
    cmd = [sys.executable, "-c", child, seeds, f"-max_total_time={max(int(seconds), 1)}", "-timeout=0", "-rss_limit_mb=4096", "-max_len=65536",
           f"-artifact_prefix={work}/", "-print_final_stats=1"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=seconds + 120)
    elapsed = time.perf_counter() - t0
    out: dict[str, Any] = {"target": "atheris", "seconds": elapsed, "returncode": proc.returncode}
    try:
        with open(stats) as fh:
            out.update(json.load(fh))
    except (OSError, ValueError):
        out.update({"inputs": 0, "counts": {k: 0 for k in OUTCOMES}, "errors": {}, "bugs": [], "slow": []})
        out["stderr_tail"] = proc.stderr[-2000:]
    out["inputs_per_s"] = out.get("inputs", 0) / elapsed if elapsed else 0.0
    return out


def atheris_child(stats_path: str, hang: float, libfuzzer_argv: list[str]) -> None:
    """The atheris process: every input through :func:`check_tar_bytes`, counts written to ``stats_path``."""
    # atheris is optional and instruments code: only this subprocess imports it
    import atheris

    # instrument the walker's modules in place (instrument_all would take minutes over every loaded module)
    from streamprune import shardindex, tarindex

    for module in (tarindex, shardindex):
        for obj in vars(module).values():
            if isinstance(obj, types.FunctionType) and obj.__module__ == module.__name__:
                atheris.instrument_func(obj)
    tmp = tempfile.mkdtemp(prefix="fuzz-atheris-")
    path = os.path.join(tmp, "input.tar")
    state = {"inputs": 0, "counts": {k: 0 for k in OUTCOMES}, "errors": {}, "bugs": [], "slow": []}
    sigs: dict[tuple, dict] = {}

    def save() -> None:
        with open(stats_path + ".tmp", "w") as fh:
            json.dump(state, fh)
        os.replace(stats_path + ".tmp", stats_path)

    def one(data: bytes) -> None:
        inp = FuzzInput("atheris", "atheris", ["coverage-guided"], {path: data}, data, {"path": path})
        outcome = run_one(lambda i: check_tar_bytes(path, i.payload), inp, hang)
        state["inputs"] += 1
        state["counts"][outcome.kind] += 1
        if outcome.kind in ("named", "other"):
            state["errors"][outcome.exc_type] = state["errors"].get(outcome.exc_type, 0) + 1
        record = {"outcome": outcome.kind, "exception": outcome.exc_type, "message": outcome.message,
                  "seconds": round(outcome.seconds, 3), "hex_prefix": data[:HEX_PREFIX].hex(), "input_bytes": len(data),
                  "input_sha256": hashlib.sha256(data).hexdigest()}
        if outcome.kind in BUGS:
            where = outcome.where
            sig = (outcome.kind, outcome.exc_type, where)
            if sig not in sigs:
                sigs[sig] = {**record, "where": where, "count": 0, "hex": data[:4096].hex()}
                state["bugs"].append(sigs[sig])
            sigs[sig]["count"] += 1
        if outcome.seconds > SLOW_SECONDS and len(state["slow"]) < 20:
            state["slow"].append(record)
        save()  # every input: libFuzzer ends the process with exit(), past any finally or atexit

    atheris.Setup([sys.argv[0], *libfuzzer_argv], one)
    atheris.Fuzz()




def campaign(seconds: float, targets: Sequence[str] | None = None, seed: int = 0, hang: float = 5.0,
             max_inputs: int | None = None, atheris: bool = True, work: str | None = None,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Fuzz every target in turn for a share of ``seconds``; the counts, errors and bugs per target.

    Args:
        seconds: Time budget over all targets.
        targets: Subset of :data:`TARGETS` and ``"atheris"`` (default: all).
        seed: Base seed; input ``i`` of target ``T`` uses ``Random(f"{seed}:{T}:{i}")``.
        hang: Watchdog per input, seconds.
        max_inputs: Stop each target after this many inputs (default: time only).
        atheris: Run the atheris target when it is installed and wanted.
        work: Scratch directory (default: a temporary one, removed after).
        log: Where the per-target progress lines go.

    Returns:
        ``{"atheris": used | not installed | skipped, "targets_fuzzed": [row per target],
        "bugs": inputs that ended in a bug, "slow": inputs over SLOW_SECONDS}``.

    Raises:
        ValueError: An unknown target.
    """
    wanted = list(targets) if targets else [*TARGETS, "atheris"]
    unknown = [t for t in wanted if t not in TARGETS and t != "atheris"]
    if unknown:
        raise ValueError(f"unknown fuzz target(s) {', '.join(unknown)}; known: {', '.join(TARGETS)}, atheris")
    use_atheris = "atheris" in wanted and atheris and atheris_available()
    names = [t for t in wanted if t in TARGETS]
    share = seconds / max(len(names) + use_atheris, 1)
    scratch = work or tempfile.mkdtemp(prefix="fuzz-")
    rows = []
    try:
        corpus = build_corpus(scratch, seed=seed)
        for name, target in make_targets(corpus, names).items():
            row = fuzz_target(target, share, max_inputs, seed, hang)
            rows.append(row)
            log(f"  {name:9s} {row['inputs']:7d} inputs in {row['seconds']:6.1f} s: "
                + ", ".join(f"{k} {v}" for k, v in row["counts"].items() if v))
        if use_atheris:
            row = run_atheris(corpus, share, scratch, hang)
            rows.append(row)
            log(f"  atheris   {row.get('inputs', 0):7d} inputs in {row['seconds']:6.1f} s: "
                + ", ".join(f"{k} {v}" for k, v in row.get("counts", {}).items() if v))
    finally:
        if work is None:
            shutil.rmtree(scratch, ignore_errors=True)
    return {
        "atheris": "used" if use_atheris else ("not installed" if not atheris_available() else "skipped"),
        "targets_fuzzed": rows,
        "bugs": sum(row["counts"].get(k, 0) for row in rows for k in BUGS),
        "slow": sum(len(row.get("slow", [])) for row in rows),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.fuzzer``: a campaign; exit status 1 when an input ended in a bug."""
    p = argparse.ArgumentParser(prog="python -m tests.fuzzer", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="time budget over all targets (default 60)")
    p.add_argument("--inputs", type=int, default=None, help="stop each target after this many inputs (default: time only)")
    p.add_argument("--targets", default=None, help=f"comma-separated subset of {','.join(TARGETS)},atheris")
    p.add_argument("--seed", type=int, default=0, help="base seed")
    p.add_argument("--hang-seconds", type=float, default=5.0, help="watchdog per input (default 5)")
    p.add_argument("--no-atheris", action="store_true", help="skip the atheris run even when atheris is installed")
    p.add_argument("--json", default=None, help="also write the campaign's report to this file")
    args = p.parse_args(argv)
    try:
        report = campaign(args.seconds, args.targets.split(",") if args.targets else None, args.seed, args.hang_seconds,
                          args.inputs, not args.no_atheris)
    except ValueError as exc:
        p.error(str(exc))
    for row in report["targets_fuzzed"]:
        for bug in row.get("bugs", []):
            print(f"BUG {row['target']} {bug['outcome']} {bug['exception']} at {bug.get('where', '')}: {bug['message'][:120]} "
                  f"(seed {bug.get('seed')}, input {bug['hex_prefix'][:32]}...)")
    print(f"{report['bugs']} bug(s), {report['slow']} slow input(s); atheris {report['atheris']}")
    if args.json:
        tmp = f"{args.json}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
        os.replace(tmp, args.json)
    return 1 if report["bugs"] else 0


if __name__ == "__main__":
    sys.exit(main())
