#!/usr/bin/env python3
"""A small ClickHouse HTTP interface in front of chdb (embedded ClickHouse).

Test fixture only: it gives the Rust tests a real ClickHouse engine without a
server install. It implements the part of the HTTP protocol that the Rust
`clickhouse` crate (0.15.x) and curl-style usage need; see README.md for the
list of what is and is not implemented.

    python server.py --host 127.0.0.1 --port 0 --data /tmp/chdata
    -> prints "LISTENING <port>" on stdout once it accepts connections.

    ... --tls-port 0 --tls-cert server.pem --tls-key server.key
    -> also serves HTTPS on a second port, printed as "LISTENING_TLS <port>"
       (same engine and sessions; the plain port stays for test setup).
"""
import argparse
import json
import re
import secrets
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import uuid
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import chdb.session
import lz4.block
import lz4.frame
import zstandard

# URL parameters that are protocol controls, not ClickHouse settings.
NOT_SETTINGS = {"query", "database", "default_format", "decompress", "compress", "user",
                "password", "quota_key", "query_id", "session_id", "session_timeout",
                "session_check", "wait_end_of_query", "buffer_size", "role", "stacktrace"}

# chdb's streaming API (send_query) returns every chunk as a *complete* output
# of the format: headers repeat and ArrowStream chunks each carry schema + EOS.
# Formats listed here are stitched back into one valid stream; all others are
# executed with the buffered query() call. Value: header kind (None = none).
STREAMABLE = {f: None for f in (
    "RowBinary", "Native", "TSV", "TabSeparated", "TSVRaw", "TabSeparatedRaw", "CSV",
    "JSONEachRow", "JSONLines", "NDJSON", "JSONCompactEachRow", "JSONStringsEachRow",
    "LineAsString")}
STREAMABLE.update({"RowBinaryWithNames": "rb1", "RowBinaryWithNamesAndTypes": "rb2",
                   "TSVWithNames": 1, "TabSeparatedWithNames": 1, "CSVWithNames": 1,
                   "TSVWithNamesAndTypes": 2, "TabSeparatedWithNamesAndTypes": 2,
                   "CSVWithNamesAndTypes": 2, "JSONCompactEachRowWithNames": 1,
                   "JSONCompactEachRowWithNamesAndTypes": 2, "ArrowStream": "arrow"})
STREAMABLE = {k.lower(): v for k, v in STREAMABLE.items()}  # format names are matched case-insensitively
ARROW_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+([A-Za-z0-9_]+)", re.I)
# INSERT in the URL whose data is the whole body ...
INSERT_URL = re.compile(r"^\s*(INSERT\s.*?)(?:\bFORMAT\s+([A-Za-z0-9_]+)|\bVALUES)\s*$", re.I | re.S)
# ... or INSERT ... FORMAT X with the data following on the next line (may be binary).
INSERT_INLINE = re.compile(rb"^\s*(INSERT\s.*?)\bFORMAT\s+([A-Za-z0-9_]+)[ \t]*(?:\r?\n|$)", re.I | re.S)


class CHError(Exception):
    """An error reported to the client as 'Code: N. DB::Exception: ...'."""

    def __init__(self, code, text):
        super().__init__(text)
        self.code, self.text = code, text

    @classmethod
    def new(cls, code, name, text):
        return cls(code, f"Code: {code}. DB::Exception: {text}. ({name})")


def as_ch_error(exc):
    """chdb raises with text like '[Streaming query failed: ]Code: 60. DB::Exception: ...'."""
    if isinstance(exc, CHError):
        return exc
    msg = str(exc)
    m = re.search(r"Code: (\d+)\.", msg)
    if m:
        return CHError(int(m.group(1)), msg[m.start():])
    return CHError.new(1001, "STD_EXCEPTION", f"{type(exc).__name__}: {msg}")


def sql_string(v):
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def read_varint(data, pos):
    value = shift = 0
    while True:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, pos


