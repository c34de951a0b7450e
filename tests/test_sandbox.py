"""The containment primitive (poolexport/_untrusted/sandbox.py): confine() stops writes
outside scratch, exec and sockets, and the real job (torch, torch.export, onnxruntime with
the poolexport custom-op library, openvino) still runs inside.

Confinement is irreversible, so every test runs a fresh ``python -c`` child that loads
sandbox.py by path (as the real child must: ``import poolexport`` imports torch, and
confine() refuses once torch's threads exist), calls confine(scratch) first, tries things
and prints one JSON line of results; the parent checks them and the file system.
Denials are compared by errno: Landlock answers EACCES (EXDEV for reparenting), the
seccomp filter EPERM, so a test can tell which layer stopped what.
"""
import ctypes
import json
import os
import platform
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

SANDBOX = Path(__file__).resolve().parents[1] / "poolexport" / "_untrusted" / "sandbox.py"
MACHINE = platform.machine().lower()


def _kernel_landlock_abi() -> int:
    """Asked of the kernel directly, not through the code under test (a broken sandbox.py
    must fail these tests, not skip them)."""
    if not sys.platform.startswith("linux") or MACHINE not in ("x86_64", "aarch64"):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return max(int(libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(1))), 0)


def _kernel_has_seccomp_filter() -> bool:
    try:
        return "Seccomp:" in Path("/proc/self/status").read_text()
    except OSError:
        return False


KERNEL_ABI = _kernel_landlock_abi()
EXPECTED_ABI = min(KERNEL_ABI, 7)

if not sys.platform.startswith("linux"):
    SKIP = f"Landlock and seccomp are Linux features; this is {sys.platform}"
elif MACHINE not in ("x86_64", "aarch64") or struct.calcsize("P") != 8:
    SKIP = ("sandbox.py has seccomp syscall tables for 64-bit x86_64/aarch64 only, "
            f"this is {MACHINE} ({struct.calcsize('P') * 8}-bit)")
elif not KERNEL_ABI:
    SKIP = f"kernel {platform.release()} has no Landlock (disabled or too old)"
elif not _kernel_has_seccomp_filter():
    SKIP = f"kernel {platform.release()} has no seccomp"
else:
    SKIP = None
linux = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")

PRELUDE = f"""
import ctypes, errno, json, os, sys
import importlib.util
spec = importlib.util.spec_from_file_location("_px_sandbox", {str(SANDBOX)!r})
sb = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = sb
spec.loader.exec_module(sb)
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {{}}

def attempt(fn, *args, **kwargs):
    '''"ok", or the errno name an OSError carried.'''
    try:
        fn(*args, **kwargs)
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def raw(nr, *args):
    '''A raw syscall: "ok" or the errno name.'''
    r = libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    return "ok" if r != -1 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))

def write(path, text="x"):
    with open(path, "w") as f:
        f.write(text)
"""


def run_child(body: str, scratch: Path, *, confine: str | None = "sb.confine(SCRATCH)", pass_fds=(),
              timeout=120) -> dict:
    """Run ``body`` in a fresh interpreter, after ``confine`` (None: not confined), and
    return the ``out`` dict it filled."""
    code = (PRELUDE + f"SCRATCH = {str(scratch)!r}\n"
            + (f"conf = {confine}\nout['describe'] = conf.describe()\nout['enforced'] = conf.enforced()\n"
               if confine else "")
            + textwrap.dedent(body) + "\nprint('RESULT ' + json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          pass_fds=pass_fds, cwd=scratch.parent)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"child failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1][len("RESULT "):])


def static_exit_elf(path: Path) -> Path:
    """A static executable that exits 42: no ELF interpreter to open, so Landlock's
    EXECUTE right on it alone decides (a dynamic one also needs EXECUTE on ld.so)."""
    machine, text = {"x86_64": (62, bytes.fromhex("bf2a000000" "b83c000000" "0f05")),  # exit(42)
                     "aarch64": (183, struct.pack("<3I", 0xD2800540, 0xD2800BA8, 0xD4000001))}[MACHINE]
    base, headers = 0x400000, 64 + 56
    size = headers + len(text)
    elf = (b"\x7fELF\x02\x01\x01" + bytes(9)
           + struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, base + headers, 64, 0, 0, 64, 56, 1, 0, 0, 0)
           + struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000) + text)
    path.write_bytes(elf)
    path.chmod(0o755)
    return path


