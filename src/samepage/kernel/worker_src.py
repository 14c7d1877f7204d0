"""C source of the scenario worker (compiled at run time by samepage.kernel.worker).

Why C and not Python: a process with ``merge_any`` (PR_SET_MEMORY_MERGE) makes *every*
compatible VMA of its mm mergeable, including the interpreter's heap, arenas and stack, and
every mapping created afterwards (malloc arenas, brk growth). Those pages would be scanned by
ksmd and pollute the counters. The C worker is a static binary that never allocates after
start-up: all its buffers are static, so its own VMAs are fixed (text, data, bss, a tiny brk
heap, the stack). After ``prctl(PR_SET_MEMORY_MERGE, 1)`` it walks /proc/self/maps and applies
MADV_UNMERGEABLE to every VMA outside the scenario window, so only the scenario regions are
ever mergeable. Without merge_any its own VMAs are never VM_MERGEABLE in the first place.

LRU batches: a freshly faulted anonymous page sits in the per-CPU LRU add batch of the CPU it
was faulted on, which holds a reference until the batch fills (31 folios) or is drained; KSM
cannot merge it meanwhile. The model has one such batch for the scenario's pages. To match,
the worker runs on ``home_cpu`` (argv[4]) whenever it writes scenario pages, and faults its
own pages (start-up, and the copy-on-write of its stack/data after a fork) on ``scratch_cpu``
(argv[5]) -- so only scenario pages enter the home CPU's batch. -1 disables pinning.

Protocol: one Unix stream socket (fd number in argv[1], scenario window in argv[2..3]). Requests are whitespace-separated
words, each request ends with a newline; every request gets exactly one reply line:
``ok [value]`` or ``err ERRNO [text]``. Numbers are decimal or 0x-hex.

    pid                         -> ok PID
    map ADDR NPAGES THP         mmap(ADDR, ...) fixed, private anonymous, RW; THP 0 default,
                                1 MADV_HUGEPAGE, 2 MADV_NOHUGEPAGE
    write ADDR N T1 .. TN       page i at ADDR+i*4096 gets token Ti (0: memset 0, t: 8-byte
                                big-endian t repeated 512 times)
    madv ADDR NPAGES ADVICE     madvise
    unmap ADDR NPAGES           munmap
    merge_any V                 prctl(PR_SET_MEMORY_MERGE, V, 0, 0, 0); V=1 then also applies
                                MADV_UNMERGEABLE to the worker's own VMAs
    unmerge_own                 MADV_UNMERGEABLE on the worker's own VMAs
    fork                        needs one fd received by SCM_RIGHTS with (or before) the
                                request: the child uses it as its channel and first sends
                                ``hello PID`` on it; the parent replies ``ok CHILDPID``
    exit                        replies ok, then _exit(0)

End of file on the channel makes the worker exit (the harness is gone).
"""

WORKER_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#endif
#ifndef MADV_UNMERGEABLE
#define MADV_UNMERGEABLE 13
#endif
#define PAGE 4096UL

static int ctl = -1;
static int pending_fd = -1;
static char ibuf[1 << 16];
static size_t ipos, ilen;
static char mapsbuf[1 << 16];
static unsigned long win_lo, win_hi;
static int home_cpu = -1, scratch_cpu = -1;
static sigjmp_buf fault_jmp;
static volatile sig_atomic_t in_access;

static void on_segv(int sig)
{
    (void)sig;
    if (in_access)
        siglongjmp(fault_jmp, 1);
    _exit(99);
}

static void fill_input(void)
{
    struct msghdr m;
    struct iovec iov;
    union { struct cmsghdr h; char b[CMSG_SPACE(sizeof(int) * 8)]; } c;
    ssize_t n;
    memset(&m, 0, sizeof m);
    iov.iov_base = ibuf;
    iov.iov_len = sizeof ibuf;
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = c.b;
    m.msg_controllen = sizeof c.b;
    do
        n = recvmsg(ctl, &m, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n <= 0)
        _exit(0);               /* the harness is gone */
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&m); h; h = CMSG_NXTHDR(&m, h)) {
        if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
            int nfd = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            int fds[8];
            memcpy(fds, CMSG_DATA(h), sizeof(int) * (size_t)nfd);
            for (int i = 0; i < nfd; i++) {
                if (pending_fd >= 0)
                    close(pending_fd);
                pending_fd = fds[i];
            }
        }
    }
    ipos = 0;
    ilen = (size_t)n;
}

