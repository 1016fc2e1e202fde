"""UDP echo of large datagrams (the kernel fragments them at the link's MTU).

[--lite] server IP PORT SECONDS    echoes every datagram until none came for SECONDS; prints
                          "ready" once bound, then the sources it saw, one per line
client IP PORT SIZE N [SPORT]
                          sends N datagrams of SIZE bytes, one at a time (from source port
                          SPORT if given: the same flow again); prints how many came back
                          whole and unchanged
--lite                    UDP-Lite instead (the kernel's sockets; their checksum covers
                          the whole datagram and the pseudo header, and the kernel drops
                          a datagram whose sum is wrong)
"""
import socket, sys, time

IPPROTO_UDPLITE = 136
lite = sys.argv[1] == "--lite"
if lite:
    del sys.argv[1]
mode, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, IPPROTO_UDPLITE if lite else 0)
if mode == "server":
    s.bind((ip, port))
    print("ready", flush=True)
    seen = set()
    s.settimeout(float(sys.argv[4]))
    while True:
        try:
            data, peer = s.recvfrom(65536)
        except socket.timeout:
            break
        seen.add(peer[0])
        s.sendto(data, peer)
    for addr in sorted(seen):
        print(addr, flush=True)
else:
    size, n = int(sys.argv[4]), int(sys.argv[5])
    scale = float(__import__("os").environ.get("NETNS_TEST_TIME_SCALE", "1"))
    s.settimeout(2 * scale)
    if len(sys.argv) > 6:
        s.bind(("", int(sys.argv[6])))
    s.connect((ip, port))
    ok = 0
    for i in range(n):
        payload = (b"%08d" % i) * (size // 8)
        s.send(payload)
        try:
            ok += s.recv(65536) == payload
        except socket.timeout:
            pass
    print(ok, flush=True)