@pytest.fixture
def scratch(tmp_path):
    path = tmp_path / "a"
    path.mkdir()
    return path


# --------------------------------------------------------------------------- writes
@linux
def test_writes_only_inside_scratch(scratch, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("precious")
    os.chmod(victim, 0o644)
    in_tmp = Path("/tmp") / f"poolexport-sandbox-{uuid.uuid4().hex}"
    out = run_child(f"""
        out["inside"] = attempt(write, SCRATCH + "/f.txt")
        out["inside_dir"] = attempt(os.makedirs, SCRATCH + "/sub/deeper")
        out["inside_nested"] = attempt(write, SCRATCH + "/sub/deeper/g.txt")
        out["inside_rename"] = attempt(os.rename, SCRATCH + "/f.txt", SCRATCH + "/sub/f.txt")
        out["outside"] = attempt(write, {str(outside / 'new.txt')!r})
        out["tmp"] = attempt(write, {str(in_tmp)!r})
        out["mkdir"] = attempt(os.mkdir, {str(outside / 'd')!r})
        out["symlink"] = attempt(os.symlink, "/etc/passwd", {str(outside / 'l')!r})
        out["rename_out"] = attempt(os.rename, SCRATCH + "/sub/f.txt", {str(outside / 'moved.txt')!r})
        out["link_out"] = attempt(os.link, SCRATCH + "/sub/f.txt", {str(outside / 'linked.txt')!r})
        # the other way round: a hard link to an outside file inside scratch would make it writable
        out["link_in"] = attempt(os.link, {str(victim)!r}, SCRATCH + "/victim.txt")
        out["truncate"] = attempt(os.truncate, {str(victim)!r}, 0)
        out["open_rw"] = attempt(open, {str(victim)!r}, "r+")
        out["unlink"] = attempt(os.unlink, {str(victim)!r})
        out["chmod"] = attempt(os.chmod, {str(victim)!r}, 0o777)
        out["setxattr"] = attempt(os.setxattr, {str(victim)!r}, "user.px", b"1")
        out["utime"] = attempt(os.utime, {str(victim)!r}, (0, 0))
        # a device node in scratch would open the disk behind Landlock's back (root can mknod)
        out["mknod"] = attempt(os.mknod, SCRATCH + "/disk", 0o600 | 0o060000, os.makedev(7, 0))
        out["read"] = open({str(victim)!r}).read()
    """, scratch)
    assert out["enforced"], out["describe"]
    assert out["inside"] == out["inside_dir"] == out["inside_nested"] == out["inside_rename"] == "ok"
    assert (scratch / "sub" / "f.txt").exists() and (scratch / "sub" / "deeper" / "g.txt").exists()
    assert out["outside"] == out["tmp"] == out["mkdir"] == out["symlink"] == "EACCES"
    assert out["rename_out"] in ("EACCES", "EXDEV") and out["link_out"] in ("EACCES", "EXDEV")
    assert out["link_in"] in ("EACCES", "EXDEV")
    assert out["truncate"] == out["open_rw"] == out["unlink"] == "EACCES"
    assert out["chmod"] == out["setxattr"] == out["utime"] == "EPERM"  # the seccomp layer
    assert out["mknod"] != "ok"
    assert out["read"] == "precious"  # reads stay free
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]
    assert not in_tmp.exists() and not (scratch / "victim.txt").exists() and not (scratch / "disk").exists()
    assert victim.read_text() == "precious" and stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert victim.stat().st_mtime > 0


