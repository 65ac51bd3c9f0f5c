"""Read (and, for tests, write) TFRecord files of `tf.train.Example`s without TensorFlow.

BAIR robot pushing ships as `softmotion30_44k/{train,test}/traj_*.tfrecords`. Installing TensorFlow to read
64x64 frames is out of proportion, so this module implements the two small formats involved:

- TFRecord framing: each record is `uint64 length | uint32 masked_crc32c(length) | data | uint32
  masked_crc32c(data)`, little endian. CRC-32C (Castagnoli) is computed by a table-driven pure-Python
  implementation; the data CRC is verified on read (a mismatch is a `DataError`).
- Protobuf wire format, only as far as `tf.train.Example` needs it:
  `Example{1: Features}`, `Features{1: map<string, Feature>}` (each map entry is `{1: key, 2: Feature}`),
  `Feature{1: BytesList, 2: FloatList, 3: Int64List}`, `BytesList{1: repeated bytes}`,
  `FloatList{1: repeated float}` (packed or not), `Int64List{1: repeated int64}` (packed or not).

`parse_example` returns `{key: list}` where the list holds bytes, floats or ints. `encode_example` and
`write_tfrecord` produce files TensorFlow itself can read; the tests use them to build fake BAIR data.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from dvdm.errors import DataError

# ---------------------------------------------------------------------------------------------- CRC-32C

_CRC32C_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _CRC32C_POLY if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _make_table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """CRC-32C of `data` (continuing from `crc`, the value returned for the preceding bytes)."""
    table = _CRC_TABLE
    crc ^= 0xFFFFFFFF
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits and add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------- framing


def iter_records(path: str | Path, *, verify: bool = True) -> Iterator[bytes]:
    """Yield the raw records of a TFRecord file; `verify` checks both CRCs of every record."""
    path = Path(path)
    try:
        f = path.open("rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot open TFRecord file ({exc.strerror or exc})") from exc
    with f:
        index = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise DataError(f"{path}: record {index} is truncated (incomplete header)")
            length_bytes = header[:8]
            (length,) = struct.unpack("<Q", length_bytes)
            (length_crc,) = struct.unpack("<I", header[8:])
            if verify and masked_crc32c(length_bytes) != length_crc:
                raise DataError(f"{path}: record {index} has a corrupt length (CRC mismatch); not a TFRecord file?")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise DataError(f"{path}: record {index} is truncated ({len(data)} of {length} bytes)")
            if verify and masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise DataError(f"{path}: record {index} data CRC mismatch (file corrupt)")
            yield data
            index += 1


def write_records(path: str | Path, records: Iterable[bytes]) -> None:
    """Write raw records as a TFRecord file (with correct CRCs)."""
    with Path(path).open("wb") as f:
        for data in records:
            length_bytes = struct.pack("<Q", len(data))
            f.write(length_bytes)
            f.write(struct.pack("<I", masked_crc32c(length_bytes)))
            f.write(data)
            f.write(struct.pack("<I", masked_crc32c(data)))


# ---------------------------------------------------------------------------------------------- protobuf


class _WireError(ValueError):
    pass


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise _WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _WireError("varint too long")


def _iter_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) of one message; value is an int or the raw bytes."""
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise _WireError("field number 0")
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield field, wire, value
        elif wire == 1:
            if pos + 8 > n:
                raise _WireError("truncated 64-bit field")
            yield field, wire, buf[pos:pos + 8]
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            if pos + length > n:
                raise _WireError("truncated length-delimited field")
            yield field, wire, buf[pos:pos + length]
            pos += length
        elif wire == 5:
            if pos + 4 > n:
                raise _WireError("truncated 32-bit field")
            yield field, wire, buf[pos:pos + 4]
            pos += 4
        else:
            raise _WireError(f"unsupported wire type {wire}")


def _to_int64(value: int) -> int:
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value >> 63 else value


