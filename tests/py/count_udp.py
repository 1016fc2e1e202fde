# ip seconds: receives datagrams on ip:5000 for that long; prints how many.
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], 5000)); s.settimeout(0.2)
n, end = 0, time.time() + float(sys.argv[2])
while time.time() < end:
    try:
        s.recv(100); n += 1
    except socket.timeout:
        pass
print(n)