@linux
def test_writable_set_boundary(tmp_path):
    """Rules are on inodes, not path prefixes: scratch "/…/a" grants nothing in "/…/ax"
    or in scratch's parent; the device files libraries open for writing stay writable."""
    scratch = tmp_path / "a"
    sibling = tmp_path / "ax"
    scratch.mkdir()
    sibling.mkdir()
    out = run_child(f"""
        out["devnull"] = attempt(write, "/dev/null")
        out["devnull_append"] = attempt(open, "/dev/null", "ab")
        out["urandom"] = attempt(open, "/dev/urandom", "wb")
        out["sibling"] = attempt(write, {str(sibling / 'f')!r})
        out["parent"] = attempt(write, {str(tmp_path / 'f')!r})
        out["parent_via_dotdot"] = attempt(write, SCRATCH + "/../f")
        out["scratch"] = attempt(write, SCRATCH + "/f")
        out["writable"] = list(conf.writable)
    """, scratch)
    assert out["devnull"] == out["devnull_append"] == out["urandom"] == out["scratch"] == "ok"
    assert out["sibling"] == out["parent"] == out["parent_via_dotdot"] == "EACCES"
    assert not (sibling / "f").exists() and not (tmp_path / "f").exists()
    assert out["writable"][0] == os.path.realpath(scratch)
    assert str(tmp_path) not in out["writable"] and str(sibling) not in out["writable"]


# --------------------------------------------------------------------------- exec
@linux
def test_exec_blocked(scratch):
    marker = scratch / "marker"
    exit42 = static_exit_elf(scratch / "exit42")
    assert subprocess.run([exit42]).returncode == 42  # it runs outside the sandbox
    out = run_child(f"""
        import subprocess
        out["system"] = os.system("touch {marker}")
        out["subprocess"] = attempt(subprocess.run, ["/bin/true"])
        out["execv"] = attempt(os.execv, "/bin/sh", ["sh", "-c", "touch {marker}"])
        out["python"] = attempt(subprocess.run, [sys.executable, "-c", "open({str(marker)!r}, 'w')"])
        out["static_in_scratch"] = attempt(os.execv, {str(exit42)!r}, ["exit42"])
    """, scratch)
    assert out["system"] != 0  # the shell itself never started
    assert out["subprocess"] == out["execv"] == out["python"] == out["static_in_scratch"] == "EPERM"
    assert not marker.exists()


# --------------------------------------------------------------------------- sockets
@linux
def test_sockets_blocked(scratch):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    # a socket made before confinement, handed down: connect() itself must be refused
    spare = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        out = run_child(f"""
            import socket
            out["inet"] = attempt(socket.socket, socket.AF_INET, socket.SOCK_STREAM)
            out["inet_udp"] = attempt(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
            out["inet6"] = attempt(socket.socket, socket.AF_INET6, socket.SOCK_STREAM)
            out["unix"] = attempt(socket.socket, socket.AF_UNIX, socket.SOCK_STREAM)
            out["create_connection"] = attempt(socket.create_connection, ("127.0.0.1", {port}), 2)
            inherited = socket.socket(fileno={spare.fileno()})
            out["inherited_connect"] = attempt(inherited.connect, ("127.0.0.1", {port}))
            pair = socket.socketpair()  # AF_UNIX pairs stay allowed: they reach nothing outside
            pair[0].sendall(b"hi")
            out["socketpair"] = pair[1].recv(2).decode()
        """, scratch, pass_fds=(spare.fileno(),))
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing arrived
    finally:
        listener.close()
        spare.close()
    assert out["inet"] == out["inet_udp"] == out["inet6"] == out["unix"] == out["create_connection"] == "EPERM"
    assert out["inherited_connect"] in ("EPERM", "EACCES")
    assert out["socketpair"] == "hi"


# --------------------------------------------------------------------------- the filter, call by call
# x86_64 numbers from arch/x86/entry/syscalls/syscall_64.tbl, written here independently
# of sandbox.py's table so that a dropped or wrong entry there fails this test
DENIED_X86_64 = {
    "execve": 59, "execveat": 322, "socket": 41, "connect": 42, "bind": 49, "listen": 50, "accept": 43,
    "accept4": 288, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "ptrace": 101,
    "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438, "mount": 165, "umount2": 166,
    "pivot_root": 155, "chroot": 161, "unshare": 272, "setns": 308, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "kexec_load": 246,
    "kexec_file_load": 320, "init_module": 175, "finit_module": 313, "delete_module": 176, "bpf": 321,
    "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248, "request_key": 249,
    "chmod": 90, "fchmod": 91, "fchmodat": 268, "fchmodat2": 452, "chown": 92, "fchown": 93, "lchown": 94,
    "fchownat": 260, "setxattr": 188, "lsetxattr": 189, "fsetxattr": 190, "removexattr": 197,
    "lremovexattr": 198, "fremovexattr": 199, "utime": 132, "utimes": 235, "futimesat": 261, "utimensat": 280,
    "reboot": 169, "swapon": 167, "swapoff": 168, "sethostname": 170, "setdomainname": 171,
    "settimeofday": 164, "clock_settime": 227, "acct": 163, "iopl": 172, "ioperm": 173,
    "open_by_handle_at": 304,
}


