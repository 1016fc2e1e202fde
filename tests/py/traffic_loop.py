"""Every `interval` seconds for `duration` (or until the file `stop` exists): a new TCP connection to host:port (reads the
server's greeting) and, unless dns_server is "-", a DNS A query for `name`.
Prints one JSON object: connections that worked, the ones that failed (time, error),
and every DNS query (time, answered)."""
import json, os, random, socket, struct, sys, time

host, port, duration, interval, dns_server, name = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
# Optional: stop early once this file exists.
stop = sys.argv[7] if len(sys.argv) > 7 else None
# The emulated VM runs everything ~10x slower (tests/src/lib.rs `scaled`).
scale = float(os.environ.get("NETNS_TEST_TIME_SCALE", "1"))


def dns_query():
    qid = random.randrange(65536)
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2 * scale)
    try:
        s.sendto(q, (dns_server, 53))
        r, _ = s.recvfrom(512)
        return r[:2] == q[:2] and struct.unpack("!H", r[6:8])[0] > 0
    except OSError:
        return False
    finally:
        s.close()


ok, failed, dns = 0, [], []
end = time.time() + duration
while time.time() < end and not (stop and os.path.exists(stop)):
    t = time.time()
    try:
        c = socket.create_connection((host, port), timeout=3 * scale)
        c.settimeout(3 * scale)
        data = c.recv(100)
        c.close()
        if data:
            ok += 1
        else:
            failed.append([t, "closed without a greeting"])
    except OSError as e:
        failed.append([t, str(e)])
    if dns_server != "-":
        dns.append([time.time(), dns_query()])
    time.sleep(max(0.0, interval - (time.time() - t)))
print(json.dumps({"ok": ok, "failed": failed, "dns": dns}))
