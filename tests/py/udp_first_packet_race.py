# ip port n wait: n new UDP flows, each opened by two processes at once (one per CPU,
# the same socket): both send the flow's first datagram at the same instant, so that
# the data path sees a flow's first packet on two CPUs together. Prints how many flows
# the server saw from two different translated sources (split), how many answers came
# back, and how many flows got none.
import json, mmap, os, resource, select, socket, struct, sys, time
ip, port, n, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < n + 64:
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 64, max(hard, n + 64)))
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))  # the flow's source port, the same in both processes
    s.setblocking(False)
    socks.append(s)
cpus = sorted(os.sched_getaffinity(0))
# Shared: the flow both may send now (parent writes), how far the child got (child writes).
shared = mmap.mmap(-1, 16)
go = lambda: struct.unpack_from("q", shared, 0)[0]
done = lambda: struct.unpack_from("q", shared, 8)[0]
child = os.fork()
if child == 0:
    os.sched_setaffinity(0, {cpus[-1]})
    for i in range(n):
        while go() <= i:
            pass
        socks[i].sendto(b"b", (ip, port))
        struct.pack_into("q", shared, 8, i + 1)
    os._exit(0)
os.sched_setaffinity(0, {cpus[0]})
for i in range(n):
    # The child is spinning on flow i when it has finished flow i - 1.
    while done() < i:
        pass
    struct.pack_into("q", shared, 0, i + 1)
    socks[i].sendto(b"a", (ip, port))
os.waitpid(child, 0)
poller = select.poll()
for s in socks:
    poller.register(s, select.POLLIN)
by_fd = {s.fileno(): s for s in socks}
seen = {fd: set() for fd in by_fd}
answers, deadline = 0, time.time() + wait
while answers < 2 * n and time.time() < deadline:
    for fd, _ in poller.poll(200):
        try:
            while True:
                seen[fd].add(by_fd[fd].recv(100).decode())
                answers += 1
        except BlockingIOError:
            pass
print(json.dumps({
    "flows": n,
    "answers": answers,
    "split": sum(1 for v in seen.values() if len(v) > 1),
    "silent": sum(1 for v in seen.values() if not v),
}))