@linux
def test_denied_syscalls_answer_eperm(scratch):
    """Every denied call, made raw with all arguments -1 (bad fds, bad pointers, unknown
    flags: harmless even unfiltered), must come back EPERM from the filter rather than the
    kernel's own EBADF/EFAULT/EINVAL."""
    table = DENIED_X86_64 if MACHINE == "x86_64" else _load_module("_px_sandbox_table").denied_syscalls("aarch64")
    out = run_child(f"""
        import fcntl, termios
        master, slave = os.openpty()  # before confine(): /dev/ptmx is not writable after
        conf = sb.confine(SCRATCH)
        out["enforced"], out["describe"] = conf.enforced(), conf.describe()
        table = {table!r}
        out["answers"] = {{name: raw(nr, *[-1] * 6) for name, nr in table.items()}}
        out["socketpair_inet"] = raw(53 if {MACHINE!r} == "x86_64" else 199, 2, 1, 0, -1)  # AF_INET pair
        # clone() making a namespace: the filter reads its flags (CLONE_NEWUSER | SIGCHLD)
        r = libc.syscall(ctypes.c_long(56 if {MACHINE!r} == "x86_64" else 220), ctypes.c_long(0x10000000 | 17),
                         ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
        if r == 0:
            os._exit(0)  # the child, had the filter let it through
        out["clone_newuser"] = "ok" if r > 0 else errno.errorcode[ctypes.get_errno()]
        if r > 0:
            os.waitpid(r, 0)
        out["clone3"] = raw(435, -1, -1)  # ENOSYS: glibc then falls back to clone()
        # keystrokes pushed into a terminal the child inherited (bubblewrap's CVE-2017-5226)
        out["tiocsti"] = attempt(fcntl.ioctl, slave, termios.TIOCSTI, b"x")
        out["tiocgwinsz"] = attempt(fcntl.ioctl, slave, termios.TIOCGWINSZ, b"\\0" * 8)
        out["kill_parent"] = attempt(os.kill, os.getppid(), 0)
        out["kill_self"] = attempt(os.kill, os.getpid(), 0)
    """, scratch, confine=None)
    assert out["enforced"], out["describe"]
    wrong = {name: answer for name, answer in out["answers"].items() if answer != "EPERM"}
    assert not wrong, f"not denied by the filter: {wrong}"
    assert out["socketpair_inet"] == "EPERM"
    assert out["clone_newuser"] == "EPERM"
    assert out["clone3"] == "ENOSYS"
    assert out["tiocsti"] == "EPERM" and out["tiocgwinsz"] == "ok"
    assert out["kill_self"] == "ok"
    if EXPECTED_ABI >= 6:  # LANDLOCK_SCOPE_SIGNAL: no signals out of the domain
        assert out["kill_parent"] == "EPERM"


@linux
@pytest.mark.skipif(MACHINE != "x86_64", reason="x32 and i386 entry points exist on x86_64 only")
def test_other_x86_abis_denied(scratch):
    """The filter checks seccomp_data.arch and the x32 bit: socket() through the i386
    entry (int 0x80, number 359) or the x32 one (0x40000000 | 41) must not get through."""
    # mov eax, NR; push rbx; mov ebx, 2 (AF_INET); mov ecx, 1 (SOCK_STREAM); xor edx, edx;
    # int 0x80; pop rbx; ret -- the result comes back in eax
    body = textwrap.dedent("""
        import mmap
        def int80(nr, ebx=0, ecx=0):
            code = (b"\\x53\\xb8" + nr.to_bytes(4, "little") + b"\\xbb" + ebx.to_bytes(4, "little")
                    + b"\\xb9" + ecx.to_bytes(4, "little") + b"\\x31\\xd2\\xcd\\x80\\x5b\\xc3")
            page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            page.write(code)
            fn = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
            return fn()
    """)
    try:  # i386 getpid (20), unconfined: a kernel without i386 emulation kills the child
        probe = run_child(body + "out['pid'] = int80(20) == os.getpid()\n", scratch, confine=None)
    except AssertionError:
        probe = {"pid": False}
    out = run_child(body + textwrap.dedent(f"""
        out["x32_socket"] = raw(0x40000000 | 41, 2, 1, 0)
        out["i386_socket"] = int80(359, 2, 1) if {probe['pid']!r} else None
    """), scratch)
    assert out["x32_socket"] == "EPERM"
    if not probe["pid"]:
        pytest.skip("this kernel has no i386 emulation (int 0x80 does not work)")
    assert out["i386_socket"] == -1  # -EPERM; a descriptor (>= 0) means it got through


