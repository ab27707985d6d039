#!/usr/bin/env python3
"""Peer 3 of the offload benchmark harness: pyiceberg.

What a Python user would write: fetch the table from ClickHouse as ArrowStream
over HTTP (the same chdb front, the same kind of connection and settings as
the Rust engine: no HTTP compression, no IPC buffer compression), map the
types to the ones the engine writes (timestamps as UTC microseconds, UInt64 as
long, UInt16 as int, strings as UTF-8), create a SQLite-catalog table
partitioned by day(exchange_timestamp) with zstd level 3 Parquet, and
`table.append` the rows: one commit. pyiceberg only appends a fully
materialised `pa.Table` to a partitioned table, so the whole window is held in
memory.

Run by the harness (`benches/benches/harness.rs`), which measures this
process's peak RSS; this script reports its own CPU time and the front's over
the timed part (after the imports) as one `RESULT {json}` line on stdout.
"""
import argparse
import json
import os
import resource
import sys
import time
import urllib.parse
import urllib.request

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.transforms import DayTransform

# The settings the Rust source sends (offload-source-clickhouse ARROW_SETTINGS),
# except that strings arrive as Arrow strings (pyarrow cannot validate UTF-8
# per column as cheaply as a cast; ClickHouse strings here are ASCII).
ARROW_SETTINGS = {
    "output_format_arrow_string_as_string": "1",
    "output_format_arrow_low_cardinality_as_dictionary": "0",
    "output_format_arrow_fixed_string_as_fixed_byte_array": "1",
    "output_format_arrow_compression_method": "none",
    "enable_http_compression": "0",
}

US_UTC = pa.timestamp("us", tz="UTC")


def cpu_self():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_of(pid):
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def to_target(table):
    """The engine's type mapping, in pyarrow."""
    columns, fields = [], []
    for field, column in zip(table.schema, table.columns):
        t = field.type
        if pa.types.is_timestamp(t):
            column = column.cast(US_UTC)
        elif field.name == "ingestion_timestamp" and pa.types.is_uint32(t):  # DateTime: epoch seconds
            column = pc.multiply(column.cast(pa.int64()), 1_000_000).cast(US_UTC)
        elif pa.types.is_uint64(t):
            column = column.cast(pa.int64())  # checked: overflow raises
        elif pa.types.is_uint16(t) or pa.types.is_uint8(t) or pa.types.is_int16(t) or pa.types.is_int8(t):
            column = column.cast(pa.int32())
        elif pa.types.is_large_string(t) or pa.types.is_binary(t):
            column = column.cast(pa.string())
        columns.append(column)
        fields.append(pa.field(field.name, column.type, nullable=field.nullable))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--database", default="bench")
    p.add_argument("--table", required=True)
    p.add_argument("--out", required=True, help="directory for the catalog and the warehouse")
    p.add_argument("--front-pid", type=int, default=0)
    p.add_argument("--setting", action="append", default=[], help="name=value, a further ClickHouse setting")
    a = p.parse_args()
    settings = dict(s.split("=", 1) for s in a.setting)

    os.makedirs(a.out, exist_ok=True)
    started, cpu0, server0 = time.perf_counter(), cpu_self(), cpu_of(a.front_pid)

    query = f"SELECT * FROM `{a.database}`.`{a.table}` FORMAT ArrowStream"
    params = urllib.parse.urlencode({**settings, **ARROW_SETTINGS, "query": query})
    with urllib.request.urlopen(f"{a.url}/?{params}") as resp:
        source = pyarrow.ipc.open_stream(resp).read_all()
    read_s = time.perf_counter() - started
    data = to_target(source)
    del source

    catalog = SqlCatalog(
        "bench",
        uri=f"sqlite:///{a.out}/catalog.db",
        warehouse=f"file://{a.out}/warehouse",
    )
    catalog.create_namespace_if_not_exists("bench")
    table = catalog.create_table(
        f"bench.{a.table}",
        schema=data.schema,
        properties={
            "write.parquet.compression-codec": "zstd",
            "write.parquet.compression-level": "3",
            "format-version": "2",
        },
    )
    with table.update_spec() as spec:
        spec.add_field("exchange_timestamp", DayTransform(), "exchange_timestamp_day")
    table.append(data)

    seconds = time.perf_counter() - started
    result = {
        "rows": data.num_rows,
        "seconds": seconds,
        "read_seconds": read_s,
        "client_cpu": cpu_self() - cpu0,
        "server_cpu": cpu_of(a.front_pid) - server0,
        "table_location": table.metadata.location.removeprefix("file://"),
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    sys.exit(main())
