#!/usr/bin/env python3
"""An Iceberg REST catalog server for tests, on top of pyiceberg's SqlCatalog.

Test tooling only: no Iceberg REST catalog server can be installed here, so this
implements the part of the REST catalog spec (open-api/rest-catalog-open-api.yaml)
that the clients we test with use (iceberg-rust's iceberg-catalog-rest 0.10.1,
pyiceberg's RestCatalog) over a real backend: pyiceberg's SqlCatalog in a SQLite
file (or any SQLAlchemy URI), the same tables as Java's JdbcCatalog and
iceberg-catalog-sql. Commits validate their requirements against the current
metadata and land with the SQL catalog's compare-and-swap
(UPDATE ... WHERE metadata_location = <the one validated>); a failed requirement or
a lost swap answers 409 CommitFailedException. See README.md for the endpoints and
the fault injection / statistics endpoints under /_test/.

    python server.py --port 0 --db /tmp/cat.db --warehouse /tmp/wh
    -> prints "LISTENING <port>" on stdout once it accepts connections.
"""
import argparse
import json
import os
import signal
import socket
import sqlite3
import struct
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pydantic
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NamespaceNotEmptyError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table.sorting import SortOrder
from pyiceberg.table.update import AssertCreate, TableRequirement, TableUpdate

NS_SEP = "\x1f"  # the spec's namespace separator in paths and `parent` (%1F)
REQUIREMENTS = pydantic.TypeAdapter(list[TableRequirement])
UPDATES = pydantic.TypeAdapter(list[TableUpdate])
FAULT_STATUSES = {409, 500, 502, 503, 504, "drop", "lose-swap"}
# Error types per status (the spec's IcebergErrorResponse `type`).
STATUS_TYPES = {409: "CommitFailedException", 500: "CommitStateUnknownException",
                502: "BadGatewayException", 503: "ServiceUnavailableException",
                504: "GatewayTimeoutException"}
OP_ALIASES = {"commit": "updateTable"}


class HttpError(Exception):
    """Answered as the spec's error model: {"error": {"message", "type", "code"}}."""

    def __init__(self, code, type_, message):
        super().__init__(message)
        self.code, self.type, self.message = code, type_, message


def bad_request(message):
    return HttpError(400, "BadRequestException", message)


def not_found(type_, message):
    return HttpError(404, type_, message)


class Fault:
    """The next `count` matching requests fail with `status` (an HTTP status, or
    "drop": the connection is closed without a response), `when` = "before"
    (nothing applied) or "after" (applied, then the failure: unknown outcome)."""

    def __init__(self, spec):
        if not isinstance(spec, dict):
            raise bad_request(f"a fault must be an object, got {spec!r}")
        unknown = set(spec) - {"op", "status", "when", "count", "table", "message"}
        if unknown:
            raise bad_request(f"unknown fault fields {sorted(unknown)}")
        op = spec.get("op", "updateTable")
        self.op = OP_ALIASES.get(op, op)
        self.status = spec.get("status", 409)
        if self.status not in FAULT_STATUSES:
            raise bad_request("fault status must be one of 409, 500, 502, 503, 504, \"drop\", \"lose-swap\"; "
                              f"got {self.status!r}")
        self.when = spec.get("when", "before")
        if self.when not in ("before", "after"):
            raise bad_request(f"fault `when` must be \"before\" or \"after\", got {self.when!r}")
        if self.status == 409 and self.when == "after":
            raise bad_request("409 means not applied (spec): a 409 fault can only be `before`")
        if self.status == "lose-swap" and (self.when != "before" or self.op != "updateTable"):
            raise bad_request("a lose-swap fault is a commit's, before its swap")
        self.count = spec.get("count", 1)
        if not isinstance(self.count, int) or self.count < 1:
            raise bad_request(f"fault count must be a positive integer, got {self.count!r}")
        self.table = spec.get("table")
        self.message = spec.get("message") or f"injected fault: {self.status} {self.when} applying"

    def matches(self, op, table):
        return (self.op in ("*", op)) and (self.table is None or self.table == table)

    def describe(self):
        d = {"op": self.op, "status": self.status, "when": self.when, "count": self.count}
        if self.table is not None:
            d["table"] = self.table
        return d


