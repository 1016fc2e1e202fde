"""A TCP connection that the client drops silently (in TCP_REPAIR mode a socket closes
without a word to its peer: no FIN, no RST), then a new connection from the same client
port to the same server port: what the data path must let the two ends settle.

server IP PORT GO MODE BULK
    listens (prints "ready"), accepts one connection, echoes one line and sends BULK
    bytes more; once the file GO exists (the client has dropped its end):
      refuse  drops its end silently too, and the listener: the new SYN is refused
      take    drops its end silently too and accepts the new connection, echoes one
              line and, after the client's next, resets it (SO_LINGER 0)
      keep    keeps its end (the new SYN meets it: a challenge ACK, the client's RST)
              and accepts the new connection, echoes one line and, after the
              client's next, closes it
    prints "done"
client IP PORT SPORT AGAIN TIMEOUT BULK [half|whole]
    connects from port SPORT, has one line echoed, reads BULK bytes more (with "half":
    closes its sending side, a FIN the server acknowledges), drops the
    connection silently and
    prints "forgot"; once the file AGAIN exists connects again from SPORT (TIMEOUT
    seconds at most) and prints "refused", "timeout" or the error, or once connected
    "echoed" and how the server ended it: "reset" or "closed"
"""
import os, socket, struct, sys, time

# linux/tcp.h: a socket in repair mode closes without a word to its peer.
TCP_REPAIR = 19
# A wait that never ends (an accept, a read) fails the script instead of hanging the test.
socket.setdefaulttimeout(60)


def forget(s):
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    s.close()


def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.05)


def echo_line(c):
    c.sendall(c.recv(100))


def read_exactly(s, n):
    """n bytes from s (a read may return less, or, unbounded, run into the bulk)."""
    data = b""
    while len(data) < n:
        part = s.recv(min(n - len(data), 1 << 20))
        if not part:
            raise EOFError(f"closed after {len(data)} of {n} bytes")
        data += part
    return data


mode, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "server":
    go, how, bulk = sys.argv[4], sys.argv[5], int(sys.argv[6])
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((ip, port))
    listener.listen(1)
    print("ready", flush=True)
    old, _ = listener.accept()
    echo_line(old)
    old.sendall(bytes(bulk))
    wait_for(go)
    if how == "refuse":
        forget(old)
        listener.close()
    else:
        if how == "take":
            forget(old)
        new, _ = listener.accept()
        echo_line(new)
        new.recv(100)  # the client's last line: it reads whatever ends the connection
        if how == "take":
            new.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        new.close()
    print("done", flush=True)
else:
    sport, again, timeout, bulk = int(sys.argv[4]), sys.argv[5], float(sys.argv[6]), int(sys.argv[7])
    half = sys.argv[8:] == ["half"]

    def connect():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", sport))
        s.settimeout(timeout)
        s.connect((ip, port))
        return s

    s = connect()
    s.sendall(b"hello\n")
    assert read_exactly(s, 6) == b"hello\n"
    while bulk > 0:
        bulk -= len(read_exactly(s, min(bulk, 1 << 20)))
    if half:
        s.shutdown(socket.SHUT_WR)
        # (The server's ACK of the FIN: a round trip, here or in an emulated VM.)
        time.sleep(0.3 * float(os.environ.get("NETNS_TEST_TIME_SCALE", "1")))
    forget(s)
    print("forgot", flush=True)
    wait_for(again)
    # Half a second on: Linux numbers a tuple's connections by the clock (a step per
    # 64 ns), so the new SYN's number lies some 8M past the old connection's end, far out
    # of the RST window the data path measures the old connection's RSTs by.
    time.sleep(0.5)
    try:
        s = connect()
        s.sendall(b"again\n")
        assert read_exactly(s, 6) == b"again\n"
        s.sendall(b"bye\n")
        try:
            end = "closed" if s.recv(100) == b"" else "more data"
        except ConnectionResetError:
            end = "reset"
        print(f"echoed {end}", flush=True)
    except ConnectionRefusedError:
        print("refused", flush=True)
    except socket.timeout:
        print("timeout", flush=True)
    except OSError as e:
        print(f"error {e}", flush=True)
