#!/bin/bash
# From the team's verified recipe (shared notes); `cargo xtask test --vm` runs the
# kernel-xfrm tests through it. Local change: the initramfs cache dir is
# $QEMU_VM_CACHE when set (xtask keeps it under target/); the host's /tmp stays visible
# when the command's files are under it (a checkout in /tmp).
#
# qemu-kernel-vm.sh - run one command as root inside a throw-away QEMU VM that
# boots Debian's stock kernel (linux-image-amd64: full module set, so esp4,
# xfrm_user, af_key, nf_nat, veth, tun ... are all available through modprobe).
#
# The VM has no disk image: this machine's "/" is shared READ-ONLY over
# virtio-9p and a tmpfs overlay on top makes it writable inside the guest
# (writes are thrown away at power-off).  One host directory (-o DIR) is
# shared READ-WRITE and mounted at the same path inside the guest, so the
# command can leave results there.  The guest has no network card.
#
# usage:  qemu-kernel-vm.sh [-o DIR] [-m MB] [-c CPUS] [-t SEC] [--tcg|--kvm] [--] CMD [ARGS...]
#   -o DIR   read-write exchange dir, same path in guest (default: new temp dir)
#   -m MB    guest memory (default 2048)        -c N   guest CPUs (default 2)
#   -t SEC   kill the VM after SEC seconds (default 600)
#   --tcg / --kvm  force the accelerator.  Default: KVM only if /dev/kvm is a
#            real (VMX/SVM) KVM.  On these VMs /dev/kvm is PVM
#            (kvm_pvm module): it only runs PVM-enabled guest kernels fast and
#            emulates a stock kernel instruction by instruction (it never
#            finishes booting), so TCG is used there.
# CMD runs with bash inside the guest, in the caller's current directory.
# Exit status: CMD's exit status in the guest; 125 if the VM itself failed.
# Guest console (kernel + CMD output) goes to stdout and DIR/console.log.
#
# Needs (installed on first use): qemu-system-x86 linux-image-amd64 busybox-static cpio
set -euo pipefail

OUT="" MEM=2048 CPUS=2 TIMEOUT=600 ACCEL=auto
while [ $# -gt 0 ]; do
  case "$1" in
    -o) OUT=$2; shift 2 ;;
    -m) MEM=$2; shift 2 ;;
    -c) CPUS=$2; shift 2 ;;
    -t) TIMEOUT=$2; shift 2 ;;
    --tcg) ACCEL=tcg; shift ;;
    --kvm) ACCEL=kvm; shift ;;
    --) shift; break ;;
    -*) echo "unknown option $1" >&2; exit 125 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 125; }

need=""
command -v qemu-system-x86_64 >/dev/null || need="$need qemu-system-x86"
ls /boot/vmlinuz-*-amd64 >/dev/null 2>&1 || need="$need linux-image-amd64"
dpkg -s busybox-static >/dev/null 2>&1 || need="$need busybox-static"
command -v cpio >/dev/null || need="$need cpio"
if [ -n "$need" ]; then
  echo "installing:$need" >&2
  # TMPDIR outside /tmp: apt's unpack dir vanished from /tmp once on these machines
  mkdir -p /var/tmp/apt
  TMPDIR=/var/tmp/apt DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends $need >&2
fi

# newest Debian kernel that has its modules installed
KVER=$(ls /lib/modules | grep -- '-amd64$' | sort -V | tail -1)
KERNEL=/boot/vmlinuz-$KVER
[ -r "$KERNEL" ] || { echo "no kernel for $KVER" >&2; exit 125; }

# ---- initramfs: static busybox + the few modules needed to mount the 9p root
CACHE=${QEMU_VM_CACHE:-/var/tmp/qemu-kernel-vm}
INITRD=$CACHE/initrd-$KVER.cpio.gz
if [ ! -s "$INITRD" ] || [ "$INITRD" -ot "$0" ]; then
  mkdir -p "$CACHE"; B=$(mktemp -d "$CACHE/build.XXXXXX")
  mkdir -p "$B"/{bin,dev,proc,sys,mods,lower,upper,newroot}
  cp /bin/busybox "$B/bin/busybox"
  for a in sh mount umount mkdir insmod cat cut echo chmod switch_root poweroff sleep sync; do
    ln -s busybox "$B/bin/$a"
  done
  for m in virtio_pci 9pnet_virtio 9p overlay; do
    modprobe -S "$KVER" --show-depends "$m" | awk '$1=="insmod"{print $2}'
  done | awk '!seen[$0]++' | while read -r ko; do
    cp "$ko" "$B/mods/"; basename "$ko" >> "$B/mods/order"
  done
  cat > "$B/init" <<'EOF'
