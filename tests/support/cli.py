"""What the CLI's tests share: a valid spec file's text, spec files that cannot be read,
the one-line answer every refusal must be, and local HTTP servers that misbehave."""

from __future__ import annotations

import json
import os
import time

VALID_YAML = """\
name: t
dataset: {name: digits}
model: {name: cnn}
search:
  rho: [0.0, 0.05]
  batch_size: [16]
  base_optimizer: [sgd]
train: {epochs: 1, lr: 0.05}
"""


def write(text: str | bytes):
    def make(path):
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    return make


def mkdir(path):
    path.mkdir()
    return path


STUDY_ID = "0" * 32


def one_line(answer: tuple[int, str], code: int) -> str:
    returned, err = answer
    assert returned == code, (returned, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("samsweep: "), err[-2000:]
    assert len(lines) <= 2, err[-2000:]  # the reason, and at most the offending line
    assert "\x1b" not in err and "\x07" not in err  # no control code from a server
    return err


def deep_json(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


def alias_bomb() -> str:
    lines, previous = ['a: &a ["x","x","x","x","x","x","x","x","x"]'], "a"
    for name in "bcdefghi":
        lines.append(f"{name}: &{name} [{','.join(['*' + previous] * 9)}]")
        previous = name
    return "\n".join([*lines, "name: *i"]) + "\n"


def fifo(path):
    os.mkfifo(path)
    return path


MALFORMED = [
    ("deep JSON", "spec.json", write(deep_json(5000)), "spec.json:1:"),
    ("deep YAML flow", "spec.yaml", write("[" * 5000 + "]" * 5000), "spec.yaml:1:"),
    ("deep YAML block", "spec.yaml", write("".join(" " * i + "k:\n" for i in range(800))), ":33:"),
    ("deep JSON in YAML", "spec.yaml", write(deep_json(5000)), "spec.yaml:1:"),
    ("alias bomb", "spec.yaml", write(alias_bomb()), "aliases are expanded"),
    ("binary", "spec.yaml", write(bytes(range(256)) * 4), "not UTF-8"),
    ("huge", "spec.yaml", write("# " + "x" * 2_000_000 + "\n"), "larger than"),
    ("not UTF-8", "spec.json", write(b'{"name": "\xe9"}'), "not UTF-8"),
    ("top-level list", "spec.json", write("[1, 2]"), "valid dictionary"),
    ("top-level string", "spec.yaml", write("just text\n"), "valid dictionary"),
    ("a directory", "spec.yaml", mkdir, "is a directory"),
    ("a FIFO", "spec.yaml", fifo, "not a regular file"),
    ("missing", "spec.yaml", lambda p: p, "no such file"),
]


THROUGH_THE_ENTRY_POINT = {"deep JSON", "deep YAML flow", "alias bomb", "a FIFO"}


class Misbehaving:
    """A local HTTP server that answers every request the same wrong way."""

    def __init__(self, how: str) -> None:
        import http.server
        import threading

        self.how = how
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(length)
                outer.answer(self)

            do_GET = do_POST = _answer

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, *args) -> None:  # a client that hung up: expected, quiet
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def send(h, status: int, body: bytes, kind: str, **headers: str) -> None:
        h.send_response(status)
        h.send_header("content-type", kind)
        h.send_header("content-length", headers.pop("length", str(len(body))))
        for k, v in headers.items():
            h.send_header(k.replace("_", "-"), v)
        h.end_headers()
        h.wfile.write(body)

    def answer(self, h) -> None:
        html = b"<html><body><h1>502 Bad Gateway</h1>\n<p>nginx</p></body></html>\n"
        if self.how == "html 200":
            self.send(h, 200, html, "text/html")
        elif self.how == "html 500":
            self.send(h, 500, html, "text/html")
        elif self.how == "garbage JSON":
            body = b'{"items": 5, "total": "many", "id": [], "trials": {}}'
            self.send(h, 200, body, "application/json")
        elif self.how == "JSON list":
            self.send(h, 200, b"[1, 2, 3]", "application/json")
        elif self.how == "truncated JSON":
            self.send(h, 200, b'{"items": [', "application/json")
        elif self.how == "500 with escapes":
            error = {"code": "x\x1b[31m", "message": "a\nb\x1b]0;pwned\x07"}
            self.send(h, 500, json.dumps({"error": error}).encode(), "application/json")
        elif self.how == "huge declared":
            self.send(h, 200, b"{", "application/json", length=str(10 * 2**30))
        elif self.how == "huge streamed":
            h.send_response(200)
            h.send_header("content-type", "application/json")
            h.send_header("transfer-encoding", "chunked")
            h.end_headers()
            chunk = b"[" * 2**20
            try:
                for _ in range(400):  # 400 MiB, more than the client reads
                    h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:
                pass  # the client hung up: what it should do
        elif self.how == "bad gzip":
            body = b"not gzip at all"
            self.send(h, 200, body, "application/json", content_encoding="gzip")
        elif self.how == "not HTTP":
            h.wfile.write(b"SSH-2.0-OpenSSH_9.2\r\n")
            h.close_connection = True
        elif self.how == "silent":
            time.sleep(10)  # never answers within the client's timeout

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


MISBEHAVIOURS = [
    "html 200",
    "html 500",
    "garbage JSON",
    "JSON list",
    "truncated JSON",
    "500 with escapes",
    "huge declared",
    "huge streamed",
    "bad gzip",
    "not HTTP",
    "silent",
]


COMMANDS = [["studies"], ["status"], ["report"], ["best"], ["trials"], ["export"], ["cancel"]]


def args_for(command: list[str], spec_file, url: str) -> list[str]:
    if command[0] in ("submit", "run"):
        extra = [str(spec_file)]
    elif command[0] == "studies":
        extra = []
    else:
        extra = [STUDY_ID]
    return [*command, *extra, "--server", url, "--timeout", "0.5"]


def in_process(capsys, *args: str) -> tuple[int, str]:
    """Run the CLI's `main` in this process: (exit code, what it wrote to stderr)."""
    from samsweep.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err
