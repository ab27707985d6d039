#!/usr/bin/env python3
"""Self-test for server.py. Run with the venv python:

    .venv/bin/python testing/chdb-front/test_front.py

Starts the front on a free port with a fresh data dir, talks plain HTTP to it
(http.client, keep-alive on one connection) and prints "N passed, M failed".
"""
import http.client
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import traceback
from urllib.parse import urlencode

import lz4.block
import lz4.frame
import pyarrow.ipc

HERE = os.path.dirname(os.path.abspath(__file__))


def start(data):
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "server.py"), "--port", "0",
                             "--data", data], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("LISTENING "), line
    return proc, int(line.split()[1])


class Client:
    def __init__(self, port):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def request(self, method="POST", params=None, body=None, headers=None):
        path = "/?" + urlencode(params) if params else "/"
        chunked = not isinstance(body, (bytes, type(None)))  # generators go out chunked
        self.conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        r = self.conn.getresponse()
        return r.status, r.getheaders(), r.read()

    def ok(self, sql, **params):
        status, _, body = self.request(params={"query": sql, **params})
        assert status == 200, body
        return body


def native_block(raw, method=0x82):
    """One ClickHouse native compressed block with a dummy checksum."""
    payload = lz4.block.compress(raw, store_size=False) if method == 0x82 else raw
    return b"\0" * 16 + struct.pack("<BII", method, 9 + len(payload), len(raw)) + payload


def chunked(*pieces):
    for p in pieces:
        yield p


TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


@test
def ping(c):
    for path in ("/ping", "/"):
        c.conn.request("GET", path)
        r = c.conn.getresponse()
        assert (r.status, r.read()) == (200, b"Ok.\n")
    c.conn.request("HEAD", "/ping")
    r = c.conn.getresponse()
    assert r.status == 200 and r.read() == b""


@test
def select_tsv(c):
    assert c.ok("SELECT number, toString(number) FROM numbers(3)") == b"0\t0\n1\t1\n2\t2\n"
    # query in the body, format from default_format, setting from the URL
    status, _, body = c.request(params={"default_format": "JSONEachRow", "max_block_size": "7"},
                                body=b"SELECT getSetting('max_block_size') AS b")
    assert (status, body) == (200, b'{"b":7}\n'), body
    # the setting did not leak into the next request
    assert c.ok("SELECT getSetting('max_block_size')") != b"7\n"


@test
def ddl_and_insert_lz4(c):
    c.ok("CREATE TABLE t (a UInt32, s String) ENGINE = MergeTree ORDER BY a")
    raw = b"".join(struct.pack("<I", i) + bytes([len(str(i))]) + str(i).encode() for i in range(1000))
    body = native_block(raw[:2000]) + native_block(raw[2000:3000], 0x02) + native_block(raw[3000:])
    status, headers, resp = c.request(params={"query": "INSERT INTO t (a, s) FORMAT RowBinary",
                                              "decompress": "1"}, body=chunked(body[:10], body[10:]),
                                      headers={"Transfer-Encoding": "chunked"})  # like the crate
    assert status == 200, resp
    assert json.loads(dict(headers)["X-ClickHouse-Summary"])["written_rows"] == "1000"
    assert c.ok("SELECT count(), sum(a), max(s) FROM t") == b"1000\t499500\t999\n"


@test
def insert_values_in_body(c):
    c.ok("CREATE TABLE v (a UInt8) ENGINE = Memory")
    status, _, body = c.request(params={"query": "INSERT INTO v VALUES"}, body=b"(1),(2)")
    assert status == 200, body
    status, _, body = c.request(body=b"INSERT INTO v FORMAT TSV\n3\n")
    assert status == 200, body
    status, _, body = c.request(body=b"INSERT INTO v FORMAT RowBinary\n\xff")  # binary data after FORMAT
    assert status == 200, body
    assert c.ok("SELECT sum(a) FROM v") == b"261\n"