#!/bin/sh
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo "vm: init at $(cut -d' ' -f1 /proc/uptime)s uptime"
for m in $(cat /mods/order); do insmod /mods/$m; done
OUT=/
KEEPTMP=0
for w in $(cat /proc/cmdline); do case "$w" in vmout=*) OUT=${w#vmout=} ;; vmkeeptmp=1) KEEPTMP=1 ;; esac; done
fail() { echo "vm: $*"; echo 125 > /newroot$OUT/rc 2>/dev/null; sync; poweroff -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower || fail "9p root mount failed"
mount -t tmpfs -o mode=755 upper /upper && mkdir /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot \
  || { echo "vm: overlay failed, root stays read-only"; mount --bind /lower /newroot; }
R=/newroot
mount -t proc proc $R/proc; mount -t sysfs sys $R/sys; mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts; mount -t tmpfs shm $R/dev/shm
mount -t tmpfs tmpfs $R/run
# a fresh /tmp, unless the command's files live under the host's /tmp (a CI checkout):
# then the overlay's /tmp, writable too
[ "$KEEPTMP" = 1 ] || mount -t tmpfs tmpfs $R/tmp
mkdir -p $R/run/netns $R$OUT
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 vmout $R$OUT || fail "9p out mount failed"
# stage 2 runs as PID 1 inside the new root (switch_root, not chroot, so that
# the kernel's module auto-loading finds /sbin/modprobe and /lib/modules)
cat > $R/run/vm-stage2 <<EOS
#!/bin/bash
echo "vm: running command at \$(cut -d' ' -f1 /proc/uptime)s uptime"
/usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
  HOME=/root TERM=dumb /bin/bash $OUT/cmd.sh
echo \$? > $OUT/rc
echo "vm: command done at \$(cut -d' ' -f1 /proc/uptime)s uptime, rc=\$(cat $OUT/rc)"
sync; echo 1 > /proc/sys/kernel/sysrq; echo o > /proc/sysrq-trigger; while :; do :; done
EOS
chmod +x $R/run/vm-stage2
exec switch_root $R /run/vm-stage2
EOF
  chmod +x "$B/init"
  (cd "$B" && find . | cpio -o -H newc --quiet | gzip -1) > "$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"; rm -rf "$B"
fi

# ---- exchange dir + command
[ -n "$OUT" ] || OUT=$(mktemp -d /var/tmp/qemu-kernel-vm.XXXXXX)
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd -P)
rm -f "$OUT/rc"
{ printf 'cd %q 2>/dev/null || cd /\n' "$PWD"; printf '%q ' "$@"; echo; } > "$OUT/cmd.sh"

if [ "$ACCEL" = auto ]; then
  ACCEL=tcg
  if [ -w /dev/kvm ] && [ ! -d /sys/module/kvm_pvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then
    ACCEL=kvm
  fi
fi
# arch-capabilities: QEMU aborts ("failed to set MSR 0x10a") under kvm_pvm without this
CPU=host,-arch-capabilities; [ "$ACCEL" = tcg ] && CPU=max

KEEPTMP=0
case "$PWD/" in /tmp/*) KEEPTMP=1 ;; esac
case "$OUT/" in /tmp/*) KEEPTMP=1 ;; esac

start=$(date +%s%N)
set +e
timeout --foreground -k 5 "$TIMEOUT" qemu-system-x86_64 \
  -accel "$ACCEL" -cpu "$CPU" -smp "$CPUS" -m "$MEM" \
  -nodefaults -no-user-config -nographic -no-reboot \
  -serial stdio -monitor none -nic none \
  -kernel "$KERNEL" -initrd "$INITRD" \
  -append "console=ttyS0 panic=-1 quiet loglevel=3 vmout=$OUT vmkeeptmp=$KEEPTMP" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$OUT",mount_tag=vmout,security_model=none,multidevs=remap \
  < /dev/null 2>&1 | tee "$OUT/console.log"
qrc=${PIPESTATUS[0]}
set -e
end=$(date +%s%N)
printf 'vm: %s, qemu rc=%s, wall %d.%02ds, out=%s\n' "$ACCEL" "$qrc" \
  $(( (end - start) / 1000000000 )) $(( (end - start) / 10000000 % 100 )) "$OUT" >&2
[ -s "$OUT/rc" ] && exit "$(cat "$OUT/rc")"
exit 125
