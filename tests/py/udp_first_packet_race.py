# ip port n wait: n new UDP flows, each opened by two processes at once (one per CPU,
# the same socket): both send the flow's first datagram at the same instant, so that
# the data path sees a flow's first packet on two CPUs together. Prints how many flows
# the server saw from two different translated sources (split), how many answers came
# back, and how many flows got none.
import json, mmap, os, resource, select, signal, socket, struct, sys, time
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
if len(cpus) < 2:
    sys.exit("needs two CPUs: one process on each")
# Shared: the flow both may send now (parent writes), how far the child got (child writes).
shared = mmap.mmap(-1, 16)
go = lambda: struct.unpack_from("q", shared, 0)[0]
done = lambda: struct.unpack_from("q", shared, 8)[0]


def spin_until(ready, what, partner_alive=lambda: True):
    # Never forever: a partner that died must not leave the other spinning. (Checked
    # once in many turns: the spin must stay tight for the two sends to meet.)
    deadline, turns = time.monotonic() + 30, 0
    while not ready():
        turns += 1
        if turns % 65536 == 0 and (time.monotonic() > deadline or not partner_alive()):
            raise SystemExit(f"gave up waiting for {what}")


parent = os.getpid()
child = os.fork()
if child == 0:
    code = 1
    try:
        os.sched_setaffinity(0, {cpus[-1]})
        for i in range(n):
            spin_until(lambda: go() > i, f"flow {i}'s go", lambda: os.getppid() == parent)
            socks[i].sendto(b"b", (ip, port))
            struct.pack_into("q", shared, 8, i + 1)
        code = 0
    finally:
        os._exit(code)
try:
    os.sched_setaffinity(0, {cpus[0]})
    for i in range(n):
        # The child is spinning on flow i when it has finished flow i - 1.
        spin_until(lambda: done() >= i, f"the child's flow {i - 1}")
        struct.pack_into("q", shared, 0, i + 1)
        socks[i].sendto(b"a", (ip, port))
    spin_until(lambda: done() >= n, "the child's last flow")
finally:
    if done() < n:
        os.kill(child, signal.SIGKILL)
    _, status = os.waitpid(child, 0)
if status != 0:
    sys.exit(f"the child failed (wait status {status})")
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
