"""Contain the process that loads and exports a model file someone else wrote.

:func:`confine` irreversibly confines the calling process: afterwards it can write only
beneath one scratch folder (and to a few device files), cannot execute programs and
cannot open sockets. Reads stay free, so torch, onnxruntime and openvino still load
their libraries (dlopen/mmap is not exec), and the project's custom-op library loads.

Linux, built from kernel interfaces through ctypes (no dependencies):

* ``prctl(PR_SET_NO_NEW_PRIVS)``, which Landlock and seccomp need without privileges
  (prctl(2));
* Landlock, landlock(7): a ruleset that handles every right that writes or changes the
  file tree, plus EXECUTE, granting the write rights only beneath the scratch folder and
  on a few device files, EXECUTE nowhere; TCP bind/connect on no port (ABI >= 4); abstract
  unix sockets and signals scoped to this domain (ABI >= 6). Reads are not handled;
* a seccomp-BPF filter, seccomp(2): EPERM (a clean PermissionError, not a kill) for exec,
  sockets, io_uring (its requests bypass seccomp), other processes' memory, mounts and
  namespaces, kernel modules/kexec/bpf, keyrings, and the metadata writes Landlock cannot
  restrict (chmod, chown, xattrs, timestamps; landlock.h lists them as unrestricted).

Nothing here imports anything beyond the standard library, and nothing from poolexport:
the child must confine itself *before* importing torch (``import poolexport`` does), so it
loads this file by path.

Other platforms: nothing is enforced; the returned :class:`Confinement` says so.
"""
from __future__ import annotations

import ctypes
import errno
import glob
import os
import platform
import struct
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Confinement:
    """What :func:`confine` put in place; ``missing`` names each protection it could not."""

    platform: str                 # sys.platform
    landlock_abi: int | None      # None when not enforced
    seccomp: bool
    no_new_privs: bool
    writable: tuple[str, ...]     # the paths writes are allowed beneath ("/" when writes are not limited)
    missing: tuple[str, ...]      # one short phrase per protection NOT enforced, with why

    def enforced(self) -> bool:
        """Writes limited (Landlock), exec blocked (Landlock and seccomp), sockets blocked
        (seccomp: Landlock alone covers only TCP bind/connect)."""
        return self.no_new_privs and self.landlock_abi is not None and self.seccomp

    def describe(self) -> str:
        """One line for the CLI."""
        if not self.enforced():
            layers = []
            if self.landlock_abi is not None:
                layers.append(f"Landlock ABI {self.landlock_abi}")
            if self.seccomp:
                layers.append("seccomp")
            what = f" ({' + '.join(layers)} only)" if layers else ""
            return f"sandbox: NOT enforced on {self.platform}{what}: " + "; ".join(self.missing)
        line = (f"sandbox: writes only under {self.writable[0]}, no exec, no sockets "
                f"(Linux: Landlock ABI {self.landlock_abi} + seccomp")
        return line + (f"; not enforced: {'; '.join(self.missing)})" if self.missing else ")")


