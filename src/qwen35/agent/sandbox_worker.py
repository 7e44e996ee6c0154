"""The code interpreter's worker process: sandbox itself, then run Python cells in one namespace, as a Jupyter
kernel does. Standard library only; started by `code_interpreter.py` as `python -I sandbox_worker.py CONFIG`.

Before any user code runs, the process
- moves into its fresh working directory and clears its environment of everything but a few harmless names;
- limits its address space (`RLIMIT_AS`), the size of any file it writes (`RLIMIT_FSIZE`), the processes its
  user may add (`RLIMIT_NPROC`: those running now plus `config["processes"]`, so a fork bomb stops there; not
  enforced for root) and, per cell, its CPU time (`RLIMIT_CPU`, raised by the cell's budget before each cell:
  SIGXCPU ends the process);
- with seccomp refuses every socket (Unix sockets too: no network, and no reaching local services such as a
  Docker or D-Bus socket; `socketpair` stays, for pipes between the cell's own processes) and io_uring,
  whatever the code or its children do;
- with Landlock lets nothing be created, written, renamed or removed outside the working directory (and
  /dev/null); reading stays allowed, so the standard library and installed packages import. Where the kernel
  has Landlock ABI 6 (Linux 6.12), it also scopes signals and abstract Unix sockets to the sandbox: a cell
  cannot kill or signal the user's other processes;
- where unprivileged user namespaces are allowed, moves into a user, mount and PID namespace of its own
  (`_contain`): every mount read-only but the working directory's, so that a cell cannot change the mode,
  owner or times of files outside either (Landlock has no right for metadata), and the cells run below the
  namespace's init, whose end kills every process in the namespace, detached ones too; /dev/shm is a tmpfs
  of the sandbox's own (256 MB), writable, so multiprocessing's semaphores work;
- dies with its parent (`PR_SET_PDEATHSIG`) and adopts the cell's orphaned processes (`PR_SET_CHILD_SUBREAPER`),
  so that the parent can find and kill everything a cell started, detached or not (code_interpreter.py), and
  where the namespaces exist, a SIGKILL of the parent ends them all as well.
The kernel features are inherited by children and cannot be lifted. `protections` in the first reply says
which were applied; the parent refuses to run code when a required one is missing.

Protocol: one JSON line per cell on the descriptor started as stdin (`{"code": ..., "seq": n}`), one JSON line
per reply (with the same `seq`) on the one started as stdout; both are moved to descriptors children do not
inherit, and the cells get /dev/null as stdin. The parent skips any other line on the reply channel, so a
cell that writes to it cannot shift the replies. The cell's own stdout and stderr (Python-level
and fd-level, children included) go to a capture file outside the working directory, read back after the cell.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import json
import os
import platform
import resource
import signal
import struct
import sys
import traceback

# ---- seccomp: no sockets, no io_uring -------------------------------------------------------------------

_ARCH = {"x86_64": (0xC000003E, 41, 425), "aarch64": (0xC00000B7, 198, 425)}  # audit arch, socket, io_uring_setup
_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_EACCES = 13


def _bpf(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def _no_network(libc) -> bool:
    arch = _ARCH.get(platform.machine())
    if arch is None:
        return False
    audit_arch, socket_nr, uring_nr = arch
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, deny, nosys = 6, 7, 8  # instruction indices below; jumps count from the next instruction
    prog = b"".join([
        _bpf(ld, 0, 0, 4),                                # 0: A = arch
        _bpf(jeq, 0, deny - 2, audit_arch),               # 1: another ABI (i386 socketcall) -> deny
        _bpf(ld, 0, 0, 0),                                # 2: A = syscall number
        _bpf(jge, deny - 4, 0, 0x40000000),               # 3: x32 numbers -> deny
        _bpf(jeq, nosys - 5, 0, uring_nr),                # 4: io_uring_setup -> ENOSYS
        _bpf(jeq, deny - 6, allow - 6, socket_nr),        # 5: socket() -> deny, anything else -> allow
        _bpf(ret, 0, 0, _RET_ALLOW),                      # 6
        _bpf(ret, 0, 0, _RET_ERRNO | _EACCES),            # 7
        _bpf(ret, 0, 0, _RET_ERRNO | 38),                 # 8: ENOSYS
    ])
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = ctypes.create_string_buffer(struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf)), 16)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) == 0


# ---- Landlock: writes only under the working directory -------------------------------------------------

_SYS = {"x86_64": (444, 445, 446), "aarch64": (444, 445, 446)}  # create_ruleset, add_rule, restrict_self
_WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 1, 1 << 2, 1 << 3
_WRITES = [1 << 1] + [1 << i for i in range(4, 13)]  # write_file, remove_dir ... make_sym
_REFER, _TRUNCATE = 1 << 13, 1 << 14
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6: struct landlock_ruleset_attr.scoped


def _write_rights(abi: int) -> int:
    rights = sum(_WRITES)
    if abi >= 2:
        rights |= _REFER
    if abi >= 3:
        rights |= _TRUNCATE
    return rights


def _only_write_under(libc, workdir: str, shm: str | None = None) -> tuple[bool, bool]:
    """(writes confined to `workdir` (and `shm`, the sandbox's own tmpfs), signals and abstract sockets scoped
    to the sandbox)."""
    nrs = _SYS.get(platform.machine())
    if nrs is None:
        return False, False
    create, add, restrict = nrs
    abi = libc.syscall(create, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    if abi < 1:
        return False, False
    handled = _write_rights(abi)
    scoped = abi >= 6
    # handled_access_fs, then (ABI 4+) handled_access_net (none: seccomp refuses sockets) and (ABI 6+) scoped
    attr = struct.pack("QQQ", handled, 0, _SCOPE_SIGNAL | _SCOPE_ABSTRACT_UNIX_SOCKET) if scoped else \
        struct.pack("Q", handled)
    ruleset = libc.syscall(create, ctypes.c_char_p(attr), len(attr), 0)
    if ruleset < 0:
        return False, False
    try:
        paths = [(workdir, handled), ("/dev/null", _WRITE_FILE | (_TRUNCATE if abi >= 3 else 0))]
        for path, rights in paths + ([(shm, handled)] if shm else []):
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                rule = struct.pack("=Qi", rights, fd)  # struct landlock_path_beneath_attr (packed)
                if libc.syscall(add, ruleset, 1, ctypes.c_char_p(rule), 0) != 0:  # LANDLOCK_RULE_PATH_BENEATH
                    return False, False
            finally:
                os.close(fd)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return False, False
        done = libc.syscall(restrict, ruleset, 0) == 0
        return done, done and scoped
    finally:
        os.close(ruleset)


def _limit_processes(extra: int) -> None:
    """RLIMIT_NPROC counts every process (thread) of the real user: allow those running now plus `extra`
    (nothing is set where /proc cannot say how many run)."""
    if not os.path.isdir("/proc"):
        return
    uid, running = os.getuid(), 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    running += len(os.listdir(f"/proc/{name}/task"))
            except OSError:
                continue
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    want = running + extra
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_NPROC, (want, want))


# ---- namespaces: nothing outside the working directory changes, nothing a cell starts outlives the sandbox ----

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC, _MS_PRIVATE = 2, 4, 8, 0x1000, 0x4000, 1 << 18
_MOUNT_SETATTR, _AT_FDCWD, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = 442, -100, 0x8000, 1
_CAPSET = {"x86_64": 126, "aarch64": 91}
SHM, SHM_OPTIONS = "/dev/shm", b"size=256m,mode=1777"  # a private tmpfs, as large as RLIMIT_FSIZE allows a file
_PR_CAPBSET_DROP, _CAP_VERSION_3 = 24, 0x20080522


def _read_only(libc, path: str, on: bool) -> bool:
    """Set (or clear) read-only on the mount at `path` and every mount below it (mount_setattr, Linux 5.12)."""
    attr = struct.pack("QQQQ", _MOUNT_ATTR_RDONLY * on, _MOUNT_ATTR_RDONLY * (not on), 0, 0)  # struct mount_attr
    return libc.syscall(_MOUNT_SETATTR, _AT_FDCWD, path.encode(), _AT_RECURSIVE, ctypes.c_char_p(attr),
                        ctypes.c_size_t(len(attr))) == 0


def _drop_capabilities(libc) -> None:
    """No capabilities at all, in the bounding set either (those the new user namespace gave)."""
    for cap in range(64):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the last one
    header = ctypes.create_string_buffer(struct.pack("Ii", _CAP_VERSION_3, 0), 8)
    data = ctypes.create_string_buffer(24)  # effective, permitted, inheritable: empty, twice 32 bits
    libc.syscall(_CAPSET.get(platform.machine(), -1), header, data)


def _parent_alive(fd: int) -> bool:
    """Whether the process holding the pipe's write end still runs (for the race a death signal set after
    fork() leaves: the parent may have died before it was set)."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 1) != b""
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _fork_and_wait(init: bool) -> int:
    """Fork; the parent waits for the child, then exits as it did, and never returns. In the child: the read
    end of a pipe whose write end the parent holds (for `_parent_alive`). `init`: the parent is the PID
    namespace's init, which also reaps the orphans that come to it."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(w)
        return r
    os.close(r)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # the protocol's pipes: let them close when the cell runner ends
        os.dup2(null, fd)
    while True:
        try:
            pid, status = os.wait() if init else os.waitpid(child, 0)
        except ChildProcessError:
            os._exit(1)
        if pid == child:
            break
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    if init:  # init cannot die of a signal it does not handle: pass the signal on as an exit status, as shells do
        os._exit(128 + sig if sig else os.WEXITSTATUS(status))
    code = os.WEXITSTATUS(status)
    if 128 < code <= 128 + signal.NSIG:  # the cell runner died of that signal (SIGXCPU at its CPU limit, SIGKILL)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        with contextlib.suppress(OSError, ValueError):  # SIGKILL's disposition cannot be set (nor need be)
            signal.signal(code - 128, signal.SIG_DFL)
        os.kill(os.getpid(), code - 128)
    os._exit(code)  # (an exit status of 129 or more that a cell chose itself reads as a signal, as in a shell)


def _enter(libc, workdir: str) -> tuple[bool, bool] | None:
    """unshare the user, mount and PID namespaces, map our own ids, make every mount but `workdir`'s
    read-only and give the sandbox a /dev/shm of its own (POSIX semaphores: multiprocessing's locks, queues
    and pools): whether those held, or None when the namespaces could not be entered."""
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID) != 0:
        return None
    try:
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:  # the same ids inside (one's own id needs no privilege)
                f.write(text)
    except OSError:
        return None
    read_only = (libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) == 0
                 and libc.mount(workdir.encode(), workdir.encode(), None, _MS_BIND | _MS_REC, None) == 0
                 and _read_only(libc, "/", True))
    if read_only and not _read_only(libc, workdir, False):
        read_only = not _read_only(libc, "/", False)  # undone, so that the cells can still write
    shm = read_only and os.path.isdir(SHM) and libc.mount(
        b"tmpfs", SHM.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, SHM_OPTIONS) == 0
    return read_only, shm


def _contain(libc, workdir: str) -> tuple[bool, bool, bool]:
    """Move into a user, mount and PID namespace of its own (unprivileged user namespaces; where they are
    refused, nothing changes and this returns (False, False, False)):
    - every mount is read-only but a bind mount of `workdir`: outside it nothing can be changed, metadata
      (mode, owner, times) included, which Landlock does not cover;
    - the cells run in a child of the namespace's init, and when init ends (it dies with this process, which
      dies with the sandbox's parent) the kernel kills every process in the namespace, detached ones too,
      even when the parent was killed with SIGKILL;
    - /proc shows only the namespace's processes; no capability is left.
    Three processes: this one (outside the PID namespace), init, and the cell runner, where this returns
    (read-only outside, a private /dev/shm, processes contained)."""
    probe = os.fork()  # once in, there is no way back: try it in a child first (Ubuntu's AppArmor lets
    if probe == 0:     # unshare succeed and then refuses the id maps)
        os._exit(0 if _enter(libc, workdir) is not None else 1)
    if os.waitpid(probe, 0)[1] != 0:
        return False, False, False
    entered = _enter(libc, workdir)
    if entered is None:
        os._exit(1)  # what worked in the probe failed now: nothing sound is left to run cells in
    os.chdir(workdir)  # the bind mount, not the directory beneath it
    alive = _fork_and_wait(init=False)  # -> init, PID 1 of the new namespace
    libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)
    if not _parent_alive(alive):
        os._exit(1)
    libc.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None)  # best effort
    _drop_capabilities(libc)
    alive = _fork_and_wait(init=True)  # -> the cell runner
    libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)
    if not _parent_alive(alive):
        os._exit(1)
    return (*entered, True)


# ---- one cell ---------------------------------------------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp")


def _images(workdir: str) -> dict[str, float]:
    found = {}
    for root, _, files in os.walk(workdir):
        for f in files:
            if f.lower().endswith(IMAGE_SUFFIXES):
                p = os.path.join(root, f)
                found[p] = os.stat(p).st_mtime_ns
    return found


def _save_figures(workdir: str, count: list[int]) -> None:
    """Open matplotlib figures -> fig-NNN.png in the working directory (what a notebook would show)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None:
        return
    for num in plt.get_fignums():
        count[0] += 1
        plt.figure(num).savefig(os.path.join(workdir, f"fig-{count[0]:03d}.png"))
    plt.close("all")


