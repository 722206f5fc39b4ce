#!/usr/bin/env python3
"""Zero every CUDA fatbin entry of a shared library except one GPU architecture's
SASS, so the file compresses to about that architecture's share.

    python3 scripts/fatbin_keep_arch.py libonnxruntime_providers_cuda.so out.so 90

Used to carry onnxruntime-gpu's CUDA provider (284 MB, SASS for sm_75 to sm_120, no
PTX) to a machine with a 64 MiB transfer limit and an sm_90 GPU: the sm_90 entries
stay byte for byte, the others become zeros (51.6 MB with `xz -9`). The section keeps
its size and every header, so the ELF needs no relinking; the CUDA runtime picks the
entry matching the device, and a device of another architecture would find no usable
code. Entries are read from the `.nv_fatbin` section: fatbin headers (magic
0xBA55ED50, u16 version, u16 header size, u64 size of the entries) and, in each,
entries of u16 kind (1 PTX, 2 ELF), u16 version, u32 header size, u64 payload size,
with the SM version as the u32 at byte 28 of the entry header.
"""

import struct
import subprocess
import sys

MAGIC = 0xBA55ED50


def section(path, name):
    out = subprocess.run(["readelf", "-SW", path], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        f = line.replace("[ ", "[").split()
        if name in f:
            i = f.index(name)
            return int(f[i + 3], 16), int(f[i + 4], 16)
    sys.exit(f"{path}: no {name} section")


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    src, dst, keep_sm = sys.argv[1], sys.argv[2], int(sys.argv[3])
    data = bytearray(open(src, "rb").read())
    off, size = section(src, ".nv_fatbin")
    pos, kept, zeroed, groups_without = off, 0, 0, 0
    while pos < off + size:
        magic, _, hsz, fsz = struct.unpack_from("<IHHQ", data, pos)
        if magic != MAGIC:
            pos += 8  # alignment padding between fatbins
            continue
        e, end, has = pos + hsz, pos + hsz + fsz, False
        while e < end:
            kind, _, ehsz, psz = struct.unpack_from("<HHIQ", data, e)
            sm = struct.unpack_from("<I", data, e + 28)[0]
            if kind == 2 and sm == keep_sm:
                kept += psz
                has = True
            else:
                data[e + ehsz:e + ehsz + psz] = bytes(psz)
                zeroed += psz
            e += ehsz + psz
        groups_without += not has
        pos = end
    open(dst, "wb").write(data)
    print(f"kept {kept / 2**20:.1f} MiB of sm_{keep_sm} SASS, zeroed {zeroed / 2**20:.1f} MiB; "
          f"{groups_without} fatbins had no sm_{keep_sm} code to begin with")


if __name__ == "__main__":
    main()
