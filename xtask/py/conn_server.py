# The bench's connection-rate server: ip port. Accepts, answers one byte, waits for the
# client's reset; one connection at a time.
import socket, sys
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[1], int(sys.argv[2])))
l.listen(1024)
while True:
    c, _ = l.accept()
    try:
        c.recv(1); c.sendall(b"y"); c.recv(1)
    except OSError:
        pass
    c.close()
