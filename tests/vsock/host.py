#!/usr/bin/env python3
"""The host's end of the vsock boot case, speaking the Unix-socket protocol
uvm's vsock device shares with Firecracker: connect to UDS and send
"CONNECT <port>\\n" to reach a guest port (answered "OK <hostport>\\n");
listen on UDS_<port> for the guest's connections to host port <port>.

  host.py send UDS PORT FILE       send FILE to the guest's PORT, print its md5
  host.py serve UDS PORT OUT       accept one guest connection on UDS_PORT,
                                   write what it sends to OUT
  host.py many UDS PORT N          N connections at once to an echo server,
                                   64 KiB each, each answer checked
  host.py refused UDS PORT         a guest port nobody listens on: EOF, no OK
  host.py stall UDS PORT           connect, send a little, then stop reading
                                   and sleep (for a SIGKILL)
  host.py hold UDS PORT            accept one guest connection on UDS_PORT and
                                   never read from it (for a SIGKILL)
"""
import hashlib
import os
import socket
import sys
import threading
import time


def wait_for(path, secs=120):
    end = time.time() + secs
    while not os.path.exists(path):
        if time.time() > end:
            sys.exit(f"host.py: {path} never appeared")
        time.sleep(0.05)


def connect(uds, port, secs=120):
    """CONNECT with retries: the guest may not be listening yet."""
    wait_for(uds)
    end = time.time() + secs
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(uds)
        s.sendall(f"CONNECT {port}\n".encode())
        line = b""
        while not line.endswith(b"\n"):
            b = s.recv(1)
            if not b:
                break
            line += b
        if line.startswith(b"OK "):
            return s, line
        s.close()
        if time.time() > end:
            sys.exit(f"host.py: CONNECT {port} never answered OK (last {line!r})")
        time.sleep(0.2)


def listen_on(uds, port):
    """The host end the guest's connections to `port` reach."""
    path = f"{uds}_{port}"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(4)
    return srv, path


def main():
    cmd, uds, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if cmd == "send":
        s, _ = connect(uds, port)
        h = hashlib.md5()
        with open(sys.argv[4], "rb") as f:
            while True:
                b = f.read(1 << 16)
                if not b:
                    break
                h.update(b)
                s.sendall(b)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
        print(h.hexdigest())
    elif cmd == "serve":
        srv, path = listen_on(uds, port)
        c, _ = srv.accept()
        h = hashlib.md5()
        n = 0
        with open(sys.argv[4], "wb") as out:
            while True:
                b = c.recv(1 << 16)
                if not b:
                    break
                h.update(b)
                out.write(b)
                n += len(b)
        c.close()
        srv.close()
        os.unlink(path)
        print(f"{h.hexdigest()} {n}")
    elif cmd == "many":
        n = int(sys.argv[4])
        ok = [False] * n

        def one(i):
            s, _ = connect(uds, port)
            data = bytes((i + k) % 251 for k in range(64 << 10))
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                b = s.recv(1 << 16)
                if not b:
                    break
                got += b
            ok[i] = got == data
            s.close()

        ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        print(f"many ok={sum(ok)} of {n}")
    elif cmd == "refused":
        wait_for(uds)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(uds)
        s.sendall(f"CONNECT {port}\n".encode())
        s.settimeout(30)
        got = s.recv(64)
        print("refused-clean" if got == b"" else f"refused-bad {got!r}")
    elif cmd == "stall":
        s, _ = connect(uds, port)
        s.sendall(b"x" * 4096)
        print("stalling", flush=True)
        time.sleep(600)
    elif cmd == "hold":
        srv, _ = listen_on(uds, port)
        c, _ = srv.accept()
        print("holding", flush=True)
        time.sleep(600)
    else:
        sys.exit(__doc__)


main()