# --------------------------------------------------------------------------- each layer on its own
@linux
def test_landlock_layer_alone(scratch):
    """Landlock without the filter still stops exec (also of a program inside scratch) and
    writes (EACCES, not EPERM), and with ABI >= 4 TCP bind/connect, with ABI >= 6 abstract
    unix sockets out of the domain."""
    exit42 = static_exit_elf(scratch / "exit42")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    name = f"\0poolexport-sandbox-{uuid.uuid4().hex}"
    abstract.bind(name)
    abstract.listen(1)
    abstract.setblocking(False)
    try:
        out = run_child(f"""
            import socket
            sb._prctl(sb.PR_SET_NO_NEW_PRIVS, 1)
            out["abi"], out["writable"] = sb._landlock(SCRATCH)
            out["execv"] = attempt(os.execv, "/bin/true", ["true"])
            out["execv_scratch"] = attempt(os.execv, {str(exit42)!r}, ["exit42"])  # exec'd, it would exit 42
            out["outside"] = attempt(write, {str(scratch.parent / 'f')!r})
            out["inside"] = attempt(write, SCRATCH + "/f")
            s = socket.socket()
            out["tcp_connect"] = attempt(s.connect, ("127.0.0.1", {listener.getsockname()[1]}))
            out["tcp_bind"] = attempt(socket.socket().bind, ("127.0.0.1", 0))
            u = socket.socket(socket.AF_UNIX)
            out["abstract_connect"] = attempt(u.connect, {name!r})
        """, scratch, confine=None)
        with pytest.raises(BlockingIOError):
            listener.accept()
        if EXPECTED_ABI >= 6:
            with pytest.raises(BlockingIOError):
                abstract.accept()
    finally:
        listener.close()
        abstract.close()
    assert out["abi"] == EXPECTED_ABI
    assert out["execv"] == out["execv_scratch"] == out["outside"] == "EACCES" and out["inside"] == "ok"
    assert not (scratch.parent / "f").exists()
    if EXPECTED_ABI >= 4:
        assert out["tcp_connect"] == out["tcp_bind"] == "EACCES"
    if EXPECTED_ABI >= 6:
        assert out["abstract_connect"] == "EPERM"


@linux
def test_seccomp_layer_alone(scratch):
    """The filter without Landlock stops exec and sockets (EPERM) but is no write barrier."""
    out = run_child(f"""
        import socket, subprocess
        sb._prctl(sb.PR_SET_NO_NEW_PRIVS, 1)
        sb._install_seccomp(sb._seccomp_program(sb._seccomp_arch(), deny_truncate=False))
        out["execv"] = attempt(os.execv, "/bin/true", ["true"])
        out["subprocess"] = attempt(subprocess.run, ["/bin/true"])
        out["socket"] = attempt(socket.socket)
        out["outside"] = attempt(write, {str(scratch.parent / 'f')!r})
    """, scratch, confine=None)
    assert out["execv"] == out["subprocess"] == out["socket"] == "EPERM"
    assert out["outside"] == "ok"


