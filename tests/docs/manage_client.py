"""``.venv/bin/python manage.py ...`` inside a documentation example: the command is run by the
test process (whose database is the live server's, in memory for SQLite), over a unix socket.

Standard library only: it runs before anything of Strata is imported.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def main() -> int:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(os.environ["STRATA_MANAGE_SOCKET"])
        sock.sendall(json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd()}).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer = json.loads(b"".join(chunks))
    sys.stdout.write(answer["stdout"])
    sys.stderr.write(answer["stderr"])
    return int(answer["code"])


if __name__ == "__main__":
    sys.exit(main())