class State:
    """The catalog, the write lock, the fault queue and the counters."""

    def __init__(self, catalog, other, prefix, verbose):
        self.catalog = catalog
        # A second, independent writer on the same database (lose-swap faults).
        self.other = other
        self.interleaved = 0
        self.prefix = prefix
        self.verbose = verbose
        # One writer at a time inside this process (SQLite has one writer anyway;
        # serialising avoids SQLITE_BUSY). Requirements are validated and the
        # swap done inside it; the swap is still the SQL compare-and-swap, so a
        # writer outside this process (another catalog on the same database)
        # makes it lose, which answers 409 like a failed requirement.
        self.write_lock = threading.Lock()
        self.mutex = threading.Lock()  # faults and stats
        self.faults = []
        self.reset_stats()

    def reset_stats(self):
        with self.mutex:
            self.requests = {}
            self.commits = {"received": 0, "applied": 0, "conflicts": 0, "failed": 0,
                            "faults_before": 0, "faults_after": 0}
            self.faults_injected = 0
            self.commit_log = []

    def count_request(self, op):
        with self.mutex:
            self.requests[op] = self.requests.get(op, 0) + 1

    def interleave(self, ident):
        """Commits a property change to `ident` through the other writer."""
        self.interleaved += 1
        t = self.other.load_table(ident)
        t.transaction().set_properties({"offload-test.interleaved": str(self.interleaved)}).commit_transaction()

    def peek_fault(self, op, table):
        with self.mutex:
            return next((f for f in self.faults if f.matches(op, table)), None)

    def consume_fault(self, fault):
        with self.mutex:
            fault.count -= 1
            if fault.count == 0:
                self.faults.remove(fault)
            self.faults_injected += 1

    def take_fault(self, op, table):
        fault = self.peek_fault(op, table)
        if fault is not None:
            self.consume_fault(fault)
        return fault

    def stats(self):
        with self.mutex:
            return {
                "requests": dict(self.requests),
                "commits": dict(self.commits),
                "faults": {"injected": self.faults_injected, "pending": [f.describe() for f in self.faults]},
                "commit_log": list(self.commit_log),
            }


def check_ns(parts):
    if not parts or any(not isinstance(p, str) or p == "" for p in parts):
        raise bad_request(f"invalid namespace {parts!r}")
    # SqlCatalog stores a namespace as its levels joined with '.'.
    if any("." in p for p in parts):
        raise bad_request(f"namespace levels containing '.' are not supported by this server: {parts!r}")


def ident_str(ns, name):
    return ".".join(ns) + "." + name


def ident_json(ident):
    return {"namespace": list(ident[:-1]), "name": ident[-1]}


def parse_ident(obj, what):
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not isinstance(obj.get("namespace"), list):
        raise bad_request(f"{what} must be {{namespace: [...], name: ...}}, got {obj!r}")
    check_ns(obj["namespace"])
    return (*obj["namespace"], obj["name"])


def paginate(items, query):
    """The spec's pageToken / pageSize: tokens are offsets."""
    token = query.get("pageToken", [None])[0]
    size = query.get("pageSize", [None])[0]
    try:
        start = int(token) if token else 0
        size = None if size is None else int(size)
    except ValueError:
        raise bad_request(f"invalid pageToken/pageSize: {token!r}/{size!r}") from None
    if size is None:
        return items[start:], None
    if size < 1:
        raise bad_request("pageSize must be positive")
    end = start + size
    return items[start:end], (str(end) if end < len(items) else None)


def load_result(table_or_staged, with_location=True):
    """A LoadTableResult, as a JSON string (the metadata serialised by pyiceberg
    the way it writes metadata files)."""
    loc = table_or_staged.metadata_location if with_location else None
    meta = table_or_staged.metadata.model_dump_json()
    head = {"config": {}}
    if loc is not None:
        head["metadata-location"] = loc
    return json.dumps(head)[:-1] + ', "metadata": ' + meta + "}"


