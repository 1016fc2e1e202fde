# ip port n wait: sends one datagram from each of n sockets and prints the distinct
# translated sources the server reported, and how many got no answer.
import json, resource, select, socket, sys, time
ip, port, n, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
# n sockets at once: more than the usual soft limit of 1024 descriptors.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < n + 64:
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 64, max(hard, n + 64)))  # root may raise hard
poller, socks = select.poll(), {}
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.sendto(b"x", (ip, port))
    socks[s.fileno()] = s
    poller.register(s, select.POLLIN)
seen, deadline = [], time.time() + wait
while socks and time.time() < deadline:
    for fd, _ in poller.poll(200):
        s = socks.pop(fd)
        poller.unregister(fd)
        seen.append(s.recv(100).decode())
print(json.dumps({"answers": len(seen), "distinct": len(set(seen)), "silent": len(socks)}))
