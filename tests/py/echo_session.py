"""One TCP connection to an echo server held for `duration` seconds (or until the file
`stop` exists): a line every `interval` seconds, each read back. Prints one JSON object:
lines sent, lines echoed intact, and the error that ended the session early (null if
none)."""
import json, os, socket, sys, time

host, port, duration, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
# Optional: stop early once this file exists.
stop = sys.argv[5] if len(sys.argv) > 5 else None
# The emulated VM runs everything ~10x slower (tests/src/lib.rs `scaled`).
timeout = 3 * float(os.environ.get("NETNS_TEST_TIME_SCALE", "1"))
sent, echoed, error = 0, 0, None
try:
    s = socket.create_connection((host, port), timeout=timeout)
    s.settimeout(timeout)
    f = s.makefile("rb")
    end = time.time() + duration
    while time.time() < end and not (stop and os.path.exists(stop)):
        line = f"line {sent}\n".encode()
        s.sendall(line)
        sent += 1
        if f.readline() == line:
            echoed += 1
        else:
            error = "a line came back wrong"
            break
        time.sleep(interval)
except OSError as e:
    error = str(e)
print(json.dumps({"sent": sent, "echoed": echoed, "error": error}))
