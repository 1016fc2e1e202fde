# server name: a DNS A query over UDP; prints the answer addresses (nothing for
# NXDOMAIN/empty), exits 1 on timeout or a non-answer.
import random, socket, struct, sys
server, name = sys.argv[1], sys.argv[2]
qid = random.randrange(65536)
q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0" + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)
s.sendto(q, (server, 53))
r, _ = s.recvfrom(4096)
rid, flags, qd, an = struct.unpack("!HHHH", r[:8])
if rid != qid or not flags & 0x8000:
    sys.exit(1)
def skip_name(b, i):
    while True:
        if b[i] == 0: return i + 1
        if b[i] & 0xc0 == 0xc0: return i + 2
        i += b[i] + 1
i = 12
for _ in range(qd): i = skip_name(r, i) + 4
out = []
for _ in range(an):
    i = skip_name(r, i)
    t, c, ttl, ln = struct.unpack("!HHIH", r[i:i+10]); i += 10
    if t == 1: out.append(socket.inet_ntoa(r[i:i+4]))
    i += ln
print(" ".join(out))
