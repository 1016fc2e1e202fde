"""A TCP session where the server speaks first, after long silences: what a flow must
survive is a packet coming *in* after its entry could have gone (evicted, closed by a
forged RST), so the far end sends, not the app.

server IP PORT N GO         accepts one connection, sends a line, then each further
                            line (N in all) once the file GO exists (it is removed after
                            each); prints "ready" once listening
client IP PORT N TIMEOUT    connects, reads N lines (TIMEOUT seconds each at most);
                            prints {"received": k, "error": ...} as JSON
"""
import json, os, socket, sys, time

mode, ip, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if mode == "server":
    go = sys.argv[5]
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    s.listen(1)
    print("ready", flush=True)
    c, _ = s.accept()
    for i in range(n):
        if i:
            while not os.path.exists(go):
                time.sleep(0.1)
            os.remove(go)
        c.sendall(b"line %d\n" % i)
    time.sleep(1)
    c.close()
else:
    received, error = 0, None
    try:
        s = socket.create_connection((ip, port), timeout=float(sys.argv[5]))
        s.settimeout(float(sys.argv[5]))
        f = s.makefile("rb")
        while received < n:
            line = f.readline()
            if line != b"line %d\n" % received:
                error = f"got {line!r}"
                break
            received += 1
    except OSError as e:
        error = str(e)
    print(json.dumps({"received": received, "error": error}))
