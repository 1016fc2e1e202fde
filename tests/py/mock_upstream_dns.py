# The services tests' upstream DNS (10.99.0.53, UDP and TCP): github.com 10.99.0.10,
# api.github.com 10.99.0.11, ttl1.github.com 10.99.0.12 (TTL 1), google.com 10.98.0.10, and
# every *.race.github.com a fresh address in 10.99.2.0/23; anything else NXDOMAIN.
# big.github.com has 60 addresses (10.99.3.1-60): over UDP the answer is truncated (TC, no
# records), over TCP it comes whole. trunc/loop/counts.github.com get broken answers.
import socket, struct, threading

def big_answer(q):
    i = 12
    while q[i]:
        i += q[i] + 1
    question = q[12:i+5]
    rrs = b"".join(b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([10, 99, 3, k]) for k in range(1, 61))
    return struct.pack("!HHHHHH", struct.unpack("!H", q[:2])[0], 0x8180, 1, 60, 0, 0) + question + rrs

def serve_tcp():
    t = socket.socket()
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("10.99.0.53", 53))
    t.listen(16)
    while True:
        c, _ = t.accept()
        try:
            n = struct.unpack("!H", c.recv(2))[0]
            q = b""
            while len(q) < n:
                q += c.recv(n - len(q))
            a = big_answer(q)
            c.sendall(struct.pack("!H", len(a)) + a)
        except Exception:
            pass
        c.close()

threading.Thread(target=serve_tcp, daemon=True).start()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.99.0.53", 53))
fixed = {"github.com": ("10.99.0.10", 300), "api.github.com": ("10.99.0.11", 300),
         "ttl1.github.com": ("10.99.0.12", 1), "google.com": ("10.98.0.10", 300)}
fresh = 0
while True:
    q, peer = s.recvfrom(512)
    qid, = struct.unpack("!H", q[:2])
    i, labels = 12, []
    while q[i]:
        labels.append(q[i+1:i+1+q[i]].decode()); i += q[i] + 1
    question = q[12:i+5]
    name = ".".join(labels).lower()
    if name in ("trunc.github.com", "loop.github.com", "counts.github.com"):
        # Broken upstream answers: cut short; an answer whose name points at itself
        # (10.99.0.66 in its data); a header claiming 65535 answers that are not there.
        good = struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question
        rr_loop = struct.pack("!H", 0xc000 | len(good)) + struct.pack("!HHIH", 1, 1, 300, 4) + socket.inet_aton("10.99.0.66")
        bad = {"trunc.github.com": good[:len(good) - 3],
               "loop.github.com": good + rr_loop,
               "counts.github.com": struct.pack("!HHHHHH", qid, 0x8180, 1, 65535, 0, 0) + question}[name]
        s.sendto(bad, peer)
        continue
    if name == "big.github.com":
        s.sendto(struct.pack("!HHHHHH", qid, 0x8380, 1, 0, 0, 0) + question, peer)
        continue
    if name.endswith(".race.github.com"):
        fresh += 1
        ans = ("10.99.%d.%d" % (2 + fresh // 250, 1 + fresh % 250), 300)
    else:
        ans = fixed.get(name)
    if ans is None:
        s.sendto(struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question, peer)
        continue
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ans[1], 4) + socket.inet_aton(ans[0])
    s.sendto(struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + rr, peer)
