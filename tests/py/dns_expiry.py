# ip: opens a connection, waits past TTL + grace, then tries a new one and uses the old
# one; prints what happened as JSON.
import json, socket, sys, time
ip = sys.argv[1]
old = socket.create_connection((ip, 7), timeout=2)
old.sendall(b"before"); first = old.recv(100).decode()
time.sleep(3.5)
try:
    socket.create_connection((ip, 7), timeout=2); new = "connected"
except OSError:
    new = "blocked"
old.settimeout(3)
old.sendall(b"after"); later = old.recv(100).decode()
print(json.dumps({"first": first, "new": new, "later": later}))
