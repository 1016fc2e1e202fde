# The bench's connection-rate client: ip port seconds. Opens connections one after the
# other: connect, one byte each way, reset (no TIME_WAIT to run out of ports); prints
# connections per second.
import socket, struct, sys, time
ip, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
linger, n = struct.pack("ii", 1, 0), 0
start = time.time()
while time.time() < start + secs:
    s = socket.create_connection((ip, port), timeout=3)
    s.sendall(b"x")
    if s.recv(1) != b"y":
        sys.exit("no answer")
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.close()
    n += 1
print(n / (time.time() - start))
