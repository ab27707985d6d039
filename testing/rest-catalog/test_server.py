#!/usr/bin/env python3
"""Self-test for server.py with a second, independent REST client: pyiceberg's
RestCatalog. Run with the venv python (sink-iceberg's tests/rest.rs runs it too):

    .venv/bin/python testing/rest-catalog/test_server.py

Starts the server on a free port (and a second one with a path prefix) with a
fresh SQLite catalog and warehouse, and prints "N passed, M failed".
"""
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import traceback

import pyarrow as pa
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    CommitStateUnknownException,
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform
from pyiceberg.types import LongType, NestedField, StringType, TimestamptzType

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA = Schema(
    NestedField(1, "ts", TimestamptzType(), required=True),
    NestedField(2, "seq", LongType(), required=True),
    NestedField(3, "sym", StringType(), required=False),
)
SPEC = PartitionSpec(PartitionField(source_id=1, field_id=1000, transform=DayTransform(), name="ts_day"))
ARROW = pa.schema([pa.field("ts", pa.timestamp("us", tz="UTC"), False), pa.field("seq", pa.int64(), False),
                   pa.field("sym", pa.string())])
T0 = 1_709_251_200_000_000  # 2024-03-01T00:00:00Z


def rows(seq0, n):
    return pa.table({"ts": pa.array([T0 + i * 3_600_000_000 for i in range(seq0, seq0 + n)], pa.timestamp("us", tz="UTC")),
                     "seq": pa.array(range(seq0, seq0 + n), pa.int64()),
                     "sym": pa.array([f"s{i % 3}" for i in range(n)])}, schema=ARROW)


