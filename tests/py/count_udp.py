# ip port grace: prints "ready" once bound, then counts datagrams on ip:port until its
# stdin closes (the test's sender is done) and `grace` seconds more (those in flight);
# prints how many. No fixed window: a sender slow to start is never cut off.
import socket, sys, threading, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((sys.argv[1], int(sys.argv[2]))); s.settimeout(0.1)
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
print("ready", flush=True)
n, end = 0, None
while end is None or time.time() < end:
    if end is None and done.is_set():
        end = time.time() + float(sys.argv[3])
    try:
        s.recv(100); n += 1
    except socket.timeout:
        pass
print(n)
