"""Counts what arrives for `seconds`: "udp IP PORT" counts datagrams to IP:PORT whose
payload starts with `marker`; "icmp" counts ICMP packets delivered to this netns whose
bytes contain `marker`; "frames IFACE" counts frames seen on IFACE (a packet socket:
whatever the stack then does with them, tagged or not) whose bytes contain `marker`.
Prints "ready" once listening, then the count."""
import socket, sys, time

kind, seconds, marker = sys.argv[1], float(sys.argv[2]), sys.argv[3].encode()
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[4], int(sys.argv[5])))
elif kind == "frames":
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind((sys.argv[4], 0))
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
print("ready", flush=True)
n, end = 0, time.time() + seconds
while time.time() < end:
    s.settimeout(max(0.05, end - time.time()))
    try:
        data = s.recv(65536)
    except socket.timeout:
        break
    if (data.startswith(marker) if kind == "udp" else marker in data):
        n += 1
print(n, flush=True)