def run_cell(code: str, namespace: dict, workdir: str, figures: list[int]) -> dict:
    """Execute `code`; the value of a last bare expression is the result (its repr), as in a notebook."""
    before = _images(workdir)
    result, error = None, None
    try:
        tree = ast.parse(code, "<cell>", "exec")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<cell>", "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), namespace)
            if value is not None:
                result = repr(value)
    except SyntaxError as e:  # where in the cell, not the parser's frames
        error = "".join(traceback.format_exception_only(type(e), e))
    except BaseException as e:  # SystemExit and KeyboardInterrupt end the cell, not the kernel
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:  # the worker's own frames
            tb = tb.tb_next
        error = "".join(traceback.format_exception(type(e), e, tb))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    try:
        _save_figures(workdir, figures)
    except Exception as e:  # a figure that cannot be drawn is the cell's error, not the kernel's
        error = (error or "") + f"saving figures failed: {e}\n"
    after = _images(workdir)
    files = sorted(p for p, t in after.items() if before.get(p) != t)
    return {"result": result, "error": error, "files": files}


def main() -> None:
    config = json.loads(sys.argv[1])
    workdir, capture = config["workdir"], config["capture"]
    # the capture file lies outside the working directory: opened before that becomes read-only
    out = os.open(capture, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    libc.syscall.restype = ctypes.c_long
    mem = config["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (config["file_bytes"], config["file_bytes"]))
    _limit_processes(config["processes"])  # before the user namespace, which keeps it as its ceiling
    libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)  # SIGKILL when the parent dies
    read_only, shm, contained = _contain(libc, workdir)

    # the protocol's channels: stdin and stdout as started, on descriptors of their own (not inherited); the
    # cells get /dev/null as stdin (input() is an EOFError at once, not a read of the next cell's JSON)
    cells = os.fdopen(os.dup(0), "r")
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = os.fdopen(0, "r", closefd=False)
    os.dup2(out, 1)
    os.dup2(out, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False, errors="backslashreplace")
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False, errors="backslashreplace")
    os.chdir(workdir)
    sys.path.insert(0, workdir)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    write_only, scoped = _only_write_under(libc, workdir, SHM if shm else None)
    protections = {"no_network": _no_network(libc), "write_only_workdir": write_only, "signals_scoped": scoped,
                   "read_only_outside": read_only, "processes_contained": contained}
    reply.write(json.dumps({"ready": True, "protections": protections}) + "\n")

    namespace: dict = {"__name__": "__main__"}
    figures = [0]
    cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    for line in cells:
        cell = json.loads(line)
        used = resource.getrusage(resource.RUSAGE_SELF)
        spent = int(used.ru_utime + used.ru_stime) + 1
        soft = spent + int(cell["cpu_seconds"])
        resource.setrlimit(resource.RLIMIT_CPU, (soft if cpu_hard == resource.RLIM_INFINITY else min(soft, cpu_hard),
                                                 cpu_hard))
        start = os.lseek(out, 0, os.SEEK_END)
        got = run_cell(cell["code"], namespace, workdir, figures)
        end = os.lseek(out, 0, os.SEEK_END)
        limit = int(cell["output_chars"]) * 4
        data = os.pread(out, min(end - start, limit + 4), start)
        got["output"] = data.decode("utf-8", errors="replace")
        got["output_truncated"] = end - start > len(data)
        os.ftruncate(out, 0)
        got["seq"] = cell.get("seq")
        reply.write(json.dumps(got) + "\n")


if __name__ == "__main__":
    main()