class Server:
    def __init__(self, tmp, prefix=""):
        self.db = os.path.join(tmp, f"catalog{prefix}.db")
        self.warehouse = os.path.join(tmp, f"warehouse{prefix}")
        args = [sys.executable, os.path.join(HERE, "server.py"), "--port", "0", "--db", self.db,
                "--warehouse", self.warehouse, "--exit-on-stdin-eof"]
        if prefix:
            args += ["--prefix", prefix]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("LISTENING "), line
        self.port = int(line.split()[1])
        self.uri = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def http(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        c.request(method, path, body=None if body is None else json.dumps(body),
                  headers={"Content-Type": "application/json"})
        r = c.getresponse()
        data = r.read()
        c.close()
        return r.status, (json.loads(data) if data else None)

    def faults(self, *specs):
        status, body = self.http("POST", "/_test/faults", {"faults": list(specs)})
        assert status == 200, body

    def stats(self):
        return self.http("GET", "/_test/stats")[1]

    def catalog(self):
        return RestCatalog("rest", uri=self.uri)

    def sql(self):
        """The backend, read directly: what the server really holds."""
        return SqlCatalog("offload", uri=f"sqlite:///{self.db}", warehouse=self.warehouse)


TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


@test
def config_and_errors(s):
    status, cfg = s.http("GET", "/v1/config?warehouse=x")
    assert status == 200 and cfg["defaults"] == {} and cfg["overrides"] == {}, cfg
    status, err = s.http("GET", "/v1/namespaces/nope")
    assert status == 404 and err["error"]["type"] == "NoSuchNamespaceException" and err["error"]["code"] == 404, err
    status, err = s.http("POST", "/v1/namespaces", {"namespace": "notalist"})
    assert status == 400 and err["error"]["type"] == "BadRequestException", err
    status, err = s.http("POST", "/_test/faults", {"status": 409, "when": "after"})
    assert status == 400, err
    status, err = s.http("POST", "/_test/faults", {"status": "lose-swap", "when": "after"})
    assert status == 400, err


@test
def namespaces(s):
    c = s.catalog()
    c.create_namespace("ns1", {"owner": "me"})
    c.create_namespace(("ns1", "child"))
    try:
        c.create_namespace("ns1")
        raise AssertionError("duplicate namespace created")
    except NamespaceAlreadyExistsError:
        pass
    assert ("ns1",) in c.list_namespaces(), c.list_namespaces()
    assert c.list_namespaces("ns1") == [("ns1", "child")], c.list_namespaces("ns1")
    assert c.load_namespace_properties("ns1")["owner"] == "me"
    assert c.namespace_exists("ns1") and not c.namespace_exists("ns_missing")
    summary = c.update_namespace_properties("ns1", removals={"owner", "absent"}, updates={"a": "1"})
    assert summary.removed == ["owner"] and summary.updated == ["a"] and summary.missing == ["absent"], summary
    assert c.load_namespace_properties("ns1").get("a") == "1"
    c.drop_namespace(("ns1", "child"))
    try:
        c.load_namespace_properties(("ns1", "child"))
        raise AssertionError("dropped namespace still there")
    except NoSuchNamespaceError:
        pass


@test
def paging(s):
    c = s.catalog()
    c.create_namespace("pg")
    for i in range(5):
        c.create_table(("pg", f"t{i}"), SCHEMA)
    status, page = s.http("GET", "/v1/namespaces/pg/tables?pageSize=2")
    assert status == 200 and len(page["identifiers"]) == 2 and page["next-page-token"] == "2", page
    status, page = s.http("GET", "/v1/namespaces/pg/tables?pageSize=2&pageToken=4")
    assert page["identifiers"] == [{"namespace": ["pg"], "name": "t4"}] and page["next-page-token"] is None, page
    assert len(c.list_tables("pg")) == 5


@test
def tables_create_append_read(s):
    c = s.catalog()
    c.create_namespace("lake")
    t = c.create_table(("lake", "trades"), SCHEMA, partition_spec=SPEC, properties={"p": "v"})
    try:
        c.create_table(("lake", "trades"), SCHEMA)
        raise AssertionError("duplicate table created")
    except TableAlreadyExistsError:
        pass
    assert c.table_exists(("lake", "trades")) and not c.table_exists(("lake", "nope"))
    t.append(rows(0, 50))
    t.append(rows(50, 30))
    t = c.load_table(("lake", "trades"))
    assert len(t.metadata.snapshots) == 2 and t.metadata.properties["p"] == "v"
    assert t.scan().to_arrow().num_rows == 80
    direct = s.sql().load_table(("lake", "trades"))
    assert direct.metadata_location == t.metadata_location
    assert direct.scan().to_arrow().num_rows == 80
    with t.transaction() as tx:
        tx.set_properties(q="w")
    assert c.load_table(("lake", "trades")).metadata.properties["q"] == "w"


@test
def stale_commit_conflicts(s):
    c = s.catalog()
    c.create_namespace("race")
    a = c.create_table(("race", "t"), SCHEMA)
    b = c.load_table(("race", "t"))
    a.append(rows(0, 3))
    before = s.stats()["commits"]
    # Built on the state before a's snapshot: the server refuses it (409), and
    # pyiceberg (like iceberg-rust) refreshes and re-applies the append.
    b.append(rows(3, 3))
    after = s.stats()["commits"]
    assert after["conflicts"] == before["conflicts"] + 1, (before, after)
    assert after["applied"] == before["applied"] + 1, (before, after)
    log = s.stats()["commit_log"][-2:]
    assert [e["status"] for e in log] == [409, 200] and "Requirement failed" in log[0]["error"], log
    t = s.sql().load_table(("race", "t"))
    assert t.scan().to_arrow().num_rows == 6 and len(t.metadata.snapshots) == 2


@test
def concurrent_commits_serialise(s):
    c = s.catalog()
    c.create_namespace("conc")
    c.create_table(("conc", "t"), SCHEMA)
    tables = [c.load_table(("conc", "t")) for _ in range(4)]
    errors = []
    barrier = threading.Barrier(len(tables))
    before = s.stats()["commits"]

    def go(i, t):
        barrier.wait()
        try:
            t.append(rows(i * 10, 10))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=go, args=(i, t)) for i, t in enumerate(tables)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    after = s.stats()["commits"]
    # All four were built on the same base: exactly one landed per round.
    assert after["applied"] - before["applied"] == 4, (before, after)
    assert after["conflicts"] - before["conflicts"] >= 3, (before, after)
    t = s.sql().load_table(("conc", "t"))
    assert t.scan().to_arrow().num_rows == 40 and len(t.metadata.snapshots) == 4


