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
client IP PORT SPORT AGAIN TIMEOUT BULK
    connects from port SPORT, has one line echoed, reads BULK bytes more, drops the
    connection silently and
    prints "forgot"; once the file AGAIN exists connects again from SPORT (TIMEOUT
    seconds at most) and prints "refused", "timeout" or the error, or once connected
    "echoed" and how the server ended it: "reset" or "closed"
"""
import os, socket, struct, sys, time

# linux/tcp.h: a socket in repair mode closes without a word to its peer.
TCP_REPAIR = 19


def forget(s):
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    s.close()


def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.05)


def echo_line(c):
    c.sendall(c.recv(100))


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

    def connect():
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", sport))
        s.settimeout(timeout)
        s.connect((ip, port))
        return s

    s = connect()
    s.sendall(b"hello\n")
    assert s.recv(100) == b"hello\n"
    while bulk > 0:
        bulk -= len(s.recv(min(bulk, 1 << 20)))
    forget(s)
    print("forgot", flush=True)
    wait_for(again)
    try:
        s = connect()
        s.sendall(b"again\n")
        assert s.recv(100) == b"again\n"
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