def header_len(kind, data):
    """Length of the per-chunk header that chdb repeats at the start of every chunk."""
    if kind == "arrow":  # schema message: 0xFFFFFFFF, int32 metadata length, metadata
        cont, meta = struct.unpack_from("<Ii", data, 0)
        if cont != 0xFFFFFFFF:
            raise CHError.new(1001, "STD_EXCEPTION", "front: unexpected ArrowStream framing")
        return 8 + meta
    if kind in ("rb1", "rb2"):  # varint N, then N names (and N types) as varint-prefixed strings
        columns, pos = read_varint(data, 0)
        for _ in range(columns * (2 if kind == "rb2" else 1)):
            size, pos = read_varint(data, pos)
            pos += size
        return pos
    pos = 0  # text formats: one or two header lines
    for _ in range(kind):
        pos = data.index(b"\n", pos) + 1
    return pos


class Encoder:
    """HTTP response compression (Accept-Encoding), flushed at every write so the
    client sees data as soon as chdb produces it."""

    def __init__(self, name):
        self.name = name
        if name == "lz4":
            self.c = lz4.frame.LZ4FrameCompressor(auto_flush=True)
            self.pending = self.c.begin()
        elif name == "zstd":
            self.c = zstandard.ZstdCompressor().compressobj()
            self.pending = b""
        else:
            self.c = zlib.compressobj(wbits=31 if name == "gzip" else 15)
            self.pending = b""

    def write(self, data):
        head, self.pending = self.pending, b""
        if self.name == "lz4":
            return head + self.c.compress(data)
        if self.name == "zstd":
            return head + self.c.compress(data) + self.c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return head + self.c.compress(data) + self.c.flush(zlib.Z_SYNC_FLUSH)

    def finish(self):
        return self.pending + self.c.flush()


def pick_encoding(accept, settings):
    if settings.get("enable_http_compression", "1") in ("0", "false"):
        return None  # ClickHouse >= 25.10 defaults enable_http_compression to 1
    for item in accept.split(","):
        name = item.split(";")[0].strip().lower()
        if name in ("lz4", "zstd", "gzip", "deflate"):
            return name
    return None


def decompress_blocks(pieces):
    """decompress=1 request bodies: ClickHouse native compressed blocks.
    16-byte CityHash128 checksum (not verified), method byte, u32 compressed size
    (incl. the 9-byte header), u32 raw size, payload."""
    buf = bytearray()
    for piece in pieces:
        buf += piece
        while len(buf) >= 25:
            method = buf[16]
            csize, rsize = struct.unpack_from("<II", buf, 17)
            if len(buf) < 16 + csize:
                break
            payload = bytes(buf[25:16 + csize])
            del buf[:16 + csize]
            if method == 0x82:
                yield lz4.block.decompress(payload, uncompressed_size=rsize)
            elif method == 0x90:
                yield zstandard.ZstdDecompressor().decompress(payload, max_output_size=rsize)
            elif method == 0x02:
                yield payload
            else:
                raise CHError.new(89, "UNKNOWN_COMPRESSION_METHOD", f"Unknown compression method {method:#x}")
    if buf:
        raise CHError.new(271, "CANNOT_DECOMPRESS", "Truncated compressed block")


