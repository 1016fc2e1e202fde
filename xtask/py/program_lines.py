#!/usr/bin/env python3
"""Where inside our programs a perf recording's time goes, by source line.

Debian's perf has no libbfd, so it cannot annotate BPF programs. This reads what it
needs from the kernel instead, through the bpf syscall:

  program_lines.py dump PREFIX...       while the programs are loaded: for each program
                                        whose name starts with a PREFIX, its JIT line
                                        info (JIT address -> file:line), as JSON lines
  program_lines.py attribute LINES PERF_DATA TOP
                                        every sample of PERF_DATA (perf record -g) whose
                                        call chain passes through one of those programs
                                        goes to the nearest line of our own sources at
                                        or before that address (a helper's or a map
                                        lookup's time to the line that called it); the
                                        TOP lines, with their share and the symbols the
                                        samples were in
"""
import bisect
import collections
import ctypes
import json
import os
import struct
import subprocess
import sys

NR_BPF = 321  # x86_64
BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD, BPF_BTF_GET_FD_BY_ID = 11, 13, 15, 19
# struct bpf_prog_info (linux/bpf.h): the offsets of the fields read or written here.
INFO_SIZE = 256
NAME, NR_KSYMS, KSYMS, BTF_ID = 64, 104, 112, 128
NR_LINE_INFO, LINE_INFO, JITED_LINE_INFO, NR_JITED_LINE_INFO = 148, 152, 160, 168
LINE_INFO_REC_SIZE, JITED_LINE_INFO_REC_SIZE = 172, 176
# Our sources: a sample in anything else (core, aya, the helper wrappers) goes to the
# nearest line of these before it.
OURS = {
    "app_port.rs", "nat.rs", "fast.rs", "rewrite.rs", "frag.rs", "budget.rs", "events.rs", "clock.rs", "maps.rs",
    "skb.rs", "packet.rs", "ct.rs", "acl.rs", "classify.rs", "guard.rs", "limit.rs", "lib.rs", "mark.rs",
}

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    fd = libc.syscall(NR_BPF, cmd, buf, 128)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd, buf.raw


def info_by_fd(fd, info):
    buf = ctypes.create_string_buffer(bytes(info), len(info))
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("IIQ", fd, len(info), ctypes.addressof(buf)))
    return buf.raw


def btf_strings(btf_id):
    fd, _ = bpf(BPF_BTF_GET_FD_BY_ID, struct.pack("I", btf_id))
    try:
        size = struct.unpack_from("I", info_by_fd(fd, bytearray(32)), 8)[0]
        data = ctypes.create_string_buffer(size)
        info = bytearray(32)
        struct.pack_into("QI", info, 0, ctypes.addressof(data), size)
        info_by_fd(fd, info)
    finally:
        os.close(fd)
    d = data.raw
    hdr_len, str_off, str_len = struct.unpack_from("I", d, 4)[0], struct.unpack_from("I", d, 16)[0], struct.unpack_from("I", d, 20)[0]
    return d[hdr_len + str_off : hdr_len + str_off + str_len]


def cstr(strings, off):
    return strings[off : strings.index(b"\0", off)].decode(errors="replace")


def dump(prefixes):
    prog_id = 0
    while True:
        try:
            _, raw = bpf(BPF_PROG_GET_NEXT_ID, struct.pack("II", prog_id, 0))
        except OSError:
            return
        prog_id = struct.unpack_from("I", raw, 4)[0]
        try:
            fd, _ = bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("I", prog_id))
        except OSError:
            continue
        try:
            first = info_by_fd(fd, bytearray(INFO_SIZE))
            name = first[NAME : NAME + 16].split(b"\0")[0].decode()
            if not any(name.startswith(p) for p in prefixes):
                continue
            n_lines, n_jited = struct.unpack_from("I", first, NR_LINE_INFO)[0], struct.unpack_from("I", first, NR_JITED_LINE_INFO)[0]
            rec, jrec = struct.unpack_from("I", first, LINE_INFO_REC_SIZE)[0], struct.unpack_from("I", first, JITED_LINE_INFO_REC_SIZE)[0]
            lines, jited = ctypes.create_string_buffer(n_lines * rec), (ctypes.c_uint64 * n_jited)()
            info = bytearray(INFO_SIZE)
            for off, fmt, val in [
                (NR_LINE_INFO, "I", n_lines), (LINE_INFO, "Q", ctypes.addressof(lines)), (LINE_INFO_REC_SIZE, "I", rec),
                (NR_JITED_LINE_INFO, "I", n_jited), (JITED_LINE_INFO, "Q", ctypes.addressof(jited)), (JITED_LINE_INFO_REC_SIZE, "I", jrec),
            ]:
                struct.pack_into(fmt, info, off, val)
            info_by_fd(fd, info)
            strings = btf_strings(struct.unpack_from("I", first, BTF_ID)[0])
        finally:
            os.close(fd)
        out = []
        for k in range(min(n_lines, n_jited)):
            _, file_off, line_off, line_col = struct.unpack_from("IIII", lines.raw, k * rec)
            out.append([jited[k], cstr(strings, file_off).rsplit("/", 1)[-1], line_col >> 10, cstr(strings, line_off).strip()[:100]])
        print(json.dumps({"name": name, "lines": out}))


def attribute(lines_file, perf_data, top):
    recs = sorted((addr, p["name"], f, line, src) for p in map(json.loads, open(lines_file)) for addr, f, line, src in p["lines"])
    if not recs:
        sys.exit("no line info: were the programs loaded when it was dumped?")
    addrs = [r[0] for r in recs]
    end = addrs[-1] + 4096

    def ours(ip):
        i = bisect.bisect_right(addrs, ip) - 1
        if i < 0 or ip > end:
            return None
        j = i
        while j > 0 and recs[j][2] not in OURS and i - j < 64:
            j -= 1
        return recs[j]

    script = subprocess.run(["perf", "script", "-i", perf_data, "-F", "ip,sym", "--no-inline"], capture_output=True, text=True, check=True)
    per_line, leaves, source = collections.Counter(), collections.defaultdict(collections.Counter), {}
    for sample in script.stdout.split("\n\n"):
        frames = [l.split(None, 1) for l in sample.strip().splitlines() if l.strip()]
        for frame in frames:
            try:
                rec = ours(int(frame[0], 16))
            except ValueError:
                continue
            if rec:
                key = f"{rec[1]} {rec[2]}:{rec[3]}"
                per_line[key] += 1
                leaf = frames[0][1].split("+")[0] if len(frames[0]) > 1 else "?"
                leaves[key]["own code" if leaf.startswith("bpf_prog_") else leaf] += 1
                source[key] = rec[4]
                break
    total = sum(per_line.values())
    print(f"  {total} samples in our programs; by the line of ours they were at or called from:")
    for key, n in per_line.most_common(top):
        where = ", ".join(f"{s} {c}" for s, c in leaves[key].most_common(3))
        print(f"  {100 * n / total:5.1f}%  {key:<34} [{where}]  {source[key][:60]}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "dump":
        dump(sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "attribute":
        attribute(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(__doc__)
