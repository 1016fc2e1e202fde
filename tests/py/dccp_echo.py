"""DCCP-Data packets over raw sockets (no DCCP stack needed: Linux 6.16 removed it),
echoed back, each side checking the checksum of what it receives: DCCP's covers the
pseudo header (both addresses), so it holds only if every address rewrite on the way
followed it.

server IP SECONDS   echoes every packet to IP (the bytes after the checksum, under a
                    header and sum of its own) until none came for SECONDS; prints
                    "ready" once listening, then "SOURCE good|bad" per packet received
client IP N         sends N packets to IP, one at a time; prints how many came back with
                    a good checksum and the payload sent
"""
import os, socket, struct, sys

IPPROTO_DCCP = 33
# DCCP-Data (type 2) with 48-bit sequence numbers (X = 1): a 16-byte header, 4 words.
HEADER = struct.Struct("!HHBBHBB6s")


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def pseudo(src, dst, length):
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, IPPROTO_DCCP, length)


def packet(src, dst, sport, dport, seq, payload):
    """A DCCP-Data packet from src to dst whose checksum covers it all (CsCov 0)."""
    head = HEADER.pack(sport, dport, 4, 0, 0, (2 << 1) | 1, 0, seq.to_bytes(6, "big"))
    body = head + payload
    s = 0xFFFF - csum(pseudo(src, dst, len(body)) + body)
    return body[:6] + struct.pack("!H", s) + body[8:]


def received(sock):
    """The next packet: (source, destination, its DCCP bytes, whether its sum is good)."""
    data = sock.recv(65536)
    ihl = (data[0] & 0x0F) * 4
    src, dst = socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20])
    body = data[ihl:]
    return src, dst, body, csum(pseudo(src, dst, len(body)) + body) == 0xFFFF


def local_address(peer):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((peer, 9))
    return probe.getsockname()[0]


mode, ip = sys.argv[1], sys.argv[2]
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_DCCP)
if mode == "server":
    sock.settimeout(float(sys.argv[3]))
    print("ready", flush=True)
    while True:
        try:
            src, dst, body, good = received(sock)
        except socket.timeout:
            break
        print(src, "good" if good else "bad", flush=True)
        sport, dport = struct.unpack("!HH", body[:4])
        sock.sendto(packet(dst, src, dport, sport, 1, body[HEADER.size:]), (src, 0))
else:
    n = int(sys.argv[3])
    scale = float(os.environ.get("NETNS_TEST_TIME_SCALE", "1"))
    sock.settimeout(2 * scale)
    me = local_address(ip)
    ok = 0
    for i in range(n):
        payload = b"dccp %04d" % i
        sock.sendto(packet(me, ip, 5001, 5002, i, payload), (ip, 0))
        try:
            while True:
                src, _, body, good = received(sock)
                if src == ip:
                    break
        except socket.timeout:
            continue
        ok += good and body[HEADER.size:] == payload
    print(ok, flush=True)
