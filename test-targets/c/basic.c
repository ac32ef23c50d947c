/* basic: the simplest target.  Built as build/basic_pie (PIE) and build/basic_nopie.
 *
 *   call N    -> "compute N R"   R = compute(N)   = N+1   (fix_basic: N*100, fix_basic_b: N*7)
 *   call2 N   -> "compute2 N R"  R = compute2(N)  = N+2   (fix_basic: N*200)
 *   tiny N    -> "tiny N R"      R = tiny(N)      = N     (2 bytes long: cannot be patched)
 *   branchy N -> "branchy N R"   R = branchy(N)   = 3*N for N >= 1 (a loop branches back
 *                                into its first 5 bytes: cannot be patched)
 *   count     -> "count C C2"    how many times compute / compute2 ran (the original code)
 *
 * compute and compute2 also bump a call counter: "return x+1" alone compiles to 4 bytes
 * (lea 0x1(%rdi),%eax; ret), too short for a 5-byte jump, and these two must be patchable.
 * hot.c is the target for the shortest patchable function. */
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include "common.h"

static volatile long compute_calls, compute2_calls;

PATCHABLE int compute(int x) {
    compute_calls++;
    return x + 1;
}

PATCHABLE int compute2(int x) {
    compute2_calls++;
    return x + 2;
}

/* int tiny(int x): returns x in 2 bytes (xchg %edi,%eax = 0x97; ret). */
int tiny(int x);
__asm__(".text\n"
        ".p2align 4\n"
        ".globl tiny\n"
        ".type tiny, @function\n"
        "tiny:\n"
        "  xchg %edi, %eax\n"
        "  ret\n"
        ".size tiny, .-tiny\n");

/* int branchy(int x): 3*x for x >= 1.  The loop's backward jump lands at offset 2, inside the
 * 5 bytes a jump would overwrite. */
int branchy(int x);
__asm__(".text\n"
        ".p2align 4\n"
        ".globl branchy\n"
        ".type branchy, @function\n"
        "branchy:\n"
        "  xor %eax, %eax\n"       /* 2 bytes, offset 0 */
        "1:\n"
        "  add $3, %eax\n"         /* 3 bytes, offset 2: branch target */
        "  dec %edi\n"             /* 2 bytes */
        "  jg 1b\n"                /* 2 bytes */
        "  ret\n"
        ".size branchy, .-branchy\n");

/* `--seccomp`: run under an allow-everything seccomp filter (status shows `Seccomp: 2`), which
 * rpatch must refuse unless told otherwise. */
static void install_allow_all_filter(void) {
    struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
    struct sock_fprog prog = {.len = 1, .filter = allow};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        perror("seccomp");
        exit(1);
    }
}

/* Here rather than at the top: the tests know the line numbers of the functions above. */
#include <linux/audit.h>
#include <stddef.h>
#include <sys/syscall.h>

/* `--seccomp-kill-memfd`: a filter that kills the process on memfd_create and allows the
 * rest (rpatch must refuse it, not kill it). */
static void install_kill_memfd_filter(void) {
    struct sock_filter prog_insns[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_memfd_create, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof prog_insns / sizeof prog_insns[0], .filter = prog_insns};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        perror("seccomp");
        exit(1);
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "--seccomp") == 0)
        install_allow_all_filter();
    if (argc > 1 && strcmp(argv[1], "--seccomp-kill-memfd") == 0)
        install_kill_memfd_filter();
    announce_ready();
    char line[256];
    while (next_command(line, sizeof line)) {
        long n;
        if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("compute %ld %d", n, compute(in));
        } else if (arg_of(line, "call2", &n)) {
            volatile int in = (int)n;
            reply("compute2 %ld %d", n, compute2(in));
        } else if (arg_of(line, "tiny", &n)) {
            volatile int in = (int)n;
            reply("tiny %ld %d", n, tiny(in));
        } else if (arg_of(line, "branchy", &n)) {
            volatile int in = (int)n;
            reply("branchy %ld %d", n, branchy(in));
        } else if (strcmp(line, "count") == 0) {
            reply("count %ld %ld", compute_calls, compute2_calls);
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
