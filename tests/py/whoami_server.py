# ip port: answers each TCP connection with the peer's "ip:port" and closes it.
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((ip, port)); srv.listen(64)
while True:
    c, peer = srv.accept()
    with c:
        c.sendall(f"{peer[0]}:{peer[1]}\n".encode())
