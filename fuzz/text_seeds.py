#!/usr/bin/env python3
"""Writes the seeds of the text-input fuzz targets from the tests' own inputs (fuzz/README.md):
COPY lines (snapshot_tests.rs), array/composite/hstore text (structured.rs), values as each type
(types_tests.rs, types_temporal_tests.rs), the config files (config/*.toml, the README's examples) and the HTTP endpoint's
requests (src/api.rs). The binary targets' seeds come from `write_fuzz_seeds` tests in Rust."""
import hashlib
import pathlib
import re

root = pathlib.Path(__file__).resolve().parent.parent
corpus = root / "fuzz" / "corpus"

# The order of `scalar` in fuzz_targets/pg_text.rs.
SCALARS = ["Boolean", "Int16", "Int32", "Int64", "Float32", "Float64", "Decimal", "VariableDecimal",
           "String", "Bytes", "Uuid", "Date", "Timestamp", "TimestampTz", "Time", "Money", "Json",
           "interval", "int4range", "tstzrange", "box", "Enum", "TextMap", "Record"]


def write(target, data):
    folder = corpus / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ("test-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


def literals(line):
    """The Rust string literals of a line, raw ones included, unescaped roughly as rustc would."""
    found = []
    for raw, plain in re.findall(r'r#"(.*?)"#|"((?:[^"\\]|\\.)*)"', line):
        if raw:
            found.append(raw)
        else:
            found.append(plain.encode().decode("unicode_escape", errors="ignore"))
    return found


src = root / "connectors" / "postgres"

# COPY lines: column count, chunk size, the line (twice, to cross a chunk boundary).
for line in (src / "snapshot_tests.rs").read_text().splitlines():
    for m in re.findall(r'b"((?:[^"\\]|\\.)*)"', line):
        data = m.encode().decode("unicode_escape").encode("latin-1")
        columns = data.count(b"\t") + 1
        write("copy_rows", bytes([columns, 7]) + data + b"\n" + data + b"\n")

# Arrays (`,` and `;`), records, hstore: selector byte, then the text.
for line in (src / "structured.rs").read_text().splitlines():
    for text in literals(line):
        data = text.encode()
        if "split_hstore" in line or "=>" in text:
            write("structured_text", b"\x03" + data)
        elif "split_record" in line or text.startswith("("):
            write("structured_text", b"\x02" + data)
        elif "b';'" in line:
            write("structured_text", b"\x01" + data)
        else:
            write("structured_text", b"\x00" + data)

# Values: the type named on the line (arrays for `{…}` text), else every scalar the file tests.
for name in ("types_tests.rs", "types_temporal_tests.rs"):
    for line in (src / name).read_text().splitlines():
        named = [s for s in SCALARS if re.search(r"ColumnType::" + s + r"\b", line)]
        for text in literals(line):
            data = text.encode()
            for scalar in named or ["String"]:
                index = SCALARS.index(scalar)
                if text.startswith("{") or text.startswith("["):
                    write("pg_text", bytes([index]) + data)
                else:
                    write("pg_text", bytes([74 + index]) + data)
for interval in ["P1Y2M3DT4H5M6.5S", "-P1D", "PT0S"]:
    write("pg_text", b"\x48" + interval.encode())
for timetz in ["10:15:30+02", "23:59:59.999999-05:30"]:
    write("pg_text", b"\x49" + timetz.encode())

for toml in sorted((root / "config").glob("*.toml")):
    write("config", toml.read_bytes())
# The README's examples (transforms, sinks, …) on top of the PostgreSQL config they extend.
base = (root / "config" / "sluice.toml").read_text()
for block in re.findall(r"```toml\n(.*?)```", (root / "README.md").read_text(), re.S):
    write("config", block.encode())
    write("config", (base + "\n" + block).encode())

for line in (root / "src" / "api.rs").read_text().splitlines():
    for text in literals(line):
        if " HTTP/1.1" in text:
            write("http", text.replace("{path}", "/metrics").encode())
write("http", b"GET /health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