def confine(scratch: str | os.PathLike) -> Confinement:
    """Irreversibly confine the CALLING PROCESS. Must be called while it has one thread,
    before importing torch (Landlock restrict_self is per thread, so threads that exist
    already stay free); raise RuntimeError if /proc/self/task shows more than one thread.

    ``scratch`` must be an existing directory; it becomes the only place files can be
    written (TMPDIR is pointed at it, since nothing else stays writable). Returns what was
    enforced: check :meth:`Confinement.enforced` and refuse to go on if it must be.
    """
    scratch = os.path.realpath(os.fspath(scratch))
    if not os.path.isdir(scratch):
        raise NotADirectoryError(f"sandbox: scratch folder {scratch} is not a directory")
    if scratch == "/":
        raise ValueError("sandbox: the scratch folder cannot be /")
    if not sys.platform.startswith("linux"):
        why = f"no sandbox implemented on {sys.platform}"
        return Confinement(sys.platform, None, False, False, ("/",),
                           (f"writes: {why}", f"exec: {why}", f"sockets: {why}"))
    _check_single_thread()
    release = platform.release()
    missing: list[str] = []

    try:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        nnp = _prctl(PR_GET_NO_NEW_PRIVS) == 1
    except OSError as exc:
        nnp = False
        missing.append(f"no_new_privs: prctl failed ({os.strerror(exc.errno)})")

    abi, writable, why_landlock = None, ("/",), "needs no_new_privs"
    if nnp:
        try:
            abi, writable = _landlock(scratch)
        except OSError as exc:
            why_landlock = _landlock_error(exc, release)

    seccomp, why_seccomp = False, "needs no_new_privs"
    if nnp:
        arch = _seccomp_arch()
        if arch is None:
            why_seccomp = (f"no syscall table for {platform.machine()} "
                           f"({struct.calcsize('P') * 8}-bit, {sys.byteorder}-endian)")
        else:
            try:
                # Landlock ABI < 3 cannot stop truncate(2) by path: seccomp does instead
                _install_seccomp(_seccomp_program(arch, deny_truncate=abi is None or abi < 3))
                seccomp = True
            except OSError as exc:
                why_seccomp = f"seccomp filter refused ({os.strerror(exc.errno)}, kernel {release})"

    if abi is None:
        missing.append(f"writes: Landlock unavailable ({why_landlock})")
    if abi is None and not seccomp:
        missing.append(f"exec: Landlock unavailable ({why_landlock}) and seccomp off ({why_seccomp})")
    if not seccomp:
        tcp = "; Landlock blocks only TCP bind/connect" if abi is not None and abi >= 4 else ""
        missing.append(f"sockets: seccomp off ({why_seccomp}{tcp})")
        if abi is not None:
            missing.append(f"file metadata (chmod/chown/xattr/times): seccomp off ({why_seccomp})")
            if abi < 3:
                missing.append(f"truncate(2): Landlock ABI {abi} < 3 and seccomp off")
    if abi is not None and abi < 6:
        missing.append(f"signals and abstract unix sockets to other processes: Landlock ABI {abi} < 6")

    if abi is not None:
        # the only writable place left: temporary files must go there
        os.environ["TMPDIR"] = scratch
        if "tempfile" in sys.modules:
            sys.modules["tempfile"].tempdir = None  # forget a cached choice
    return Confinement(sys.platform, abi, seccomp, nnp, writable, tuple(missing))


# --------------------------------------------------------------------------- plumbing
PR_SET_SECCOMP = 22          # include/uapi/linux/prctl.h
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

_libc_handle = None


def _libc():
    global _libc_handle
    if _libc_handle is None:
        _libc_handle = ctypes.CDLL(None, use_errno=True)
        _libc_handle.syscall.restype = ctypes.c_long
        _libc_handle.prctl.restype = ctypes.c_int
    return _libc_handle


def _arg(a):
    return ctypes.c_long(a) if isinstance(a, int) else a


def _syscall(nr: int, *args) -> int:
    """syscall(2); OSError from errno on -1. Ints travel as longs (syscall is variadic)."""
    res = _libc().syscall(ctypes.c_long(nr), *map(_arg, args))
    if res == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return res


def _prctl(option: int, *args: int) -> int:
    args = (list(args) + [0, 0, 0, 0])[:4]
    res = _libc().prctl(ctypes.c_int(option), *(ctypes.c_ulong(a) for a in args))
    if res == -1:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return res


def _check_single_thread() -> None:
    try:
        threads = len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        threads = threading.active_count()
    if threads > 1:
        raise RuntimeError(
            f"sandbox: confine() needs a single-threaded process, this one has {threads} threads "
            "(Landlock applies per thread: call confine() before importing torch or starting threads)")