@test
def errors(c):
    status, headers, body = c.request(params={"query": "SELECT * FROM no_such_table"})
    assert status == 500 and dict(headers)["X-ClickHouse-Exception-Code"] == "60", (status, body)
    assert body.startswith(b"Code: 60. DB::Exception:"), body
    # a failed INSERT drains its body; the keep-alive connection still works
    status, headers, body = c.request(params={"query": "INSERT INTO t FORMAT TSV"}, body=b"x\ty\n" * 1000)
    assert status == 500 and dict(headers)["X-ClickHouse-Exception-Code"] == "27", body
    assert c.ok("SELECT 1") == b"1\n"


@test
def mid_stream_error(c):
    status, headers, body = c.request(params={
        "query": "SELECT throwIf(number = 3000000) FROM numbers(4000000)", "max_block_size": "65536"})
    tag = dict(headers)["X-ClickHouse-Exception-Tag"].encode()
    assert status == 200 and body.endswith(b" " + tag + b"\r\n__exception__\r\n"), body[-300:]
    assert b"Code: 395." in body[-1000:]


@test
def param_query(c):
    status, _, body = c.request(params={"query": "SELECT {x:UInt32} + 1, {s:String}",
                                        "param_x": "41", "param_s": "it's"})
    assert (status, body) == (200, b"42\tit\\'s\n"), body


@test
def multipart_param_query(c):
    boundary = "clickhouse-rs-boundary-0123456789abcdef"
    fields = [("query", "SELECT {a:UInt8} * 2 AS x, {b:String} AS y"), ("param_a", "21"), ("param_b", "x\\ty")]
    body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                   for k, v in fields) + f"--{boundary}--\r\n"
    status, _, resp = c.request(params={"default_format": "JSONEachRow"}, body=body.encode(),
                                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert (status, resp) == (200, b'{"x":42,"y":"x\\ty"}\n'), resp


@test
def arrow_stream_stitched(c):
    # several chdb chunks must come out as ONE Arrow IPC stream
    for n in (0, 5, 3_000_000):
        status, _, body = c.request(params={"query": f"SELECT number, toString(number) s FROM numbers({n})",
                                            "default_format": "ArrowStream"})
        assert status == 200
        table = pyarrow.ipc.open_stream(io.BytesIO(body)).read_all()
        assert table.num_rows == n and table.column_names == ["number", "s"], table.schema
        if n:
            assert table.column(0)[n - 1].as_py() == n - 1


@test
def rowbinary_names_and_types_stitched(c):
    status, _, body = c.request(params={"query": "SELECT number FROM numbers(2000000)",
                                        "default_format": "RowBinaryWithNamesAndTypes"})
    header = b"\x01\x06number\x06UInt64"
    assert status == 200 and body.startswith(header) and len(body) == len(header) + 8 * 2_000_000


@test
def lz4_response(c):
    status, headers, body = c.request(params={"query": "SELECT number FROM numbers(1000000)"},
                                      headers={"Accept-Encoding": "lz4"})
    assert status == 200 and dict(headers)["Content-Encoding"] == "lz4"
    lines = lz4.frame.decompress(body).split(b"\n")
    assert len(lines) == 1_000_001 and lines[-2] == b"999999"


@test
def database_and_session(c):
    c.ok("CREATE DATABASE d2")
    c.ok("CREATE TABLE d2.x (a UInt8) ENGINE = Memory")
    assert c.ok("SELECT currentDatabase(), count() FROM x", database="d2") == b"d2\t0\n"
    c.ok("CREATE TEMPORARY TABLE tmp (a UInt8)", session_id="s1")
    c.ok("INSERT INTO tmp VALUES (7)", session_id="s1")
    assert c.ok("SELECT a FROM tmp", session_id="s1") == b"7\n"


def main():
    passed = failed = 0
    with tempfile.TemporaryDirectory() as data:
        proc, port = start(data)
        try:
            c = Client(port)
            for fn in TESTS:
                try:
                    fn(c)
                    passed += 1
                    print(f"ok   {fn.__name__}")
                except Exception:  # noqa: BLE001
                    failed += 1
                    print(f"FAIL {fn.__name__}")
                    traceback.print_exc()
                    c = Client(port)  # a failed test may leave the connection mid-response
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