def _load_module(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, SANDBOX)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("abi", range(1, 8))
def test_landlock_rights_per_abi(abi):
    """The masks per ABI, against bit values copied from include/uapi/linux/landlock.h:
    what a kernel of that ABI accepts, reads never handled, no EXECUTE or device nodes
    granted anywhere, IOCTL_DEV left alone (CUDA)."""
    (execute, write_file, read_file, read_dir, remove_dir, remove_file, make_char, make_dir, make_reg,
     make_sock, make_fifo, make_block, make_sym, refer, truncate, ioctl_dev) = (1 << i for i in range(16))
    writes = (write_file | remove_dir | remove_file | make_char | make_dir | make_reg | make_sock | make_fifo
              | make_block | make_sym | (refer if abi >= 2 else 0) | (truncate if abi >= 3 else 0))
    handled, scratch_rights, device_rights, net, scoped = _load_module("_px_sandbox_rights")._landlock_rights(abi)
    assert handled == execute | writes
    assert scratch_rights == writes & ~(make_char | make_block)
    assert device_rights == write_file | (truncate if abi >= 3 else 0)
    assert net == (0b11 if abi >= 4 else 0)  # BIND_TCP | CONNECT_TCP
    assert scoped == (0b11 if abi >= 6 else 0)  # ABSTRACT_UNIX_SOCKET | SIGNAL
    assert not handled & (read_file | read_dir | ioctl_dev)


# --------------------------------------------------------------------------- the real job still works
@linux
def test_real_job_runs_inside(scratch):
    """torch, torch.export, onnxruntime, the project's custom-op library (dlopen'ed by
    ORT), poolexport's own exporter and openvino, all after confine()."""
    out = run_child("""
        import torch
        x = torch.randn(1, 3, 16, 16)
        conv = torch.nn.Conv2d(3, 4, 3)
        out["conv"] = list(conv(x).shape)

        class Tiny(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 4, 3)

            def forward(self, x):
                return self.conv(x).relu()

        program = torch.export.export(Tiny(), (x,))
        out["export_nodes"] = sum(1 for n in program.graph.nodes if n.op == "call_function")

        import numpy as np
        import onnxruntime as ort
        from onnx import TensorProto, helper
        relu = helper.make_model(
            helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "relu",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])]),
            opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
        sess = ort.InferenceSession(relu.SerializeToString(), providers=["CPUExecutionProvider"])
        out["ort"] = sess.run(None, {"X": np.array([-1, 2], np.float32)})[0].tolist()

        import poolexport
        from poolexport import ort as pxort
        from poolexport.onnx.export import export_model
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), poolexport.nn.SoftPool2d(2)).eval()
        proto = export_model(net, x, target="ort")  # writes its temporary file under scratch (TMPDIR)
        out["ops"] = [n.op_type for n in proto.graph.node]
        y = pxort.session(proto.SerializeToString()).run(None, {"input": x.numpy()})[0]
        out["custom_op_error"] = float(np.abs(y - net(x).detach().numpy()).max())
        out["library"] = pxort.get_library_path()

        try:
            import openvino as ov
        except ImportError:
            out["openvino"] = None
        else:
            import onnx
            onnx.save(relu, SCRATCH + "/relu.onnx")
            core = ov.Core()
            compiled = core.compile_model(SCRATCH + "/relu.onnx", "CPU")
            out["openvino"] = compiled(np.array([-1, 2], np.float32))[compiled.output(0)].tolist()
        out["threads"] = len(os.listdir("/proc/self/task"))
    """, scratch, timeout=300)
    assert out["enforced"], out["describe"]
    assert out["conv"] == [1, 4, 14, 14] and out["export_nodes"] >= 2
    assert out["ort"] == [0.0, 2.0]
    assert "SoftPool" in out["ops"] and out["custom_op_error"] < 1e-5, out
    assert out["openvino"] in (None, [0.0, 2.0])
    assert out["threads"] > 1  # thread creation survives the clone/clone3 rules


# --------------------------------------------------------------------------- the API
@linux
def test_refuses_with_threads_running(scratch, tmp_path):
    out = run_child(f"""
        import threading
        stop = threading.Event()
        t = threading.Thread(target=stop.wait)
        t.start()
        try:
            sb.confine(SCRATCH)
            out["raised"] = None
        except RuntimeError as e:
            out["raised"] = str(e)
        stop.set()
        t.join()
        # nothing was applied: no_new_privs unset, writes anywhere still possible
        out["nnp"] = sb._prctl(sb.PR_GET_NO_NEW_PRIVS)
        out["outside"] = attempt(write, {str(tmp_path / 'after')!r})
    """, scratch, confine=None)
    assert out["raised"] and "thread" in out["raised"]
    assert out["nnp"] == 0 and out["outside"] == "ok"