# --------------------------------------------------------------------------- Landlock
# Constants and struct layouts: include/uapi/linux/landlock.h (Linux 6.18), landlock(7).
# The three syscalls are 444-446 in the unified numbering (every architecture but alpha).
SYS_landlock_create_ruleset = 444
SYS_landlock_add_rule = 445
SYS_landlock_restrict_self = 446
LANDLOCK_CREATE_RULESET_VERSION = 1 << 0
LANDLOCK_RULE_PATH_BENEATH = 1

LANDLOCK_ACCESS_FS_EXECUTE = 1 << 0
LANDLOCK_ACCESS_FS_WRITE_FILE = 1 << 1
LANDLOCK_ACCESS_FS_READ_FILE = 1 << 2     # not handled: reads stay free
LANDLOCK_ACCESS_FS_READ_DIR = 1 << 3      # not handled
LANDLOCK_ACCESS_FS_REMOVE_DIR = 1 << 4
LANDLOCK_ACCESS_FS_REMOVE_FILE = 1 << 5
LANDLOCK_ACCESS_FS_MAKE_CHAR = 1 << 6
LANDLOCK_ACCESS_FS_MAKE_DIR = 1 << 7
LANDLOCK_ACCESS_FS_MAKE_REG = 1 << 8
LANDLOCK_ACCESS_FS_MAKE_SOCK = 1 << 9
LANDLOCK_ACCESS_FS_MAKE_FIFO = 1 << 10
LANDLOCK_ACCESS_FS_MAKE_BLOCK = 1 << 11
LANDLOCK_ACCESS_FS_MAKE_SYM = 1 << 12
LANDLOCK_ACCESS_FS_REFER = 1 << 13        # ABI 2
LANDLOCK_ACCESS_FS_TRUNCATE = 1 << 14     # ABI 3
LANDLOCK_ACCESS_FS_IOCTL_DEV = 1 << 15    # ABI 5; deliberately NOT handled: CUDA needs ioctls on /dev/nvidia*
LANDLOCK_ACCESS_NET_BIND_TCP = 1 << 0     # ABI 4
LANDLOCK_ACCESS_NET_CONNECT_TCP = 1 << 1  # ABI 4
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
LANDLOCK_SCOPE_SIGNAL = 1 << 1                # ABI 6
LANDLOCK_ABI_KNOWN = 7  # newer kernels keep every right of the ABIs below: use what we know

_FS_WRITE_V1 = (LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_REMOVE_DIR | LANDLOCK_ACCESS_FS_REMOVE_FILE
                | LANDLOCK_ACCESS_FS_MAKE_CHAR | LANDLOCK_ACCESS_FS_MAKE_DIR | LANDLOCK_ACCESS_FS_MAKE_REG
                | LANDLOCK_ACCESS_FS_MAKE_SOCK | LANDLOCK_ACCESS_FS_MAKE_FIFO | LANDLOCK_ACCESS_FS_MAKE_BLOCK
                | LANDLOCK_ACCESS_FS_MAKE_SYM)

