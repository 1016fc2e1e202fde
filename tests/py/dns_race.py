# gateway: 200 rounds of: resolve a fresh name, connect at once. Prints the failures.
import random, socket, struct, sys
gw, failures = sys.argv[1], 0
for n in range(200):
    name = "r%d.race.github.com" % n
    qid = random.randrange(65536)
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00" + struct.pack("!HH", 1, 1)
    d = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); d.settimeout(3)
    d.sendto(q, (gw, 53))
    r = d.recv(512)
    ip = socket.inet_ntoa(r[-4:])
    try:
        c = socket.create_connection((ip, 80), timeout=2)
        c.recv(100)
        c.close()
    except OSError:
        failures += 1
print(failures)
