# The hypervisor of the demo's VM app3: creates the tap nbu1x3 in zedbox (the agent
# bridges it into NI3) and the guest's NIC eth0 (a tap in netns app3), and relays frames
# between them as qemu's tap backend and virtual NIC would. Prints "ready" once both exist.
import ctypes, fcntl, os, select, struct
libc = ctypes.CDLL(None, use_errno=True)
def enter(ns):
    fd = os.open("/run/netns/" + ns, os.O_RDONLY)
    if libc.setns(fd, 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "setns " + ns)
    os.close(fd)
def tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", name.encode(), 0x0002 | 0x1000))  # TUNSETIFF: TAP, NO_PI
    return fd
enter("zedbox"); host = tap("nbu1x3")
enter("app3"); guest = tap("eth0")
print("ready", flush=True)
peer = {host: guest, guest: host}
while True:
    for fd in select.select([host, guest], [], [])[0]:
        try:
            os.write(peer[fd], os.read(fd, 65536))
        except OSError:
            pass  # a side that is down (or moving between namespaces) drops the frame