static int getch(void)
{
    if (ipos == ilen)
        fill_input();
    return (unsigned char)ibuf[ipos++];
}

static int last_delim;          /* the character that ended the last word */

static size_t word(char *w, size_t cap)
{
    int ch;
    size_t n = 0;
    do
        ch = getch();
    while (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n');
    while (ch != ' ' && ch != '\t' && ch != '\r' && ch != '\n') {
        if (n + 1 < cap)
            w[n++] = (char)ch;
        ch = getch();
    }
    w[n] = 0;
    last_delim = ch;
    return n;
}

static unsigned long long num(void)
{
    char w[40];
    word(w, sizeof w);
    return strtoull(w, NULL, 0);
}

static void skip_line(void)
{
    while (last_delim != '\n')
        last_delim = getch();
}

static void send_all(int fd, const char *s, size_t len)
{
    while (len) {
        ssize_t n = write(fd, s, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            _exit(0);
        }
        s += n;
        len -= (size_t)n;
    }
}

static void reply(const char *fmt, unsigned long long v, int with_value)
{
    char out[128];
    int n = with_value ? snprintf(out, sizeof out, fmt, v) : snprintf(out, sizeof out, "%s", fmt);
    send_all(ctl, out, (size_t)n);
}

static void reply_rc(int rc)
{
    if (rc == 0)
        reply("ok\n", 0, 0);
    else
        reply("err %llu\n", (unsigned long long)rc, 1);
}

static void fill_page(unsigned char *p, unsigned long long t)
{
    if (t == 0) {
        memset(p, 0, PAGE);
        return;
    }
    uint64_t be = __builtin_bswap64((uint64_t)t);
    uint64_t *q = (uint64_t *)p;
    for (int i = 0; i < (int)(PAGE / 8); i++)
        q[i] = be;
}

static int guarded_fill(unsigned long addr, unsigned long long t)
{
    int rc = 0;
    in_access = 1;
    if (sigsetjmp(fault_jmp, 1) == 0)
        fill_page((unsigned char *)addr, t);
    else
        rc = EFAULT;
    in_access = 0;
    return rc;
}

/* Call fn(lo, hi, perms, line) for every VMA of this process outside the scenario window. */
static int for_own_vmas(int (*fn)(unsigned long, unsigned long, const char *, const char *))
{
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    size_t len = 0;
    ssize_t n;
    int rc = 0;
    if (fd < 0)
        return errno;
    while (len + 1 < sizeof mapsbuf && (n = read(fd, mapsbuf + len, sizeof mapsbuf - 1 - len)) > 0)
        len += (size_t)n;
    close(fd);
    mapsbuf[len] = 0;
    for (char *line = mapsbuf; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        unsigned long lo = strtoul(line, NULL, 16);
        char *dash = strchr(line, '-');
        unsigned long hi = dash ? strtoul(dash + 1, NULL, 16) : lo;
        char *perms = strchr(line, ' ');
        int skip = (lo >= win_lo && hi <= win_hi) || strstr(line, "[vsyscall]") != NULL
                   || perms == NULL || hi <= lo;
        if (!skip) {
            int r = fn(lo, hi, perms + 1, line);
            if (r && !rc)
                rc = r;
        }
        line = nl ? nl + 1 : NULL;
    }
    return rc;
}

static int unmerge_one(unsigned long lo, unsigned long hi, const char *perms, const char *line)
{
    (void)perms;
    (void)line;
    if (madvise((void *)lo, hi - lo, MADV_UNMERGEABLE) != 0 && errno != EINVAL && errno != ENOMEM)
        return errno;
    return 0;
}

static int unmerge_own(void)
{
    return for_own_vmas(unmerge_one);
}

/* Write every page of the worker's own private writable memory (data, bss, heap, stack), so
 * that it is allocated -- or, after fork, copied -- now, and never later while scenario pages
 * are being written (see touch_own_on_scratch). */
static int touch_one(unsigned long lo, unsigned long hi, const char *perms, const char *line)
{
    if (perms[0] != 'r' || perms[1] != 'w' || perms[3] != 'p')
        return 0;
    if (strstr(line, "[vvar") || strstr(line, "[vdso]"))
        return 0;
    for (unsigned long a = lo; a < hi; a += PAGE) {
        volatile char *c = (volatile char *)a;
        *c = *c;
    }
    return 0;
}

static void pin(int cpu)
{
    cpu_set_t set;
    if (cpu < 0)
        return;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

/* New anonymous pages wait in the per-CPU LRU add batch of the CPU that faulted them (holding
 * a reference that makes KSM's write_protect_page fail). The worker's scenario pages are all
 * faulted on home_cpu; its own pages are faulted on scratch_cpu, so they never share a batch
 * with (and never flush) scenario pages. */
static void touch_own_on_scratch(void)
{
    pin(scratch_cpu);
    for_own_vmas(touch_one);
    pin(home_cpu);
}

int main(int argc, char **argv)
{
    char cmd[32];
    struct sigaction sa;
    if (argc < 4)
        return 2;
    ctl = atoi(argv[1]);
    win_lo = strtoul(argv[2], NULL, 0);
    win_hi = strtoul(argv[3], NULL, 0);
    if (argc >= 6) {
        home_cpu = atoi(argv[4]);
        scratch_cpu = atoi(argv[5]);
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_segv;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    signal(SIGCHLD, SIG_IGN);   /* forked children are reaped automatically */
    signal(SIGPIPE, SIG_IGN);
    touch_own_on_scratch();
    for (;;) {
        word(cmd, sizeof cmd);
        if (!strcmp(cmd, "pid")) {
            skip_line();
            reply("ok %llu\n", (unsigned long long)getpid(), 1);
        } else if (!strcmp(cmd, "map")) {
            unsigned long addr = num(), np = num(), thp = num();
            skip_line();
            void *p = mmap((void *)addr, np * PAGE, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
            if (p == MAP_FAILED) {
                reply_rc(errno);
                continue;
            }
            if (p != (void *)addr) {
                munmap(p, np * PAGE);
                reply_rc(EEXIST);
                continue;
            }
            int rc = 0;
            if (thp == 1 && madvise(p, np * PAGE, MADV_HUGEPAGE) != 0)
                rc = errno;
            if (thp == 2 && madvise(p, np * PAGE, MADV_NOHUGEPAGE) != 0)
                rc = errno;
            reply_rc(rc);
        } else if (!strcmp(cmd, "write")) {
            unsigned long addr = num(), n = num();
            int rc = 0;
            for (unsigned long i = 0; i < n; i++) {
                unsigned long long t = num();
                if (rc == 0)
                    rc = guarded_fill(addr + i * PAGE, t);
            }
            skip_line();
            reply_rc(rc);
        } else if (!strcmp(cmd, "madv")) {
            unsigned long addr = num(), np = num(), adv = num();
            skip_line();
            reply_rc(madvise((void *)addr, np * PAGE, (int)adv) ? errno : 0);
        } else if (!strcmp(cmd, "unmap")) {
            unsigned long addr = num(), np = num();
            skip_line();
            reply_rc(munmap((void *)addr, np * PAGE) ? errno : 0);
        } else if (!strcmp(cmd, "merge_any")) {
            unsigned long v = num();
            skip_line();
            if (prctl(PR_SET_MEMORY_MERGE, v, 0, 0, 0) != 0) {
                reply_rc(errno);
                continue;
            }
            reply_rc(v ? unmerge_own() : 0);
        } else if (!strcmp(cmd, "unmerge_own")) {
            skip_line();
            reply_rc(unmerge_own());
        } else if (!strcmp(cmd, "fork")) {
            skip_line();
            if (pending_fd < 0) {
                reply_rc(EBADF);
                continue;
            }
            pin(scratch_cpu);   /* the copy-on-write of our own pages happens there */
            pid_t pid = fork();
            if (pid < 0) {
                int e = errno;
                pin(home_cpu);
                close(pending_fd);
                pending_fd = -1;
                reply_rc(e);
                continue;
            }
            touch_own_on_scratch();
            if (pid == 0) {
                close(ctl);
                ctl = pending_fd;
                pending_fd = -1;
                ipos = ilen = 0;
                reply("hello %llu\n", (unsigned long long)getpid(), 1);
                continue;
            }
            close(pending_fd);
            pending_fd = -1;
            reply("ok %llu\n", (unsigned long long)pid, 1);
        } else if (!strcmp(cmd, "exit")) {
            skip_line();
            reply("ok\n", 0, 0);
            _exit(0);
        } else {
            skip_line();
            reply("err 22 unknown-command\n", 0, 0);
        }
    }
}
"""
