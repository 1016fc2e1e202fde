# ip port seconds: prints "ready" once bound, then counts datagrams on ip:port for that
# long; prints how many.
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2]))); s.settimeout(0.2)
print("ready", flush=True)
n, end = 0, time.time() + float(sys.argv[3])
while time.time() < end:
    try:
        s.recv(100); n += 1
    except socket.timeout:
        pass
print(n)