@linux
def test_describe_and_fields(scratch):
    out = run_child("""
        out["fields"] = [conf.platform, conf.landlock_abi, conf.seccomp, conf.no_new_privs, list(conf.missing)]
        out["status"] = [l.split(":", 1)[1].strip() for l in open("/proc/self/status")
                         if l.startswith(("NoNewPrivs:", "Seccomp:"))]
        out["tmpdir"] = os.environ.get("TMPDIR")
    """, scratch)
    line = out["describe"]
    assert out["enforced"] and "\n" not in line
    assert os.path.realpath(scratch) in line and "Landlock" in line and "seccomp" in line
    assert f"ABI {EXPECTED_ABI}" in line
    assert "no exec" in line and "no sockets" in line
    platform_, abi, seccomp, nnp, missing = out["fields"]
    assert platform_ == sys.platform and abi == EXPECTED_ABI and seccomp and nnp
    assert out["status"] == ["1", "2"]  # NoNewPrivs 1, Seccomp 2 (filter mode): what the kernel says
    assert out["tmpdir"] == os.path.realpath(scratch)
    if EXPECTED_ABI >= 6:
        assert missing == []


@linux
@pytest.mark.parametrize("abi", [1, 2, 3, 4, 5, 6])
def test_older_landlock_abis(scratch, tmp_path, abi):
    """A kernel with an older ABI gets the rights it knows (struct sizes 8/16/24 bytes) and
    still confines; what it cannot do is listed in ``missing``."""
    if abi > KERNEL_ABI:
        pytest.skip(f"the kernel has Landlock ABI {KERNEL_ABI}")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = run_child(f"""
        sb.landlock_abi = lambda: {abi}
        conf = sb.confine(SCRATCH)
        out["enforced"], out["abi"], out["missing"] = conf.enforced(), conf.landlock_abi, list(conf.missing)
        out["describe"] = conf.describe()
        out["inside"] = attempt(write, SCRATCH + "/f")
        out["outside"] = attempt(write, {str(tmp_path / 'new')!r})
        out["truncate"] = attempt(os.truncate, {str(victim)!r}, 0)
        out["execv"] = attempt(os.execv, "/bin/true", ["true"])
        out["devnull"] = attempt(write, "/dev/null")
    """, scratch, confine=None)
    assert out["enforced"] and out["abi"] == abi and f"ABI {abi}" in out["describe"]
    assert out["inside"] == out["devnull"] == "ok"
    assert out["outside"] == "EACCES" and out["execv"] == "EPERM"
    # ABI 3 handles truncate itself; below, the filter denies truncate(2)
    assert out["truncate"] == ("EACCES" if abi >= 3 else "EPERM")
    assert victim.read_text() == "precious"
    assert any(m.startswith("signals") for m in out["missing"]) == (abi < 6)


@linux
@pytest.mark.parametrize("abi", [2, 3, 4])
def test_seccomp_refused_reports_what_landlock_alone_misses(scratch, abi):
    """Without the seccomp filter, Landlock below ABI 3 cannot stop truncate(2): ``missing``
    says so exactly below 3 (ABI 3 added LANDLOCK_ACCESS_FS_TRUNCATE), and always lists
    sockets and file metadata."""
    if abi > KERNEL_ABI:
        pytest.skip(f"the kernel has Landlock ABI {KERNEL_ABI}")
    out = run_child(f"""
        sb.landlock_abi = lambda: {abi}
        def refuse(program):
            raise OSError(22, "refused for the test")
        sb._install_seccomp = refuse
        conf = sb.confine(SCRATCH)
        out["missing"] = list(conf.missing)
    """, scratch, confine=None)
    missing = out["missing"]
    assert any(m.startswith("sockets: seccomp off") for m in missing), missing
    assert any(m.startswith("file metadata") for m in missing), missing
    assert any(m.startswith("truncate(2)") for m in missing) == (abi < 3), missing