def parse_multipart(body, content_type):
    """The crate's .param() sends the query and param_* as multipart/form-data."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise CHError.new(36, "BAD_ARGUMENTS", "multipart body without boundary")
    fields = []
    for part in body.split(b"--" + m.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, value = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if not name or b"filename=" in head:
            raise CHError.new(48, "NOT_IMPLEMENTED", "front: only plain form fields, no external tables")
        fields.append((name.group(1).decode(), value.removesuffix(b"\r\n").decode()))
    return fields


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response has Content-Length or is chunked
    server_version = "chdb-front"

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes; without NODELAY the
        # client's delayed ACK adds ~40 ms to every small response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, fmt, *args):
        if self.server.verbose:
            super().log_message(fmt, *args)

    # --- request body ---------------------------------------------------
    def body_pieces(self):
        """Yield the raw request body (Content-Length or chunked; the crate's INSERT is chunked)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                yield from self.read_exact(size)
                self.rfile.readline(1024)
        else:
            yield from self.read_exact(int(self.headers.get("Content-Length") or 0))
        self.body_done = True

    def read_exact(self, n):
        while n:
            piece = self.rfile.read(min(n, 1 << 20))
            if not piece:
                raise ConnectionError("client closed the connection mid-body")
            n -= len(piece)
            yield piece

    # --- responses --------------------------------------------------------
    def send_head(self, status, extra):
        self.send_response(status)
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()

    def reply(self, status, body, extra=None, encoding=None):
        extra = dict(extra or {})
        if encoding:
            enc = Encoder(encoding)
            body = enc.write(body) + enc.finish()
            extra["Content-Encoding"] = encoding
        extra["Content-Length"] = str(len(body))
        self.send_head(status, extra)
        if self.command != "HEAD":
            self.wfile.write(body)

    def reply_error(self, err):
        sys.stderr.write(f"chdb-front: {self.command} -> {err.text}\n")
        for _ in self.body:  # drain the rest of the body so the connection stays usable
            pass
        self.reply(500, (err.text.rstrip("\n") + "\n").encode(),
                   {"Content-Type": "text/plain; charset=UTF-8",
                    "X-ClickHouse-Exception-Code": str(err.code)})

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = urlsplit(self.path).path
        if path in ("/ping", "/replicas_status") or (path == "/" and "query=" not in self.path) \
                or self.command == "HEAD":
            return self.reply(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
        self.do_POST()

    def do_POST(self):
        # One generator per request: draining after an error resumes where parsing stopped.
        self.body, self.body_done = self.body_pieces(), False
        url = urlsplit(self.path)
        if url.path != "/":
            return self.reply(404, b"There is no handle " + url.path.encode() + b"\n")
        params = parse_qsl(url.query, keep_blank_values=True)
        try:
            ctype = self.headers.get("Content-Type", "")
            if ctype.startswith("multipart/form-data"):
                params += parse_multipart(b"".join(self.body), ctype)
            self.execute(dict(params))
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True
        except Exception as exc:  # noqa: BLE001 - every failure becomes a ClickHouse-style error
            self.reply_error(as_ch_error(exc))

    def execute(self, p):
        if p.get("compress") == "1":
            raise CHError.new(48, "NOT_IMPLEMENTED", "front: compress=1 is not implemented, use Accept-Encoding")
        qparams = {k[6:]: v for k, v in p.items() if k.startswith("param_")}
        settings = {k: v for k, v in p.items() if k not in NOT_SETTINGS and not k.startswith("param_")}
        pieces = self.body
        if p.get("decompress") == "1":
            pieces = decompress_blocks(pieces)
        fmt = p.get("default_format", "TabSeparated")
        common = {"X-ClickHouse-Query-Id": p.get("query_id") or str(uuid.uuid4()),
                  "X-ClickHouse-Timezone": self.server.timezone}
        encoding = pick_encoding(self.headers.get("Accept-Encoding", ""), settings)

        with self.server.session(p.get("session_id")) as s:
            if "database" in p:
                s.query("USE `" + p["database"].replace("\\", "\\\\").replace("`", "\\`") + "`")
            for k, v in settings.items():  # a fresh session per request, so SET does not leak
                s.query(f"SET {k} = {sql_string(v)}")

            query = p.get("query", "")
            m = INSERT_URL.match(query) if query and not self.body_done else None
            if m:  # INSERT in the URL, data in the body: stream it straight into chdb
                return self.insert(s, m.group(1), m.group(2) or "Values", pieces, common)
            body = b"".join(pieces)
            raw = query.encode() + b"\n" + body if query and body else query.encode() or body
            m = INSERT_INLINE.match(raw)
            if m:  # the data after FORMAT may be binary: never decode it as SQL
                return self.insert(s, m.group(1).decode(), m.group(2).decode(), [raw[m.end():]], common)
            sql = raw.decode()
            if not sql.strip():
                raise CHError.new(62, "SYNTAX_ERROR", "Empty query")
            explicit = FORMAT_CLAUSE.findall(sql)
            fmt = explicit[-1] if explicit else fmt
            common["X-ClickHouse-Format"] = fmt
            if fmt.lower() in STREAMABLE:
                try:
                    return self.stream(s, sql, fmt, qparams, common, encoding)
                except _NotStreamable:
                    pass
            t0 = time.monotonic()
            r = s.query(sql, fmt, params=qparams)
            info = summary(t0, read_rows=r.storage_rows_read(), read_bytes=r.storage_bytes_read(),
                           written_rows=r.rows_written(), written_bytes=r.bytes_written(),
                           result_rows=r.rows_read(), result_bytes=r.bytes_read())
            self.reply(200, r.bytes(), {**common, "X-ClickHouse-Summary": info}, encoding)

    def insert(self, s, prefix, fmt, pieces, common):
        t0 = time.monotonic()
        ins = s.send_insert(prefix, fmt)
        try:
            for block in pieces:
                if block:
                    ins.append(block)
            r = ins.finish()
        except BaseException:
            ins.cancel()
            raise
        self.reply(200, b"", {**common, "X-ClickHouse-Summary": summary(
            t0, written_rows=r.rows_written, written_bytes=r.bytes_written)})

    def stream(self, s, sql, fmt, qparams, common, encoding):
        """Chunked response fed from chdb's streaming cursor, one chunk at a time."""
        try:
            st = s.send_query(sql, fmt, params=qparams)
        except Exception as exc:
            if "Streaming query is not supported" in str(exc):  # DDL, INSERT SELECT, SHOW, ...
                raise _NotStreamable() from exc
            raise
        kind = STREAMABLE[fmt.lower()]
        try:
            chunks = (c.bytes() for c in st)
            chunk = next(chunks, None)  # errors before the first chunk become a plain 500
            if chunk is None:
                if kind is not None:  # an empty result still needs its header: rerun buffered
                    raise _NotStreamable()
                return self.reply(200, b"", common, encoding)
            tag = secrets.token_hex(8)
            extra = {**common, "X-ClickHouse-Exception-Tag": tag}
            # HTTP/1.0 clients (testkit's query()) get the raw stream ended by closing the connection.
            self.chunked = self.request_version == "HTTP/1.1"
            if self.chunked:
                extra["Transfer-Encoding"] = "chunked"
            else:
                self.close_connection = True
            if encoding:
                extra["Content-Encoding"] = encoding
            self.send_head(200, extra)
            enc = Encoder(encoding) if encoding else None
            header = chunk[:header_len(kind, chunk)] if kind is not None else b""
            try:
                data = chunk  # the first chunk keeps its header
                while True:
                    if kind == "arrow":
                        if not data.endswith(ARROW_EOS):
                            raise CHError.new(1001, "STD_EXCEPTION", "front: ArrowStream chunk without EOS")
                        data = data[:-len(ARROW_EOS)]
                    self.write_chunk(enc.write(data) if enc else data)
                    chunk = next(chunks, None)
                    if chunk is None:
                        break
                    if not chunk.startswith(header):
                        raise CHError.new(1001, "STD_EXCEPTION", "front: chunk header mismatch")
                    data = chunk[len(header):]
                if kind == "arrow":
                    self.write_chunk(enc.write(ARROW_EOS) if enc else ARROW_EOS)
            except (ConnectionError, BrokenPipeError):
                raise
            except Exception as exc:  # noqa: BLE001 - mid-stream: ClickHouse 25.11+ tagged exception block
                err = as_ch_error(exc)
                sys.stderr.write(f"chdb-front: mid-stream error: {err.text}\n")
                msg = (err.text.rstrip("\n") + "\n").encode()
                t = tag.encode()
                block = (b"\r\n__exception__\r\n" + t + b"\r\n" + msg + str(len(msg)).encode()
                         + b" " + t + b"\r\n__exception__\r\n")
                self.write_chunk(enc.write(block) if enc else block)
            if enc:
                self.write_chunk(enc.finish())
            if self.chunked:
                self.wfile.write(b"0\r\n\r\n")
        finally:
            st.cancel()

    def write_chunk(self, data):
        if data and self.chunked:
            self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        elif data:
            self.wfile.write(data)


class _NotStreamable(Exception):
    pass


def summary(t0, **counters):
    """X-ClickHouse-Summary: a JSON object whose values are all strings, as ClickHouse sends it."""
    counters["elapsed_ns"] = int((time.monotonic() - t0) * 1e9)
    return json.dumps({k: str(v) for k, v in counters.items()}, separators=(",", ":"))


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, addr, data, verbose):
        super().__init__(addr, Handler)
        self.data, self.verbose = data, verbose
        # chdb allows one database path per process; this session keeps the
        # embedded engine alive while request sessions come and go.
        self.anchor = chdb.session.Session(data)
        self.timezone = self.anchor.query("SELECT timezone()", "TSVRaw").bytes().decode().strip()
        self.named, self.named_lock = {}, threading.Lock()

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients dropping pooled connections
            super().handle_error(request, client_address)

    def server_close(self):
        super().server_close()
        for s, _ in self.named.values():  # explicit close: a clean chdb shutdown, no atexit noise
            s.close()
        self.anchor.close()

    def session(self, session_id):
        return _NamedSession(self, session_id) if session_id else _FreshSession(self.data)


class TlsListener(ThreadingHTTPServer):
    """The HTTPS port: a second listener over the same Server (engine, sessions).

    The TLS handshake runs in the request's own thread (not in accept), so a
    client that fails verification or never speaks cannot stall the listener.
    """
    daemon_threads = True

    def __init__(self, addr, main, cert, key):
        super().__init__(addr, Handler)
        self.main = main
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)

    def __getattr__(self, name):  # data, verbose, timezone, session(), ...: the main server's
        if name == "main":  # not set yet (during __init__)
            raise AttributeError(name)
        return getattr(self.main, name)

    def finish_request(self, request, client_address):
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:  # e.g. the client refused our certificate
            if self.main.verbose:
                print(f"TLS handshake with {client_address} failed: {e}", file=sys.stderr, flush=True)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            super().handle_error(request, client_address)


