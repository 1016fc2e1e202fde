# ip: prints "ready" and waits for a line on stdin (the test has the DNS answer by then:
# Python's start is not in the answer's lifetime); then opens a connection, waits past
# TTL + grace, tries a new one and uses the old one; prints what happened as JSON.
import json, socket, sys, time
ip = sys.argv[1]
print("ready", flush=True)
sys.stdin.readline()
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
