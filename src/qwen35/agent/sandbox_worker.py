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
  cannot kill or signal the user's other processes. Landlock does not cover metadata: a cell can still change
  the mode or times of the user's files outside its directory, not their contents;
- dies with its parent (`PR_SET_PDEATHSIG`) and adopts the cell's orphaned processes (`PR_SET_CHILD_SUBREAPER`),
  so that the parent can find and kill everything a cell started, detached or not (code_interpreter.py).
The kernel features are inherited by children and cannot be lifted. `protections` in the first reply says
which were applied; the parent refuses to run code when a required one is missing.

Protocol: one JSON line per cell on stdin (`{"code": ..., "seq": n}`), one JSON line per reply (with the same
`seq`) on the descriptor the process was started with as stdout; the parent skips any other line there, so a
cell that writes to that descriptor cannot shift the replies. The cell's own stdout and stderr (Python-level
and fd-level, children included) go to a capture file outside the working directory, read back after the cell.
"""

from __future__ import annotations

import ast
import ctypes
import json
import os
import platform
import resource
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


def _only_write_under(libc, workdir: str) -> tuple[bool, bool]:
    """(writes confined to `workdir`, signals and abstract sockets scoped to the sandbox)."""
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
        for path, rights in ((workdir, handled), ("/dev/null", _WRITE_FILE | (_TRUNCATE if abi >= 3 else 0))):
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
    reply = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol channel: stdout as started
    out = os.open(capture, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.dup2(out, 1)
    os.dup2(out, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    os.chdir(workdir)
    sys.path.insert(0, workdir)

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
    libc.syscall.restype = ctypes.c_long
    mem = config["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (config["file_bytes"], config["file_bytes"]))
    _limit_processes(config["processes"])
    libc.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)  # SIGKILL when the parent dies
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    write_only, scoped = _only_write_under(libc, workdir)
    protections = {"no_network": _no_network(libc), "write_only_workdir": write_only, "signals_scoped": scoped}
    reply.write(json.dumps({"ready": True, "protections": protections, "pid": os.getpid()}) + "\n")

    namespace: dict = {"__name__": "__main__"}
    figures = [0]
    cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    for line in sys.stdin:
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
