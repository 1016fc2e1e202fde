#!/bin/sh
# Applies a DHCP lease as a client daemon would (busybox udhcpc's script interface).
[ "$1" = bound ] || exit 0
ip addr add "$ip/$mask" dev "$interface"
ip route replace default via "$router" dev "$interface"
