# The hypervisor's side of the tap vmtap3 (datapath.rs): create it, wait until the agent
# took it into the NI, then ARP for the gateway, ping it (allowed), and send a SYN to
# app1:80 (not allowed); prints what came back as JSON.
import errno, fcntl, json, os, select, struct, time
from scapy.all import ARP, ICMP, IP, TCP, Ether
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH", b"vmtap3", 0x0002 | 0x1000))  # TUNSETIFF: TAP, NO_PI
print("ready", flush=True)
scale = float(os.environ.get("NETNS_TEST_TIME_SCALE", "1"))
deadline = time.time() + 30 * scale
while os.path.exists("/sys/class/net/vmtap3") and time.time() < deadline:
    time.sleep(0.1)
mac, ip = "02:00:00:00:00:05", "10.10.1.5"
def exchange(frame, want, timeout=3):
    end = time.time() + timeout
    try:
        os.write(fd, bytes(frame))
    except OSError as e:
        # A tap that is down refuses frames (EIO): the agent has not set its port up yet.
        if e.errno != errno.EIO:
            raise
        time.sleep(min(timeout, 0.2))
        return None
    while time.time() < end:
        if select.select([fd], [], [], 0.2)[0]:
            pkt = Ether(os.read(fd, 2048))
            if want(pkt):
                return pkt
    return None
# The agent sets the port up only after its programs are attached: ARP until answered.
arp, deadline = None, time.time() + 10 * scale
while arp is None and time.time() < deadline:
    arp = exchange(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc=ip, pdst="10.10.1.1"),
                   lambda p: p.haslayer(ARP) and p[ARP].op == 2 and p[ARP].psrc == "10.10.1.1", timeout=1)
gw = arp[ARP].hwsrc if arp else "ff:ff:ff:ff:ff:ff"
echo = exchange(Ether(src=mac, dst=gw) / IP(src=ip, dst="10.10.1.1") / ICMP(id=7, seq=1),
                lambda p: p.haslayer(ICMP) and p[ICMP].type == 0 and p[ICMP].id == 7)
app1 = exchange(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc=ip, pdst="10.10.1.2"),
                lambda p: p.haslayer(ARP) and p[ARP].op == 2 and p[ARP].psrc == "10.10.1.2")
synack = exchange(Ether(src=mac, dst=app1[ARP].hwsrc if app1 else gw) / IP(src=ip, dst="10.10.1.2") / TCP(sport=40000, dport=80, flags="S"),
                  lambda p: p.haslayer(TCP) and p[TCP].flags & 0x12 == 0x12, timeout=2)
print(json.dumps({"arp": arp is not None, "echo": echo is not None, "synack": synack is not None}), flush=True)
os.close(fd)
