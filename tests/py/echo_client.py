# ip port bytes dev: exit 0 and prints the byte count when the data came back identical,
# 2 on connect timeout, 3 when refused, 1 otherwise. A non-empty dev binds the socket to
# that interface.
import os, socket, sys, threading
ip, port, n, dev = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
# The emulated VM runs everything ~10x slower (tests/src/lib.rs `scaled`): the transfer's
# timeout stretches with it (the connect's does not: a refused flow is told by it).
scale = float(os.environ.get("NETNS_TEST_TIME_SCALE", "1"))
payload = os.urandom(n)
s = socket.socket()
if dev:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
s.settimeout(3)
try:
    s.connect((ip, port))
except socket.timeout:
    sys.exit(2)
except ConnectionRefusedError:
    sys.exit(3)
s.settimeout(10 * scale)
# Read while sending: the server echoes as it receives, so a client that sent all
# before reading would wait on its own unread echo once the data outgrew the two
# sides' socket buffers (autotuned, so only sometimes: it deadlocked under the VM).
got = bytearray()
def read_echo():
    try:
        while d := s.recv(65536):
            got.extend(d)
    except OSError as e:
        print(f"reading the echo: {e}", file=sys.stderr)
reader = threading.Thread(target=read_echo)
reader.start()
try:
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
finally:
    reader.join()
if bytes(got) != payload:
    print(f"echo mismatch: sent {n} got {len(got)}", file=sys.stderr)
    sys.exit(1)
print(len(got))
