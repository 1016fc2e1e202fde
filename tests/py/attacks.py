"""What a hostile app sends (scapy, raw frames on its own interface). Prints the number
of packets sent.

spoof-ip IFACE SRC DST PORT N        UDP to DST:PORT from a neighbour's address SRC
spoof-mac IFACE MAC DST PORT N       UDP to DST:PORT with a foreign Ethernet source MAC
arp-claim IFACE IP N                 gratuitous ARP replies claiming IP for our MAC
icmp-exfil IFACE Z FLOWDST SPORT DPORT N
                                     port-unreachable errors to Z quoting our own allowed
                                     UDP flow SPORT -> FLOWDST:DPORT, 120 bytes of payload
same-tuple IFACE SRC DST SPORT DPORT N
                                     UDP SRC:SPORT -> DST:DPORT (a neighbour's live flow)
                                     from our MAC
dhcp-as IFACE CHADDR TYPE IP N [SRC SPORT DST]
                                     DHCP TYPE (discover, decline, release) from our MAC,
                                     naming CHADDR as its client and IP as the address
                                     (declined, released); from 0.0.0.0:68 to the
                                     broadcast, or from SRC:SPORT to DST
vlan IFACE VID DST PORT N            UDP to DST:PORT in an 802.1Q frame of VLAN VID
long IFACE DST PORT N                UDP to DST:PORT whose IP header claims 65,535 bytes
to-mac IFACE MAC SRC DST PORT N      UDP SRC -> DST:PORT in a frame to Ethernet MAC
"""
import sys
from scapy.all import ARP, BOOTP, DHCP, ICMP, IP, UDP, Dot1Q, Ether, Raw, conf, get_if_addr, get_if_hwaddr, getmacbyip, sendp

conf.verb = 0
mode, iface = sys.argv[1], sys.argv[2]
mac = get_if_hwaddr(iface)
me = get_if_addr(iface)
bcast = "ff:ff:ff:ff:ff:ff"


def gw_mac(dst):
    # The next hop's MAC (the NI gateway's for off-subnet destinations).
    return getmacbyip(dst) or bcast


if mode == "spoof-ip":
    src, dst, port, n = sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
    frame = Ether(src=mac, dst=gw_mac(dst)) / IP(src=src, dst=dst) / UDP(sport=41000, dport=port) / Raw(b"evil spoofed ip")
elif mode == "spoof-mac":
    fake, dst, port, n = sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
    frame = Ether(src=fake, dst=gw_mac(dst)) / IP(src=me, dst=dst) / UDP(sport=41001, dport=port) / Raw(b"evil spoofed mac")
elif mode == "arp-claim":
    ip, n = sys.argv[3], int(sys.argv[4])
    frame = Ether(src=mac, dst=bcast) / ARP(op=2, hwsrc=mac, psrc=ip, hwdst=bcast, pdst=ip)
elif mode == "icmp-exfil":
    z, flow_dst, sport, dport, n = sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
    quoted = IP(src=me, dst=flow_dst) / UDP(sport=sport, dport=dport)
    frame = Ether(src=mac, dst=gw_mac(z)) / IP(src=me, dst=z) / ICMP(type=3, code=3) / Raw(bytes(quoted)[:28] + b"evil exfil " + b"x" * 109)
elif mode == "same-tuple":
    src, dst, sport, dport, n = sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
    frame = Ether(src=mac, dst=gw_mac(dst)) / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(b"evil same tuple")
elif mode == "dhcp-as":
    chaddr, kind, ip, n = sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
    src, sport, dst = (sys.argv[7], int(sys.argv[8]), sys.argv[9]) if len(sys.argv) > 9 else ("0.0.0.0", 68, "255.255.255.255")
    options = [("message-type", kind), ("requested_addr", ip), ("server_id", ip.rsplit(".", 1)[0] + ".1"), "end"]
    ciaddr = ip if kind == "release" else "0.0.0.0"
    bootp = BOOTP(op=1, chaddr=bytes.fromhex(chaddr.replace(":", "")) + b"\0" * 10, xid=0x5EED, ciaddr=ciaddr)
    eth_dst = bcast if dst == "255.255.255.255" else gw_mac(dst)
    frame = Ether(src=mac, dst=eth_dst) / IP(src=src, dst=dst) / UDP(sport=sport, dport=67) / bootp / DHCP(options=options)
elif mode == "vlan":
    vid, dst, port, n = int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), int(sys.argv[6])
    frame = Ether(src=mac, dst=gw_mac(dst)) / Dot1Q(vlan=vid) / IP(src=me, dst=dst) / UDP(sport=41002, dport=port) / Raw(b"evil vlan")
elif mode == "long":
    dst, port, n = sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    frame = Ether(src=mac, dst=gw_mac(dst)) / IP(src=me, dst=dst, len=65535) / UDP(sport=41003, dport=port) / Raw(b"evil long")
elif mode == "to-mac":
    eth_dst, src, dst, port, n = sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
    frame = Ether(src=mac, dst=eth_dst) / IP(src=src, dst=dst) / UDP(sport=41004, dport=port) / Raw(b"evil to mac")
else:
    sys.exit(f"unknown mode {mode}")
sendp(frame, iface=iface, count=n, inter=0.01)
print(n)