@linux
def test_landlock_unavailable_is_reported(scratch, tmp_path):
    out = run_child(f"""
        def no_landlock():
            raise OSError(errno.ENOSYS, "Function not implemented")
        sb.landlock_abi = no_landlock
        conf = sb.confine(SCRATCH)
        out["enforced"], out["abi"], out["missing"] = conf.enforced(), conf.landlock_abi, list(conf.missing)
        out["describe"], out["writable"] = conf.describe(), list(conf.writable)
        out["outside"] = attempt(write, {str(tmp_path / 'f')!r})
        out["execv"] = attempt(os.execv, "/bin/true", ["true"])
    """, scratch, confine=None)
    assert not out["enforced"] and out["abi"] is None and out["writable"] == ["/"]
    assert any(m.startswith("writes: Landlock unavailable") and "no Landlock" in m for m in out["missing"])
    assert out["describe"].startswith("sandbox: NOT enforced on linux (seccomp only): writes:")
    assert out["outside"] == "ok" and out["execv"] == "EPERM"  # the filter alone still stops exec


@linux
def test_unknown_architecture_gets_no_filter(scratch):
    out = run_child("""
        import socket
        sb._seccomp_arch = lambda: None
        conf = sb.confine(SCRATCH)
        out["enforced"], out["seccomp"], out["missing"] = conf.enforced(), conf.seccomp, list(conf.missing)
        out["describe"] = conf.describe()
        out["socket"] = attempt(socket.socket, socket.AF_UNIX)
    """, scratch, confine=None)
    assert not out["enforced"] and not out["seccomp"]
    assert any(m.startswith("sockets: seccomp off (no syscall table") for m in out["missing"])
    assert "Landlock ABI" in out["describe"] and "NOT enforced" in out["describe"]
    assert out["socket"] == "ok"


def test_other_platforms_enforce_nothing(scratch, monkeypatch):
    """Off Linux confine() returns at once (safe to call in this process)."""
    module = _load_module("_px_sandbox_darwin")
    monkeypatch.setattr(sys, "platform", "darwin")
    conf = module.confine(scratch)
    assert conf.platform == "darwin" and not conf.enforced()
    assert conf.landlock_abi is None and not conf.seccomp and not conf.no_new_privs
    assert [m.split(":")[0] for m in conf.missing] == ["writes", "exec", "sockets"]
    assert conf.describe().startswith("sandbox: NOT enforced on darwin: writes: ")


# ---------------------------------------------------------------- constants from their definitions
def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """include/uapi/asm-generic/ioctl.h: dir << 30 | size << 16 | type << 8 | nr."""
    return direction << 30 | size << 16 | ord(kind) << 8 | nr


def test_denied_ioctl_numbers_are_the_kernels():
    """Each refused ioctl number, computed again from the kernel's _IO/_IOW definitions: a
    wrong digit would leave the real command open and refuse a harmless one."""
    from poolexport._untrusted.sandbox import DENIED_IOCTLS

    write = 1  # _IOC_WRITE
    assert DENIED_IOCTLS == {
        "TIOCSTI": 0x5412, "TIOCLINUX": 0x541C,  # asm-generic/ioctls.h: plain numbers
        "FS_IOC_SETFLAGS": _ioc(write, "f", 2, 8),     # _IOW('f', 2, long), 64-bit long
        "FS_IOC32_SETFLAGS": _ioc(write, "f", 2, 4),   # _IOW('f', 2, int)
        "FS_IOC_FSSETXATTR": _ioc(write, "X", 32, 28),  # _IOW('X', 32, struct fsxattr), 28 bytes
    }


@pytest.mark.parametrize("errno_name, words", [("ENOSYS", "has no Landlock"), ("EOPNOTSUPP", "disabled at boot"),
                                              ("EPERM", "on kernel")])
def test_landlock_error_names_the_cause(errno_name, words):
    import errno as errno_mod

    from poolexport._untrusted.sandbox import _landlock_error

    code = getattr(errno_mod, errno_name)
    text = _landlock_error(OSError(code, "x"), "6.1")
    assert words in text and "6.1" in text
    others = {"ENOSYS": "has no Landlock", "EOPNOTSUPP": "disabled at boot"}
    assert all(w not in text for name, w in others.items() if name != errno_name)
