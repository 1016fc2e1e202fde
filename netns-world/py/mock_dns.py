# The seed's internet DNS server (10.99.0.53): github.com, api.github.com and zededa.com
# -> 10.99.0.10, google.com -> 10.98.0.10; anything else NXDOMAIN.
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.99.0.53", 53))
known = {"github.com": "10.99.0.10", "api.github.com": "10.99.0.10", "zededa.com": "10.99.0.10", "google.com": "10.98.0.10"}
while True:
    q, peer = s.recvfrom(512)
    qid, = struct.unpack("!H", q[:2])
    i, labels = 12, []
    while q[i]:
        labels.append(q[i+1:i+1+q[i]].decode()); i += q[i] + 1
    qtype, = struct.unpack("!H", q[i+1:i+3])
    question = q[12:i+5]
    ip = known.get(".".join(labels).lower())
    if ip is None:
        s.sendto(struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question, peer)
    elif qtype != 1:
        s.sendto(struct.pack("!HHHHHH", qid, 0x8180, 1, 0, 0, 0) + question, peer)
    else:
        rr = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + socket.inet_aton(ip)
        s.sendto(struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + rr, peer)
