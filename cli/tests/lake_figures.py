"""Reads an Iceberg table with pyiceberg (an independent implementation) and
prints exact figures as one tab-separated line, in the order the end-to-end test
computes them in ClickHouse:

count, distinct (ts, seq), sum(ts micros), sum(seq), sum(price * 1e8),
list elements, map entries, null trade_ids

usage: lake_figures.py <catalog-uri> <catalog-name> <namespace.table> <warehouse> [<props-json>]
  props-json: extra catalog properties, e.g. pyiceberg's s3.* for an S3 warehouse
"""
import json
import sys
from decimal import Decimal

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog

uri, name, ident, warehouse = sys.argv[1:5]
props = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
catalog = SqlCatalog(name, uri=uri, warehouse=warehouse, **props)
t = catalog.load_table(ident).scan().to_arrow()

ts = t.column("ts").cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()
seq = [int(v) for v in t.column("seq").to_pylist()]
price = t.column("price").to_pylist()
print("\t".join(str(v) for v in [
    t.num_rows,
    len(set(zip(ts, seq))),
    sum(ts),
    sum(seq),
    sum(int(p * Decimal(10) ** 8) for p in price),
    sum(len(v) for v in t.column("conditions").to_pylist()),
    sum(len(v) for v in t.column("vendor").to_pylist()),
    t.column("trade_id").null_count,
]))
