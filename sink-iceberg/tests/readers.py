"""Independent readers for tests/readers.rs.

Reads one table written by offload-sink-iceberg with pyiceberg (through the
same SQLite SQL catalog) and with ClickHouse (chdb, icebergLocal) and prints
the figures each computes as JSON on stdout. The Rust test compares them with
what it wrote.

Usage: python readers.py '<json config>'
  {"db": "/abs/catalog.db", "warehouse": "/abs/wh", "catalog": "offload",
   "table": "ns.t", "location": "/abs/wh/ns/t", "expected_keys": "/abs/keys.txt"}

S3 mode: with "s3": {"endpoint": "http://127.0.0.1:port", "access_key": ...,
"secret_key": ..., "region": ...}, the warehouse and location are s3:// URLs
(path-style addressing); pyiceberg reads through PyArrowFileIO with those
properties and ClickHouse through `icebergS3(...)`.
"""

import hashlib
import json
import sys
from decimal import Decimal


def digest(lines):
    return hashlib.sha256("\n".join(sorted(lines)).encode("utf-8")).hexdigest()


def schema_ids(fields, prefix=""):
    """(path -> field id) for a pyiceberg struct, nested fields included."""
    from pyiceberg.types import ListType, MapType, StructType

    out = {}
    for f in fields:
        path = prefix + f.name
        out[path] = f.field_id
        t = f.field_type
        if isinstance(t, StructType):
            out.update(schema_ids(t.fields, path + "."))
        elif isinstance(t, ListType):
            out[path + ".element"] = t.element_id
        elif isinstance(t, MapType):
            out[path + ".key"] = t.key_id
            out[path + ".value"] = t.value_id
    return out


def with_pyiceberg(cfg):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from pyiceberg.catalog.sql import SqlCatalog

    s3 = cfg.get("s3")
    if s3:
        catalog = SqlCatalog(
            cfg["catalog"],
            uri=f"sqlite:///{cfg['db']}",
            warehouse=cfg["warehouse"],
            **{
                "py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO",
                "s3.endpoint": s3["endpoint"],
                "s3.access-key-id": s3["access_key"],
                "s3.secret-access-key": s3["secret_key"],
                "s3.region": s3["region"],
                # Path-style addressing (`endpoint/bucket/key`), as loopback servers need.
                "s3.force-virtual-addressing": "false",
            },
        )
    else:
        catalog = SqlCatalog(
            cfg["catalog"],
            uri=f"sqlite:///{cfg['db']}",
            warehouse=f"file://{cfg['warehouse']}",
        )
    table = catalog.load_table(cfg["table"])
    data = table.scan().to_arrow()
    # Pruned by partition value and file statistics: one UTC day.
    day = table.scan(
        row_filter="ts >= '2024-03-02T00:00:00+00:00' and ts < '2024-03-03T00:00:00+00:00'"
    ).to_arrow()
    ts_micros = pc.cast(data["ts"], pa.int64()).to_pylist()
    seq = data["seq"].to_pylist()
    symbol = data["symbol"].to_pylist()
    price = data["price"].to_pylist()
    qty = data["qty"].to_pylist()
    tags = data["tags"].to_pylist()
    attrs = data["attrs"].to_pylist()

    partitions = sorted(
        [str(p["partition"]["ts_day"]), p["record_count"]]
        for p in table.inspect.partitions().to_pylist()
    )
    files = table.inspect.files().to_pylist()
    first_file = files[0]["file_path"]
    if s3:
        with table.io.new_input(first_file).open() as f:
            parquet_schema = pq.read_schema(f)
    else:
        parquet_schema = pq.read_schema(first_file.removeprefix("file://"))
    file_ids = {
        f.name: int(f.metadata[b"PARQUET:field_id"]) for f in parquet_schema
    }
    return {
        "count": data.num_rows,
        "sum_seq": str(sum(seq)),
        "sum_price_scaled": str(sum(int(p.scaleb(8)) for p in price)),
        "qty_nulls": sum(1 for q in qty if q is None),
        "sum_qty": sum(q for q in qty if q is not None),
        "tag_elements": sum(len(t) for t in tags if t is not None),
        "attr_entries": sum(len(m) for m in attrs if m is not None),
        "attr_null_values": sum(1 for m in attrs if m for (_, v) in m if v is None),
        "min_ts": str(min(ts_micros)),
        "max_ts": str(max(ts_micros)),
        "digest": digest(f"{s}:{t}:{y}" for s, t, y in zip(seq, ts_micros, symbol)),
        "ts_type": str(data.schema.field("ts").type),
        "price_type": str(table.schema().find_field("price").field_type),
        "ts_iceberg_type": str(table.schema().find_field("ts").field_type),
        "field_ids": schema_ids(table.schema().fields),
        "file_field_ids": file_ids,
        "partitions": partitions,
        "partition_spec": str(table.spec()),
        "files": len(files),
        "day_count": day.num_rows,
    }


