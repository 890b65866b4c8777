"""A tiny static x86-64 program that waits for SIGTERM/SIGINT and exits.

Containers need a process that keeps running without relying on the image's own tools
(busybox, distroless and scratch images have no `sleep`). Rather than ship a binary, the
program is assembled here from its instructions, so the bytes are reviewable:

    rt_sigprocmask(SIG_BLOCK, {INT,TERM}, NULL, 8)   # blocked signals are queued, even for PID 1
    loop: r = rt_sigtimedwait({INT,TERM}, NULL, NULL, 8); if r < 0 goto loop
    exit_group(0)

Blocking then waiting (instead of relying on default signal actions) makes `docker stop`
immediate whether or not the program runs as PID 1.
"""

from __future__ import annotations

import io
import struct

BASE = 0x400000
_HEADER = 64 + 56  # ELF header + one program header
_SIGSET = (1 << (2 - 1)) | (1 << (15 - 1))  # SIGINT, SIGTERM

PATH_IN_CONTAINER = "/.devenv/keepalive"


def _code() -> bytes:
    code = bytearray()
    fixups: list[int] = []  # positions of rel32 displacements to the sigset

    def lea_rip(reg_modrm: int) -> None:
        code.extend(b"\x48\x8d" + bytes([reg_modrm]))
        fixups.append(len(code))
        code.extend(b"\0\0\0\0")

    lea_rip(0x35)  # lea rsi, [rip+set]
    code += b"\x31\xff"  # xor edi, edi        (SIG_BLOCK)
    code += b"\x31\xd2"  # xor edx, edx        (oldset NULL)
    code += b"\x41\xba\x08\x00\x00\x00"  # mov r10d, 8   (sigsetsize)
    code += b"\xb8\x0e\x00\x00\x00"  # mov eax, 14 (rt_sigprocmask)
    code += b"\x0f\x05"  # syscall
    loop = len(code)
    lea_rip(0x3D)  # lea rdi, [rip+set]
    code += b"\x31\xf6"  # xor esi, esi        (info NULL)
    code += b"\x31\xd2"  # xor edx, edx        (timeout NULL)
    code += b"\x41\xba\x08\x00\x00\x00"  # mov r10d, 8
    code += b"\xb8\x80\x00\x00\x00"  # mov eax, 128 (rt_sigtimedwait)
    code += b"\x0f\x05"  # syscall
    code += b"\x85\xc0"  # test eax, eax
    code += b"\x78" + bytes([(loop - (len(code) + 2)) & 0xFF])  # js loop
    code += b"\x31\xff"  # xor edi, edi
    code += b"\xb8\xe7\x00\x00\x00"  # mov eax, 231 (exit_group)
    code += b"\x0f\x05"  # syscall
    while len(code) % 8:
        code += b"\x90"
    sigset_at = len(code)
    code += struct.pack("<Q", _SIGSET)
    for pos in fixups:
        struct.pack_into("<i", code, pos, sigset_at - (pos + 4))
    return bytes(code)


def elf_x86_64() -> bytes:
    code = _code()
    size = _HEADER + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, BASE + _HEADER, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, size, size, 0x1000)
    return ehdr + phdr + code


def digest() -> str:
    """Names this exact program: images that carry it are labelled with it (boxes.LABEL_KEEPALIVE)."""
    import hashlib

    return hashlib.sha256(elf_x86_64()).hexdigest()[:16]


def tar_archive() -> bytes:
    """A tar holding the program at PATH_IN_CONTAINER (mode 0755), for put_archive at '/'."""
    data = elf_x86_64()
    buf = io.BytesIO()
    import tarfile  # only `up` needs it

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        d = tarfile.TarInfo(".devenv")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(d)
        info = tarfile.TarInfo(PATH_IN_CONTAINER.lstrip("/"))
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()
