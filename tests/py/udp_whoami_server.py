# ip port: answers each UDP datagram with the sender's "ip:port". Tests send it thousands
# of datagrams at once: a 4 MiB receive buffer (SO_RCVBUFFORCE = 33, as root, past
# rmem_max) keeps it from dropping any (UdpRcvbufErrors) before it reads them.
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 4 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    _, peer = s.recvfrom(100)
    s.sendto(f"{peer[0]}:{peer[1]}".encode(), peer)