class _FreshSession:
    """One chdb Session per request (~1 ms): SET/USE never leak between requests,
    and requests run concurrently (each Session runs one query at a time)."""

    def __init__(self, data):
        self.data = data

    def __enter__(self):
        self.s = chdb.session.Session(self.data)
        return self.s

    def __exit__(self, *exc):
        self.s.close()


class _NamedSession:
    """session_id=...: a long-lived chdb Session; requests on it are serialized."""

    def __init__(self, server, sid):
        with server.named_lock:
            if sid not in server.named:
                server.named[sid] = (chdb.session.Session(server.data), threading.Lock())
            self.s, self.lock = server.named[sid]

    def __enter__(self):
        self.lock.acquire()
        return self.s

    def __exit__(self, *exc):
        self.lock.release()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--data", required=True, help="chdb database directory")
    ap.add_argument("--verbose", action="store_true", help="log every request to stderr")
    ap.add_argument("--exit-on-stdin-eof", action="store_true",
                    help="exit when stdin closes (the parent test process died)")
    ap.add_argument("--tls-port", type=int, help="also serve HTTPS on this port (0 picks a free one)")
    ap.add_argument("--tls-cert", help="PEM certificate (chain) for --tls-port")
    ap.add_argument("--tls-key", help="PEM private key for --tls-port")
    args = ap.parse_args()
    if (args.tls_port is None) != (args.tls_cert is None) or (args.tls_cert is None) != (args.tls_key is None):
        ap.error("--tls-port, --tls-cert and --tls-key go together")

    server = Server((args.host, args.port), args.data, args.verbose)
    listeners = [server]
    if args.tls_port is not None:
        tls = TlsListener((args.host, args.tls_port), server, args.tls_cert, args.tls_key)
        listeners.append(tls)
        threading.Thread(target=tls.serve_forever, daemon=True).start()

    def shutdown():
        for s in listeners:
            s.shutdown()

    stop = lambda *_: threading.Thread(target=shutdown, daemon=True).start()  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.exit_on_stdin_eof:
        threading.Thread(target=lambda: (sys.stdin.buffer.read(), stop()), daemon=True).start()
    print(f"LISTENING {server.server_address[1]}", flush=True)
    if args.tls_port is not None:
        print(f"LISTENING_TLS {listeners[1].server_address[1]}", flush=True)
    server.serve_forever()
    for s in reversed(listeners):
        s.server_close()


if __name__ == "__main__":
    main()