class HookedSqlCatalog(SqlCatalog):
    """SqlCatalog with a hook between writing a commit's new metadata file and
    its compare-and-swap: the lose-swap fault commits there from outside."""

    before_swap = None  # set for one commit, under the server's write lock

    def _write_metadata(self, metadata, io, metadata_path):
        SqlCatalog._write_metadata(metadata, io, metadata_path)
        hook, self.before_swap = self.before_swap, None
        if hook is not None:
            hook()


class _Named:
    """What SqlCatalog.commit_table needs of its `table` argument."""

    def __init__(self, ident):
        self._ident = ident

    def name(self):
        return self._ident


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "offload-rest-catalog/1"
    state: State = None  # set in main()

    # --- plumbing ---------------------------------------------------------------
    def log_message(self, fmt, *args):
        if self.state.verbose:
            sys.stderr.write("rest-catalog: " + (fmt % args) + "\n")

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_HEAD(self):
        self.dispatch("HEAD")

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def json_body(self):
        raw = self.body
        if not raw:
            raise bad_request("a JSON body is required")
        try:
            return json.loads(raw)
        except ValueError as e:
            raise bad_request(f"malformed JSON body: {e}") from None

    def send(self, code, body=None):
        data = b"" if body is None else (body if isinstance(body, bytes) else
                                         (body if isinstance(body, str) else json.dumps(body)).encode())
        self.send_response(code)
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    def send_error_model(self, e):
        self.send(e.code, {"error": {"message": e.message, "type": e.type, "code": e.code}})

    def drop_connection(self):
        """Closes the connection without answering (RST: SO_LINGER 0)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass

    def answer_fault(self, fault):
        if fault.status == "drop":
            self.drop_connection()
        else:
            self.send_error_model(HttpError(fault.status, STATUS_TYPES[fault.status], fault.message))

    def dispatch(self, method):
        self.body = self.read_body()
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        # Split before decoding: an encoded '/' stays inside its segment.
        segs = [unquote(s) for s in url.path.split("/")[1:]]
        if segs and segs[-1] == "":
            segs.pop()
        try:
            if segs[:1] == ["_test"]:
                return self.admin(method, segs[1:])
            op, handler, args = self.route(method, segs)
        except HttpError as e:
            return self.send_error_model(e)
        self.state.count_request(op)
        table = ident_str(args[0], args[1]) if op in TABLE_OPS else None
        fault = None if op == "updateTable" else self.state.take_fault(op, table)
        try:
            if fault is not None and fault.when == "before":
                return self.answer_fault(fault)
            res = handler(self, *args)
            if fault is not None:
                return self.answer_fault(fault)
            if res is not None:  # None: the handler answered itself
                self.send(*res)
        except HttpError as e:
            self.send_error_model(e)
        except Exception as e:  # a bug here, or a backend failure: 500, logged
            traceback.print_exc(file=sys.stderr)
            self.send_error_model(HttpError(500, type(e).__name__, f"{type(e).__name__}: {e}"))

    def route(self, method, segs):
        if segs[:1] != ["v1"]:
            raise not_found("NotFoundException", f"no such endpoint: {self.path}")
        rest = segs[1:]
        if rest == ["config"] and method == "GET":
            return "getConfig", Handler.get_config, ()
        if self.state.prefix:
            if rest[:1] != [self.state.prefix]:
                raise not_found("NotFoundException", f"no such endpoint (expected prefix {self.state.prefix!r}): {self.path}")
            rest = rest[1:]
        n = len(rest)
        if rest == ["namespaces"]:
            return {"GET": ("listNamespaces", Handler.list_namespaces, ()),
                    "POST": ("createNamespace", Handler.create_namespace, ())}.get(method) or self.bad_method(method)
        if rest == ["tables", "rename"] and method == "POST":
            return "renameTable", Handler.rename_table, ()
        if n >= 2 and rest[0] == "namespaces":
            ns = tuple(rest[1].split(NS_SEP))
            check_ns(list(ns))
            if n == 2:
                return {"GET": ("loadNamespaceMetadata", Handler.get_namespace, (ns,)),
                        "HEAD": ("namespaceExists", Handler.namespace_exists, (ns,)),
                        "DELETE": ("dropNamespace", Handler.drop_namespace, (ns,))}.get(method) or self.bad_method(method)
            if rest[2:] == ["properties"] and method == "POST":
                return "updateProperties", Handler.update_properties, (ns,)
            if rest[2:] == ["register"] and method == "POST":
                return "registerTable", Handler.register_table, (ns,)
            if rest[2:] == ["tables"]:
                return {"GET": ("listTables", Handler.list_tables, (ns,)),
                        "POST": ("createTable", Handler.create_table, (ns,))}.get(method) or self.bad_method(method)
            if n == 4 and rest[2] == "tables":
                name = rest[3]
                return {"GET": ("loadTable", Handler.load_table, (ns, name)),
                        "HEAD": ("tableExists", Handler.table_exists, (ns, name)),
                        "DELETE": ("dropTable", Handler.drop_table, (ns, name)),
                        "POST": ("updateTable", Handler.commit, (ns, name))}.get(method) or self.bad_method(method)
        raise not_found("NotFoundException", f"no such endpoint: {method} {self.path}")

    def bad_method(self, method):
        raise HttpError(405, "MethodNotAllowedException", f"{method} is not supported on {self.path}")

    # --- config -------------------------------------------------------------------
    def get_config(self):
        overrides = {"prefix": self.state.prefix} if self.state.prefix else {}
        p = "/v1/{prefix}"  # endpoint ids always name the prefix (spec)
        endpoints = [f"GET {p}/namespaces", f"POST {p}/namespaces", f"GET {p}/namespaces/{{namespace}}",
                     f"HEAD {p}/namespaces/{{namespace}}", f"DELETE {p}/namespaces/{{namespace}}",
                     f"POST {p}/namespaces/{{namespace}}/properties", f"GET {p}/namespaces/{{namespace}}/tables",
                     f"POST {p}/namespaces/{{namespace}}/tables", f"GET {p}/namespaces/{{namespace}}/tables/{{table}}",
                     f"HEAD {p}/namespaces/{{namespace}}/tables/{{table}}",
                     f"POST {p}/namespaces/{{namespace}}/tables/{{table}}",
                     f"DELETE {p}/namespaces/{{namespace}}/tables/{{table}}",
                     f"POST {p}/namespaces/{{namespace}}/register", f"POST {p}/tables/rename"]
        return 200, {"defaults": {}, "overrides": overrides, "endpoints": endpoints}

    # --- namespaces ---------------------------------------------------------------
    def list_namespaces(self):
        parent = self.query.get("parent", [None])[0]
        parent_ns = ()
        if parent:
            parent_ns = tuple(parent.split(NS_SEP))
            check_ns(list(parent_ns))
        try:
            found = sorted(self.state.catalog.list_namespaces(parent_ns))
        except NoSuchNamespaceError as e:
            raise not_found("NoSuchNamespaceException", str(e)) from None
        page, token = paginate([list(ns) for ns in found], self.query)
        return 200, {"namespaces": page, "next-page-token": token}

    def create_namespace(self):
        body = self.json_body()
        ns = body.get("namespace")
        if not isinstance(ns, list):
            raise bad_request("`namespace` must be a list of strings")
        check_ns(ns)
        props = body.get("properties") or {}
        with self.state.write_lock:
            try:
                self.state.catalog.create_namespace(tuple(ns), props)
            except NamespaceAlreadyExistsError as e:
                raise HttpError(409, "AlreadyExistsException", str(e)) from None
        return 200, {"namespace": ns, "properties": self.state.catalog.load_namespace_properties(tuple(ns))}

    def get_namespace(self, ns):
        if not self.state.catalog.namespace_exists(ns):
            raise not_found("NoSuchNamespaceException", f"Namespace does not exist: {'.'.join(ns)}")
        return 200, {"namespace": list(ns), "properties": self.state.catalog.load_namespace_properties(ns)}

    def namespace_exists(self, ns):
        if not self.state.catalog.namespace_exists(ns):
            raise not_found("NoSuchNamespaceException", f"Namespace does not exist: {'.'.join(ns)}")
        return 204, None

    def drop_namespace(self, ns):
        with self.state.write_lock:
            try:
                self.state.catalog.drop_namespace(ns)
            except NoSuchNamespaceError as e:
                raise not_found("NoSuchNamespaceException", str(e)) from None
            except NamespaceNotEmptyError as e:
                raise HttpError(409, "NamespaceNotEmptyException", str(e)) from None
        return 204, None

    def update_properties(self, ns):
        body = self.json_body()
        removals = body.get("removals") or []
        updates = body.get("updates") or {}
        if set(removals) & set(updates):
            raise HttpError(422, "UnprocessableEntityException",
                            f"keys both removed and updated: {sorted(set(removals) & set(updates))}")
        with self.state.write_lock:
            try:
                summary = self.state.catalog.update_namespace_properties(ns, set(removals), updates)
            except NoSuchNamespaceError as e:
                raise not_found("NoSuchNamespaceException", str(e)) from None
        return 200, {"updated": summary.updated, "removed": summary.removed, "missing": summary.missing}

    # --- tables -------------------------------------------------------------------
    def list_tables(self, ns):
        if not self.state.catalog.namespace_exists(ns):
            raise not_found("NoSuchNamespaceException", f"Namespace does not exist: {'.'.join(ns)}")
        found = sorted(self.state.catalog.list_tables(ns))
        page, token = paginate([ident_json(t) for t in found], self.query)
        return 200, {"identifiers": page, "next-page-token": token}

    def create_table(self, ns):
        body = self.json_body()
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise bad_request("`name` is required")
        try:
            schema = Schema.model_validate(body["schema"])
            spec = body.get("partition-spec")
            if spec is not None:
                # The request carries an unbound spec: field ids are optional.
                fields = [dict(f, **{"field-id": f.get("field-id", 1000 + i)})
                          for i, f in enumerate(spec.get("fields", []))]
                spec = PartitionSpec.model_validate({"spec-id": spec.get("spec-id", 0), "fields": fields})
            order = body.get("write-order")
            order = SortOrder.model_validate(order) if order is not None else None
        except (KeyError, pydantic.ValidationError, ValueError, TypeError) as e:
            raise bad_request(f"invalid CreateTableRequest: {e}") from None
        kwargs = {"location": body.get("location"), "properties": body.get("properties") or {}}
        if spec is not None:
            kwargs["partition_spec"] = spec
        if order is not None:
            kwargs["sort_order"] = order
        ident = (*ns, name)
        cat = self.state.catalog
        if not cat.namespace_exists(ns):
            raise not_found("NoSuchNamespaceException", f"Namespace does not exist: {'.'.join(ns)}")
        if body.get("stage-create"):
            if cat.table_exists(ident):
                raise HttpError(409, "AlreadyExistsException", f"Table already exists: {ident_str(ns, name)}")
            staged = cat._create_staged_table(ident, schema, **kwargs)
            return 200, load_result(staged, with_location=False)
        with self.state.write_lock:
            try:
                table = cat.create_table(ident, schema, **kwargs)
            except TableAlreadyExistsError as e:
                raise HttpError(409, "AlreadyExistsException", str(e)) from None
            except NoSuchNamespaceError as e:
                raise not_found("NoSuchNamespaceException", str(e)) from None
        return 200, load_result(table)

    def register_table(self, ns):
        body = self.json_body()
        name, loc = body.get("name"), body.get("metadata-location")
        if not isinstance(name, str) or not isinstance(loc, str):
            raise bad_request("`name` and `metadata-location` are required")
        if body.get("overwrite"):
            raise HttpError(501, "NotImplementedException", "register with overwrite is not supported")
        with self.state.write_lock:
            try:
                table = self.state.catalog.register_table((*ns, name), loc)
            except TableAlreadyExistsError as e:
                raise HttpError(409, "AlreadyExistsException", str(e)) from None
            except NoSuchNamespaceError as e:
                raise not_found("NoSuchNamespaceException", str(e)) from None
        return 200, load_result(table)

    def _load(self, ns, name):
        try:
            return self.state.catalog.load_table((*ns, name))
        except NoSuchTableError as e:
            raise not_found("NoSuchTableException", str(e)) from None

    def load_table(self, ns, name):
        return 200, load_result(self._load(ns, name))

    def table_exists(self, ns, name):
        if not self.state.catalog.table_exists((*ns, name)):
            raise not_found("NoSuchTableException", f"Table does not exist: {ident_str(ns, name)}")
        return 204, None

    def drop_table(self, ns, name):
        purge = self.query.get("purgeRequested", ["false"])[0].lower() == "true"
        with self.state.write_lock:
            try:
                if purge:
                    self.state.catalog.purge_table((*ns, name))
                else:
                    self.state.catalog.drop_table((*ns, name))
            except NoSuchTableError as e:
                raise not_found("NoSuchTableException", str(e)) from None
        return 204, None

    def rename_table(self):
        body = self.json_body()
        src = parse_ident(body.get("source"), "source")
        dst = parse_ident(body.get("destination"), "destination")
        with self.state.write_lock:
            try:
                self.state.catalog.rename_table(src, dst)
            except NoSuchTableError as e:
                raise not_found("NoSuchTableException", str(e)) from None
            except NoSuchNamespaceError as e:
                raise not_found("NoSuchNamespaceException", str(e)) from None
            except TableAlreadyExistsError as e:
                raise HttpError(409, "AlreadyExistsException", str(e)) from None
        return 204, None

    def commit(self, ns, name):
        """POST .../tables/{table}: CommitTableRequest {identifier?, requirements, updates}."""
        st = self.state
        table = ident_str(ns, name)
        with st.mutex:
            st.commits["received"] += 1
        entry = {"table": table, "requirements": [], "updates": [], "applied": False}
        logged = []

        def log():
            # Before the answer goes out: a client that reads /_test/stats
            # right after its commit returned must find the commit's entry.
            if not logged:
                logged.append(True)
                with st.mutex:
                    st.commit_log.append(entry)

        try:
            body = self.json_body()
            if body.get("identifier") is not None and parse_ident(body["identifier"], "identifier") != (*ns, name):
                raise bad_request(f"identifier {body['identifier']!r} does not match the path's table {table}")
            try:
                requirements = tuple(REQUIREMENTS.validate_python(body.get("requirements") or []))
                updates = tuple(UPDATES.validate_python(body.get("updates") or []))
            except pydantic.ValidationError as e:
                raise bad_request(f"invalid CommitTableRequest: {e}") from None
            entry["requirements"] = [r.type for r in requirements]
            entry["updates"] = [u.action for u in updates]
            # Commits are serialised, fault decisions included: the first queued
            # fault matching this table decides. A "before" fault answers without
            # applying; an "after" fault answers once the commit has landed (a
            # commit refused on its own merits keeps the fault queued).
            with st.write_lock:
                fault = st.peek_fault("updateTable", table)
                if fault is not None and fault.status == "lose-swap":
                    # Validated and staged, then another writer commits: the
                    # swap's WHERE no longer matches and the 409 is genuine.
                    st.consume_fault(fault)
                    entry["fault"] = fault.describe()
                    st.catalog.before_swap = lambda: st.interleave((*ns, name))
                    fault = None
                if fault is not None and fault.when == "before":
                    st.consume_fault(fault)
                    entry["fault"] = fault.describe()
                    entry["status"] = fault.status
                    with st.mutex:
                        st.commits["faults_before"] += 1
                    log()
                    return self.answer_fault(fault)
                try:
                    result = self.apply_commit(ns, name, requirements, updates, entry)
                finally:
                    st.catalog.before_swap = None
                if fault is not None and entry["applied"]:
                    st.consume_fault(fault)
                    entry["fault"] = fault.describe()
                    entry["status"] = fault.status
                    with st.mutex:
                        st.commits["faults_after"] += 1
                    log()
                    return self.answer_fault(fault)
            entry["status"] = 200
            log()
            self.send(200, result)
        except HttpError as e:
            entry["status"] = e.code
            entry["error"] = e.message
            with st.mutex:
                st.commits["conflicts" if e.code == 409 else "failed"] += 1
            log()
            self.send_error_model(e)
        except Exception as e:  # a backend failure (or a bug): the outcome is unknown
            traceback.print_exc(file=sys.stderr)
            entry["status"] = 500
            entry["error"] = f"{type(e).__name__}: {e}"
            with st.mutex:
                st.commits["failed"] += 1
            log()
            self.send_error_model(HttpError(500, "CommitStateUnknownException", entry["error"]))
        finally:
            log()

    def apply_commit(self, ns, name, requirements, updates, entry):
        """Runs under the write lock."""
        st = self.state
        ident = (*ns, name)
        try:
            current = st.catalog.load_table(ident)
        except NoSuchTableError:
            current = None
        if current is None and not any(isinstance(r, AssertCreate) for r in requirements):
            raise not_found("NoSuchTableException", f"Table does not exist: {ident_str(ns, name)}")
        try:
            # Validates every requirement against the current metadata, applies
            # the updates, writes the new metadata file and swaps the pointer
            # with UPDATE ... WHERE metadata_location = <the validated one>.
            resp = st.catalog.commit_table(_Named(ident), requirements, updates)
        except CommitFailedException as e:
            raise HttpError(409, "CommitFailedException", str(e)) from None
        except TableAlreadyExistsError as e:
            raise HttpError(409, "CommitFailedException", str(e)) from None
        except (ValueError, pydantic.ValidationError) as e:
            raise bad_request(f"cannot apply the updates: {e}") from None
        changed = current is None or resp.metadata_location != current.metadata_location
        entry["applied"] = changed
        entry["metadata_location"] = resp.metadata_location
        if changed:
            with st.mutex:
                st.commits["applied"] += 1
        return load_result(resp)

    # --- test administration ------------------------------------------------------
    def admin(self, method, segs):
        st = self.state
        try:
            if segs == ["faults"] and method == "POST":
                body = self.json_body()
                specs = body.get("faults", [body]) if isinstance(body, dict) else body
                if not isinstance(specs, list):
                    raise bad_request("expected a fault, {\"faults\": [...]} or a list of faults")
                faults = [Fault(s) for s in specs]
                with st.mutex:
                    st.faults.extend(faults)
                    pending = [f.describe() for f in st.faults]
                return self.send(200, {"pending": pending})
            if segs == ["faults"] and method == "GET":
                with st.mutex:
                    return self.send(200, {"pending": [f.describe() for f in st.faults]})
            if segs == ["faults"] and method == "DELETE":
                with st.mutex:
                    st.faults.clear()
                return self.send(204)
            if segs == ["stats"] and method == "GET":
                return self.send(200, st.stats())
            if segs == ["stats"] and method == "DELETE":
                st.reset_stats()
                return self.send(204)
            raise not_found("NotFoundException", f"no such test endpoint: {method} {self.path}")
        except HttpError as e:
            self.send_error_model(e)


TABLE_OPS = {"loadTable", "tableExists", "dropTable", "updateTable"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port (printed as LISTENING <port>)")
    backend = ap.add_mutually_exclusive_group(required=True)
    backend.add_argument("--db", help="SQLite file of the SQL catalog (created if missing, WAL mode)")
    backend.add_argument("--uri", help="any SQLAlchemy URI for the SQL catalog (e.g. postgresql+psycopg2://...)")
    ap.add_argument("--warehouse", required=True, help="warehouse root for new tables (a local directory or URI)")
    ap.add_argument("--catalog-name", default="offload",
                    help="the SQL catalog's catalog_name (default offload, the `offload` program's)")
    ap.add_argument("--prefix", default="", help="serve under /v1/<prefix>/ (announced in /v1/config overrides)")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    ap.add_argument("--exit-on-stdin-eof", action="store_true",
                    help="exit when stdin closes (the parent test process died)")
    args = ap.parse_args()

    if args.db:
        con = sqlite3.connect(args.db)
        con.execute("PRAGMA journal_mode=WAL")  # readers never block the swap
        con.close()
        uri = f"sqlite:///{args.db}"
    else:
        uri = args.uri
    catalog = HookedSqlCatalog(args.catalog_name, uri=uri, warehouse=args.warehouse)
    other = SqlCatalog(args.catalog_name, uri=uri, warehouse=args.warehouse)
    Handler.state = State(catalog, other, args.prefix, args.verbose)

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.exit_on_stdin_eof:
        threading.Thread(target=lambda: (sys.stdin.buffer.read(), stop()), daemon=True).start()
    print(f"LISTENING {server.server_address[1]}", flush=True)
    server.serve_forever()
    server.server_close()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not a normal exit: the stdin watcher thread may still be blocked in read().
    os._exit(0)


if __name__ == "__main__":
    main()