# device files that ordinary libraries open for writing; CUDA opens /dev/nvidia* O_RDWR
_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
_DEVICE_GLOBS = ("/dev/nvidia*", "/dev/nvidiactl", "/dev/nvidia-uvm*")


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; OSError (ENOSYS: not built, EOPNOTSUPP: disabled)."""
    return _syscall(SYS_landlock_create_ruleset, None, 0, LANDLOCK_CREATE_RULESET_VERSION)


def _landlock_rights(abi: int) -> tuple[int, int, int, int, int]:
    """(handled fs, scratch grant, device grant, handled net, scoped) for an ABI version."""
    handled = LANDLOCK_ACCESS_FS_EXECUTE | _FS_WRITE_V1
    if abi >= 2:
        handled |= LANDLOCK_ACCESS_FS_REFER
    if abi >= 3:
        handled |= LANDLOCK_ACCESS_FS_TRUNCATE
    # no device nodes in scratch: root could mknod the disk there and write to it
    scratch = handled & ~(LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_MAKE_CHAR | LANDLOCK_ACCESS_FS_MAKE_BLOCK)
    # a file rule takes only file rights; open(..., "w") on /dev/null is O_TRUNC
    device = handled & (LANDLOCK_ACCESS_FS_WRITE_FILE | LANDLOCK_ACCESS_FS_TRUNCATE)
    net = LANDLOCK_ACCESS_NET_BIND_TCP | LANDLOCK_ACCESS_NET_CONNECT_TCP if abi >= 4 else 0
    scoped = LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL if abi >= 6 else 0
    return handled, scratch, device, net, scoped


def _landlock(scratch: str) -> tuple[int, tuple[str, ...]]:
    """Restrict this thread (and its future children) to writing beneath ``scratch``;
    returns (ABI used, writable paths). OSError leaves the process unrestricted."""
    abi = min(landlock_abi(), LANDLOCK_ABI_KNOWN)
    handled, scratch_rights, device_rights, net, scoped = _landlock_rights(abi)
    # struct landlock_ruleset_attr grew: handled_access_net (ABI 4), scoped (ABI 6);
    # pass only the fields this kernel knows
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    attr = ctypes.create_string_buffer(struct.pack("=QQQ", handled, net, scoped)[:size], size)
    ruleset = _syscall(SYS_landlock_create_ruleset, attr, size, 0)
    try:
        devices = list(_DEVICES) + sorted({p for g in _DEVICE_GLOBS for p in glob.glob(g)})
        rules = [(scratch, scratch_rights)] + [(p, device_rights) for p in devices if os.path.exists(p)]
        writable = []
        for path, rights in rules:
            # O_PATH: no read permission needed, nothing opened for real
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:
                if path == scratch:
                    raise
                continue  # a device file that went away since the glob
            try:
                # struct landlock_path_beneath_attr is packed: __u64 allowed_access, __s32 parent_fd
                beneath = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
                _syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, beneath, 0)
            finally:
                os.close(fd)
            writable.append(path)
        # no rule of type LANDLOCK_RULE_NET_PORT: no TCP port can be bound or connected
        _syscall(SYS_landlock_restrict_self, ruleset, 0)
    finally:
        os.close(ruleset)
    return abi, tuple(writable)


def _landlock_error(exc: OSError, release: str) -> str:
    if exc.errno == errno.ENOSYS:
        return f"kernel {release} has no Landlock"
    if exc.errno == errno.EOPNOTSUPP:
        return f"Landlock disabled at boot on kernel {release} (lsm=)"
    return f"{os.strerror(exc.errno)} on kernel {release}"


# --------------------------------------------------------------------------- seccomp
# seccomp(2), include/uapi/linux/seccomp.h, include/uapi/linux/filter.h, bpf_common.h
SYS_seccomp = {"x86_64": 317, "aarch64": 277}
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_DATA = 0x0000FFFF
BPF_LD, BPF_JMP, BPF_RET = 0x00, 0x05, 0x06
BPF_W, BPF_ABS = 0x00, 0x20
BPF_JEQ, BPF_JGE, BPF_JSET = 0x10, 0x30, 0x40
BPF_K = 0x00
# struct seccomp_data { int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]; }
SECCOMP_DATA_NR, SECCOMP_DATA_ARCH, SECCOMP_DATA_ARGS = 0, 4, 16
# include/uapi/linux/audit.h: EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000  # arch/x86/include/uapi/asm/unistd.h: x32 calls share AUDIT_ARCH_X86_64

AF_UNIX = 1
# include/uapi/linux/sched.h: clone() flags that create namespaces (unshare(2) by another door)
CLONE_NEW_ANY = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80
# ioctl(2) commands that act outside the process through an fd opened for reading:
# TIOCSTI/TIOCLINUX push keystrokes into an inherited terminal (CVE-2017-5226 in bubblewrap);
# FS_IOC_SETFLAGS / FS_IOC_FSSETXATTR set inode flags (immutable, append-only) on any file
DENIED_IOCTLS = {"TIOCSTI": 0x5412, "TIOCLINUX": 0x541C, "FS_IOC_SETFLAGS": 0x40086602,
                 "FS_IOC32_SETFLAGS": 0x40046602, "FS_IOC_FSSETXATTR": 0x401C5820}

# Syscall numbers: arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h
# (aarch64); 424 and up are the same everywhere. None: the call does not exist there.
_NR = {  # name: (x86_64, aarch64)
    # run programs
    "execve": (59, 221), "execveat": (322, 281),
    # network (socketpair is filtered separately: AF_UNIX pairs stay allowed)
    "socket": (41, 198), "connect": (42, 203), "bind": (49, 200), "listen": (50, 201),
    "accept": (43, 202), "accept4": (288, 242),
    # io_uring runs its requests in kernel workers that seccomp never sees
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    # other processes' memory and file descriptors
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438),
    # mounts and namespaces, old and new mount API
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "unshare": (272, 97), "setns": (308, 268), "open_tree": (428, 428), "move_mount": (429, 429),
    "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "open_tree_attr": (467, 467),
    # the kernel itself
    "kexec_load": (246, 104), "kexec_file_load": (320, 294), "init_module": (175, 105),
    "finit_module": (313, 273), "delete_module": (176, 106), "bpf": (321, 280),
    "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    # metadata writes Landlock does not restrict (landlock.h: chmod, chown, setxattr, utime)
    "chmod": (90, None), "fchmod": (91, 52), "fchmodat": (268, 53), "fchmodat2": (452, 452),
    "chown": (92, None), "fchown": (93, 55), "lchown": (94, None), "fchownat": (260, 54),
    "setxattr": (188, 5), "lsetxattr": (189, 6), "fsetxattr": (190, 7), "setxattrat": (463, 463),
    "removexattr": (197, 14), "lremovexattr": (198, 15), "fremovexattr": (199, 16), "removexattrat": (466, 466),
    "utime": (132, None), "utimes": (235, None), "futimesat": (261, None), "utimensat": (280, 88),
    "file_setattr": (469, 469),
    # host state a root child could change (harmless to deny to anyone)
    "reboot": (169, 142), "swapon": (167, 224), "swapoff": (168, 225), "sethostname": (170, 161),
    "setdomainname": (171, 162), "settimeofday": (164, 170), "clock_settime": (227, 112),
    "acct": (163, 89), "quotactl": (179, 60), "quotactl_fd": (443, 443), "iopl": (172, None),
    "ioperm": (173, None), "open_by_handle_at": (304, 265),
}
# Left allowed on purpose: personality(2) (its flags matter at execve, which is denied;
# libraries query it), and everything else: the job is torch, onnxruntime, openvino.
_SPECIAL = {"socketpair": (53, 199), "ioctl": (16, 29), "clone": (56, 220), "clone3": (435, 435),
            "truncate": (76, 45)}
_ARCHES = ("x86_64", "aarch64")


def denied_syscalls(arch: str) -> dict[str, int]:
    """Name -> number of every syscall the filter answers with EPERM outright on ``arch``."""
    col = _ARCHES.index(arch)
    return {name: nrs[col] for name, nrs in _NR.items() if nrs[col] is not None}


def _seccomp_arch() -> str | None:
    """Our syscall table for this process: a 32-bit or big-endian Python on a 64-bit
    kernel makes other syscalls than platform.machine() suggests."""
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if machine in _ARCHES and struct.calcsize("P") == 8 and sys.byteorder == "little":
        return machine
    return None


def _seccomp_program(arch: str, deny_truncate: bool) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k) rows of struct sock_filter.

    Jumps are relative (a BPF jump skips jt/jf rows), so rows are written with labels and
    resolved at the end; every jump goes forward.
    """
    nr = {name: n[_ARCHES.index(arch)] for name, n in _SPECIAL.items()}
    prog: list = []

    def stmt(code, k):
        prog.append((code, 0, 0, k))

    def jump(op, k, jt, jf):  # jt/jf: a label or None (= the next row)
        prog.append((BPF_JMP | op | BPF_K, jt, jf, k))

    def label(name):
        prog.append(name)

    # 1. the architecture: syscall numbers mean nothing without it (i386 via int 0x80 on
    #    x86_64 reports AUDIT_ARCH_I386 and its own numbers); deny everything else
    stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARCH)
    jump(BPF_JEQ, AUDIT_ARCH[arch], None, "deny")
    stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_NR)
    if arch == "x86_64":
        # 2. x32 calls carry AUDIT_ARCH_X86_64 with bit 30 set and their own numbers
        jump(BPF_JGE, X32_SYSCALL_BIT, "deny", None)
    # 3. calls allowed with some arguments
    jump(BPF_JEQ, nr["socketpair"], "socketpair", None)
    jump(BPF_JEQ, nr["ioctl"], "ioctl", None)
    jump(BPF_JEQ, nr["clone"], "clone", None)
    # clone3 passes its flags in memory, out of BPF's reach: ENOSYS makes glibc fall back
    # to clone(), whose flags we can see
    jump(BPF_JEQ, nr["clone3"], "enosys", None)
    # 4. calls denied outright
    for number in denied_syscalls(arch).values():
        jump(BPF_JEQ, number, "deny", None)
    if deny_truncate:
        jump(BPF_JEQ, nr["truncate"], "deny", None)
    stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
    # the low 32 bits of args[i] (little-endian): the kernel reads these as int
    label("socketpair")
    stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARGS + 0 * 8)          # domain
    jump(BPF_JEQ, AF_UNIX, "allow", "deny")
    label("ioctl")
    stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARGS + 1 * 8)          # request (unsigned int)
    for cmd in DENIED_IOCTLS.values():
        jump(BPF_JEQ, cmd, "deny", None)
    stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
    label("clone")
    stmt(BPF_LD | BPF_W | BPF_ABS, SECCOMP_DATA_ARGS + 0 * 8)          # flags, first on both arches
    jump(BPF_JSET, CLONE_NEW_ANY, "deny", "allow")
    label("allow")
    stmt(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)
    label("enosys")
    stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (errno.ENOSYS & SECCOMP_RET_DATA))
    label("deny")
    stmt(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (errno.EPERM & SECCOMP_RET_DATA))

    rows = [r for r in prog if not isinstance(r, str)]
    where, i = {}, 0
    for r in prog:
        if isinstance(r, str):
            where[r] = i
        else:
            i += 1
    out = []
    for i, (code, jt, jf, k) in enumerate(rows):
        if (code & 0x07) == BPF_JMP:
            jt = 0 if jt is None else where[jt] - i - 1
            jf = 0 if jf is None else where[jf] - i - 1
            if not (0 <= jt <= 255 and 0 <= jf <= 255):
                raise AssertionError(f"seccomp: jump out of range at row {i}")
        out.append((code, jt, jf, k))
    return out


class _SockFilter(ctypes.Structure):  # struct sock_filter, include/uapi/linux/filter.h
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):  # struct sock_fprog
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _install_seccomp(rows: list[tuple[int, int, int, int]]) -> None:
    filters = (_SockFilter * len(rows))(*(_SockFilter(*r) for r in rows))
    prog = _SockFprog(len(rows), filters)
    try:
        # TSYNC: every thread gets the filter (there is only one, checked above)
        _syscall(SYS_seccomp[_seccomp_arch()], SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC,
                 ctypes.byref(prog))
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
        _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))  # kernels before 3.17
