"""A TCP connection that dies silently at both ends (each socket dropped in TCP_REPAIR
mode, which sends neither FIN nor RST), then a new connection from the same client port
to the same server port, where nothing listens any more: the server's kernel refuses it
with an RST, which must reach the client.

server IP PORT GO     listens (prints "ready"), accepts one connection, echoes one line,
                      then once the file GO exists drops the connection and the listener
                      silently and prints "forgot"
client IP PORT SPORT AGAIN TIMEOUT
                      connects from port SPORT, has one line echoed, drops the
                      connection silently and prints "forgot"; once the file AGAIN
                      exists connects again from SPORT (TIMEOUT seconds at most) and
                      prints "refused", "timeout", "connected" or the error
"""
import os, socket, sys, time

# linux/tcp.h: a socket in repair mode closes without a word to its peer.
TCP_REPAIR = 19


def forget(s):
    s.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    s.close()


def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.05)


mode, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "server":
    go = sys.argv[4]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((ip, port))
    listener.listen(1)
    print("ready", flush=True)
    c, _ = listener.accept()
    c.sendall(c.recv(100))
    wait_for(go)
    forget(c)
    listener.close()
    print("forgot", flush=True)
else:
    sport, again, timeout = int(sys.argv[4]), sys.argv[5], float(sys.argv[6])

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
    forget(s)
    print("forgot", flush=True)
    wait_for(again)
    try:
        connect()
        print("connected", flush=True)
    except ConnectionRefusedError:
        print("refused", flush=True)
    except socket.timeout:
        print("timeout", flush=True)
    except OSError as e:
        print(f"error {e}", flush=True)