@test
def faults(s):
    c = s.catalog()
    c.create_namespace("f")
    t = c.create_table(("f", "t"), SCHEMA)
    base = s.stats()["commits"]
    # 409 before: not applied; the client retries and lands once.
    s.faults({"status": 409, "table": "f.t"})
    t.append(rows(0, 5))
    assert len(s.sql().load_table(("f", "t")).metadata.snapshots) == 1
    # 500 after: applied, the client is told the state is unknown.
    t = c.load_table(("f", "t"))
    s.faults({"status": 500, "when": "after"})
    try:
        t.append(rows(5, 5))
        raise AssertionError("500 fault not raised")
    except CommitStateUnknownException:
        pass
    assert s.sql().load_table(("f", "t")).scan().to_arrow().num_rows == 10
    # 503 before (not applied) and a dropped connection after (applied).
    t = c.load_table(("f", "t"))
    s.faults({"status": 503}, {"status": "drop", "when": "after"})
    for expect_rows in (10, 15):
        try:
            t.append(rows(100, 5))
            raise AssertionError("fault not raised")
        except Exception as e:  # noqa: BLE001 - pyiceberg raises different types for these
            assert not isinstance(e, AssertionError), e
        t = c.load_table(("f", "t"))
        assert t.scan().to_arrow().num_rows == expect_rows, expect_rows
    # A fault for another table is not consumed here.
    s.faults({"status": 500, "table": "other.t"})
    t.append(rows(200, 1))
    st = s.stats()
    assert st["faults"]["pending"] == [{"op": "updateTable", "status": 500, "when": "before", "count": 1,
                                        "table": "other.t"}], st["faults"]
    assert s.http("DELETE", "/_test/faults")[0] == 204
    d = {k: st["commits"][k] - base[k] for k in base}
    assert d == {"received": 6, "applied": 4, "conflicts": 0, "failed": 0, "faults_before": 2, "faults_after": 2}, d
    log = [e for e in st["commit_log"] if e["table"] == "f.t"]
    assert [e["status"] for e in log] == [409, 200, 500, 503, "drop", 200], log
    assert [e["applied"] for e in log] == [False, True, True, False, True, True], log
    assert "assert-ref-snapshot-id" in log[0]["requirements"] and "add-snapshot" in log[0]["updates"], log[0]
    # count: the next two commits answer 409, the third lands.
    s.faults({"status": 409, "count": 2})
    t.append(rows(300, 1))
    assert [e["status"] for e in s.stats()["commit_log"][-3:]] == [409, 409, 200]
    # lose-swap: another writer commits between validation and the swap, so the
    # swap's WHERE misses: a genuine 409 (conflicts, not faults), then the retry lands.
    before = s.stats()["commits"]
    s.faults({"status": "lose-swap"})
    t = c.load_table(("f", "t"))
    t.append(rows(400, 2))
    after = s.stats()
    assert after["commits"]["conflicts"] == before["conflicts"] + 1, after["commits"]
    lost = after["commit_log"][-2]
    assert lost["status"] == 409 and "another process" in lost["error"] and lost["fault"]["status"] == "lose-swap", lost
    t = s.sql().load_table(("f", "t"))
    assert t.metadata.properties.get("offload-test.interleaved") == "1", t.metadata.properties
    assert t.scan().to_arrow().num_rows == 19
    # A fault on another operation: loadTable answers 503 once.
    s.faults({"op": "loadTable", "status": 503})
    assert s.http("GET", "/v1/namespaces/f/tables/t")[0] == 503
    assert s.http("GET", "/v1/namespaces/f/tables/t")[0] == 200


@test
def staged_create_transaction(s):
    c = s.catalog()
    c.create_namespace("stg")
    with c.create_table_transaction(("stg", "t"), SCHEMA, partition_spec=SPEC) as tx:
        tx.append(rows(0, 7))
    t = s.sql().load_table(("stg", "t"))
    assert t.scan().to_arrow().num_rows == 7
    assert c.load_table(("stg", "t")).metadata.table_uuid == t.metadata.table_uuid


@test
def rename_register_drop_purge(s):
    c = s.catalog()
    c.create_namespace("r")
    c.create_namespace("r2")
    t = c.create_table(("r", "a"), SCHEMA)
    t.append(rows(0, 4))
    c.rename_table(("r", "a"), ("r2", "b"))
    assert not c.table_exists(("r", "a")) and c.table_exists(("r2", "b"))
    try:
        c.rename_table(("r", "missing"), ("r", "x"))
        raise AssertionError("renamed a missing table")
    except NoSuchTableError:
        pass
    try:
        c.drop_namespace("r2")
        raise AssertionError("dropped a namespace with tables")
    except NamespaceNotEmptyError:
        pass
    loc = c.load_table(("r2", "b")).metadata_location
    c.drop_table(("r2", "b"))
    assert os.path.exists(loc), "drop without purge keeps the files"
    reg = c.register_table(("r", "again"), loc)
    assert reg.scan().to_arrow().num_rows == 4
    c.purge_table(("r", "again"))
    assert not c.table_exists(("r", "again"))
    try:
        c.load_table(("r", "again"))
        raise AssertionError("purged table still loads")
    except NoSuchTableError:
        pass


def prefixed(tmp):
    """A server under /v1/<prefix>/: clients learn the prefix from /v1/config."""
    s = Server(tmp, prefix="pfx")
    try:
        status, cfg = s.http("GET", "/v1/config")
        assert cfg["overrides"] == {"prefix": "pfx"}, cfg
        assert s.http("GET", "/v1/namespaces")[0] == 404
        c = s.catalog()
        c.create_namespace("p")
        c.create_table(("p", "t"), SCHEMA).append(rows(0, 2))
        assert c.load_table(("p", "t")).scan().to_arrow().num_rows == 2
        assert s.http("GET", "/v1/pfx/namespaces")[1]["namespaces"] == [["p"]]
    finally:
        s.stop()


def main():
    passed = failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        s = Server(tmp)
        try:
            for fn in TESTS + [lambda _s: prefixed(tmp)]:
                name = getattr(fn, "__name__", "prefix")
                name = "prefix" if name == "<lambda>" else name
                try:
                    fn(s)
                    passed += 1
                    print(f"ok   {name}")
                except Exception:  # noqa: BLE001
                    failed += 1
                    print(f"FAIL {name}")
                    traceback.print_exc()
        finally:
            s.stop()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