def _parse_feature(buf: bytes) -> list:
    values: list = []
    for field, _wire, payload in _iter_fields(buf):
        if field not in (1, 2, 3) or not isinstance(payload, bytes):
            continue  # unknown field: ignore, as protobuf does
        for sub_field, sub_wire, item in _iter_fields(payload):
            if sub_field != 1:
                continue
            if field == 1:  # BytesList
                if sub_wire != 2:
                    raise _WireError("bytes_list value is not length-delimited")
                values.append(bytes(item))
            elif field == 2:  # FloatList
                if sub_wire == 5:
                    values.append(struct.unpack("<f", item)[0])
                elif sub_wire == 2:
                    if len(item) % 4:
                        raise _WireError("packed float_list length is not a multiple of 4")
                    values.extend(struct.unpack(f"<{len(item) // 4}f", item))
                else:
                    raise _WireError(f"float_list value has wire type {sub_wire}")
            else:  # Int64List
                if sub_wire == 0:
                    values.append(_to_int64(item))
                elif sub_wire == 2:
                    pos = 0
                    while pos < len(item):
                        v, pos = _read_varint(item, pos)
                        values.append(_to_int64(v))
                else:
                    raise _WireError(f"int64_list value has wire type {sub_wire}")
    return values


def parse_example(buf: bytes) -> dict[str, list]:
    """Parse a serialized `tf.train.Example` into `{key: [values]}` (bytes, floats or ints).

    Raises `ValueError` on malformed input (callers add the file name).
    """
    features: dict[str, list] = {}
    for field, wire, payload in _iter_fields(buf):
        if field != 1 or wire != 2:
            continue
        for f_field, f_wire, entry in _iter_fields(payload):
            if f_field != 1 or f_wire != 2:
                continue
            key = None
            value: list = []
            for e_field, e_wire, e_payload in _iter_fields(entry):
                if e_field == 1 and e_wire == 2:
                    try:
                        key = bytes(e_payload).decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise _WireError("feature key is not UTF-8") from exc
                elif e_field == 2 and e_wire == 2:
                    value = _parse_feature(bytes(e_payload))
            if key is None:
                raise _WireError("feature map entry without a key")
            features[key] = value
    return features


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def encode_example(features: Mapping[str, bytes | Sequence[bytes] | Sequence[float] | Sequence[int]]) -> bytes:
    """Serialize `{key: value}` as a `tf.train.Example`.

    A `bytes` value or a sequence of bytes becomes a BytesList; a sequence of Python ints an Int64List
    (packed); a sequence containing floats a FloatList (packed).
    """
    entries = b""
    for key, value in features.items():
        if isinstance(value, (bytes, bytearray)):
            value = [bytes(value)]
        value = list(value)
        if all(isinstance(v, (bytes, bytearray)) for v in value):
            inner = b"".join(_field(1, bytes(v)) for v in value)
            feature = _field(1, inner)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            feature = _field(3, _field(1, b"".join(_varint(v) for v in value)))
        elif all(isinstance(v, (int, float)) for v in value):
            feature = _field(2, _field(1, struct.pack(f"<{len(value)}f", *value)))
        else:
            raise TypeError(f"feature {key!r}: values must be all bytes, all ints or all floats")
        entries += _field(1, _field(1, key.encode("utf-8")) + _field(2, feature))
    return _field(1, entries)


# ---------------------------------------------------------------------------------------------- files


def read_examples(path: str | Path, *, verify: bool = True) -> Iterator[dict[str, list]]:
    """Yield the parsed `tf.train.Example`s of a TFRecord file; errors are `DataError`s naming the file."""
    for index, record in enumerate(iter_records(path, verify=verify)):
        try:
            yield parse_example(record)
        except ValueError as exc:
            raise DataError(f"{path}: record {index} is not a valid tf.train.Example ({exc})") from exc


def write_tfrecord(path: str | Path, examples: Iterable[Mapping]) -> None:
    """Write `tf.train.Example`s (given as feature dicts, see `encode_example`) to a TFRecord file."""
    write_records(path, (encode_example(ex) for ex in examples))
