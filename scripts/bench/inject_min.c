/* inject_min PID LIB: the floor any injector pays — seize one thread of PID, make it call
 * dlopen(LIB, RTLD_NOW) with a return address of 0 (the call ends in a fault rpatch-free tools
 * like kubo/injector catch), restore its registers and detach. No safety checks at all: for
 * benchmarks only (scripts/bench.sh), against targets built for it.
 * Prints "handle 0x..." and the microseconds the whole run took. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Base of the first mapping of a file whose path contains `name` in PID's maps. */
static uintptr_t module_base(pid_t pid, const char *name) {
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    uintptr_t base = 0;
    while (fgets(line, sizeof line, f))
        if (strstr(line, name)) {
            base = strtoull(line, NULL, 16);
            break;
        }
    fclose(f);
    return base;
}

static long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000L + t.tv_nsec / 1000;
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    long t0 = now_us();
    pid_t pid = atoi(argv[1]);
    const char *lib = argv[2];
    /* dlopen's offset in libc is the same in every process using this libc. */
    uintptr_t own = (uintptr_t)dlsym(RTLD_DEFAULT, "dlopen");
    uintptr_t target_dlopen = own - module_base(getpid(), "libc.so") + module_base(pid, "libc.so");
    if (ptrace(PTRACE_SEIZE, pid, 0, 0) || ptrace(PTRACE_INTERRUPT, pid, 0, 0))
        return perror("seize"), 1;
    int status;
    waitpid(pid, &status, __WALL);
    struct user_regs_struct saved, regs;
    ptrace(PTRACE_GETREGS, pid, 0, &saved);
    regs = saved;
    /* The path and a zero return address below the red zone, 16-byte aligned at the call. */
    uintptr_t sp = ((saved.rsp - 128 - 4096) & ~(uintptr_t)15);
    size_t len = strlen(lib) + 1;
    struct iovec local = {(void *)lib, len}, remote = {(void *)(sp + 16), len};
    if (process_vm_writev(pid, &local, 1, &remote, 1, 0) != (ssize_t)len)
        return perror("write path"), 1;
    uintptr_t zero = 0;
    struct iovec lz = {&zero, 8}, rz = {(void *)(sp - 8), 8};
    process_vm_writev(pid, &lz, 1, &rz, 1, 0);
    regs.rsp = sp - 8;
    regs.rip = target_dlopen;
    regs.rdi = sp + 16;
    regs.rsi = RTLD_NOW;
    regs.rax = 0;
    regs.orig_rax = -1;
    ptrace(PTRACE_SETREGS, pid, 0, &regs);
    ptrace(PTRACE_CONT, pid, 0, 0);
    for (;;) {
        waitpid(pid, &status, __WALL);
        if (WIFSTOPPED(status) && WSTOPSIG(status) == SIGSEGV)
            break;
        if (!WIFSTOPPED(status))
            return fprintf(stderr, "target ended\n"), 1;
        int sig = (status >> 16) ? 0 : WSTOPSIG(status);
        ptrace(PTRACE_CONT, pid, 0, sig);
    }
    ptrace(PTRACE_GETREGS, pid, 0, &regs);
    ptrace(PTRACE_SETREGS, pid, 0, &saved);
    ptrace(PTRACE_DETACH, pid, 0, 0);
    printf("handle 0x%llx in %ld us\n", (unsigned long long)regs.rax, now_us() - t0);
    return regs.rax ? 0 : 1;
}
