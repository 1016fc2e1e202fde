# ip port: connects to a whoami server and prints what it says the connection came from.
import socket,sys
s=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.settimeout(5)
print(s.recv(100).decode().strip())