def with_chdb(cfg):
    import chdb

    s3 = cfg.get("s3")
    if s3:
        # s3://bucket/path -> endpoint/bucket/path/ (path-style).
        path = cfg["location"].split("://", 1)[1].rstrip("/")
        url = f"{s3['endpoint'].rstrip('/')}/{path}/"
        src = f"icebergS3('{url}', '{s3['access_key']}', '{s3['secret_key']}')"
    else:
        src = f"icebergLocal('{cfg['location']}')"
    sql = f"""
    SELECT
        count() AS count,
        toString(sum(seq)) AS sum_seq,
        toString(sum(toDecimal128(price, 8))) AS sum_price,
        countIf(qty IS NULL) AS qty_nulls,
        toString(sum(qty)) AS sum_qty,
        toString(sum(length(tags))) AS tag_elements,
        toString(sum(length(attrs))) AS attr_entries,
        toString(sum(arrayCount(v -> v IS NULL, mapValues(attrs)))) AS attr_null_values,
        toString(toUnixTimestamp64Micro(min(ts))) AS min_ts,
        toString(toUnixTimestamp64Micro(max(ts))) AS max_ts,
        lower(hex(SHA256(arrayStringConcat(arraySort(groupArray(
            concat(toString(seq), ':', toString(toUnixTimestamp64Micro(ts)), ':', symbol))), '\n')))) AS digest,
        any(toTypeName(ts)) AS ts_type,
        any(toTypeName(price)) AS price_type
    FROM {src}
    """
    row = json.loads(str(chdb.query(sql, "JSONEachRow")).strip())
    days = chdb.query(
        f"SELECT toString(toDate(ts)) AS d, count() AS c FROM {src} GROUP BY d ORDER BY d",
        "JSONEachRow",
    )
    partitions = [
        [r["d"], int(r["c"])]
        for r in map(json.loads, str(days).strip().splitlines())
    ]
    day = chdb.query(
        f"SELECT count() AS c FROM {src} "
        "WHERE ts >= toDateTime64('2024-03-02 00:00:00', 6, 'UTC') "
        "AND ts < toDateTime64('2024-03-03 00:00:00', 6, 'UTC')",
        "JSONEachRow",
    )
    return {
        "count": int(row["count"]),
        "sum_seq": row["sum_seq"],
        "sum_price_scaled": str(int(Decimal(row["sum_price"]).scaleb(8))),
        "qty_nulls": int(row["qty_nulls"]),
        "sum_qty": int(row["sum_qty"]),
        "tag_elements": int(row["tag_elements"]),
        "attr_entries": int(row["attr_entries"]),
        "attr_null_values": int(row["attr_null_values"]),
        "min_ts": row["min_ts"],
        "max_ts": row["max_ts"],
        "digest": row["digest"],
        "ts_type": row["ts_type"],
        "price_type": row["price_type"],
        "partitions": partitions,
        "day_count": int(json.loads(str(day).strip())["c"]),
    }


def main():
    cfg = json.loads(sys.argv[1])
    with open(cfg["expected_keys"], encoding="utf-8") as f:
        expected = digest(line for line in f.read().split("\n") if line)
    out = {"expected_digest": expected}
    # Each reader reports its own failure instead of hiding the other's result.
    for name, fn in (("pyiceberg", with_pyiceberg), ("chdb", with_chdb)):
        try:
            out[name] = fn(cfg)
        except Exception as e:  # noqa: BLE001 - reported to the Rust test
            out[name] = {"error": f"{type(e).__name__}: {e}"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
