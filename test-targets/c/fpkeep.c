/* fpkeep [THREADS]: THREADS threads (default 4) that each fill the vector registers with a
 * pattern of their own (ymm0-15 always; zmm16-31 and the mask registers k1-k7 when the CPU has
 * AVX-512), set an unusual MXCSR, block in a raw read() on a pipe, and on return compare every
 * register with the pattern. The kernel preserves all of them across a system call, so any
 * difference means whoever borrowed the thread in between did not put its FP/vector state back.
 *   release N -> "released N": lets N blocked reads return (one byte each)
 *   stats     -> "fp checked=C corrupted=X avx512=0|1" (C reads checked so far)
 *   call N    -> "compute N R" (R = N+1) */
#define _GNU_SOURCE
#include "common.h"
#include <pthread.h>
#include <stdint.h>

PATCHABLE int compute(int x) {
    static volatile int calls;
    calls++;
    return x + 1;
}

static int pipe_fds[2];
static volatile long checked, corrupted;
static int have_avx512;

struct regs {
    uint8_t ymm[16][32];
    uint8_t zmm[16][64]; /* zmm16..31 */
    uint64_t k[7];       /* k1..k7 */
    uint32_t mxcsr;
};

static void fill(struct regs *r, unsigned seed) {
    uint8_t *bytes = (uint8_t *)r;
    for (size_t i = 0; i < sizeof *r; i++)
        bytes[i] = (uint8_t)(seed * 131 + i * 7 + 1);
    /* Round toward zero, flush-to-zero, all exceptions masked: not glibc's default. */
    r->mxcsr = 0x1f80 | (3u << 13) | (1u << 15);
}

__attribute__((target("avx2"))) static long read_keeping_ymm(const struct regs *in, struct regs *out, char *c) {
    long rc;
    __asm__ volatile(
        "ldmxcsr %[mx_in]\n\t"
        "vmovdqu 0*32(%[in]), %%ymm0\n\t vmovdqu 1*32(%[in]), %%ymm1\n\t"
        "vmovdqu 2*32(%[in]), %%ymm2\n\t vmovdqu 3*32(%[in]), %%ymm3\n\t"
        "vmovdqu 4*32(%[in]), %%ymm4\n\t vmovdqu 5*32(%[in]), %%ymm5\n\t"
        "vmovdqu 6*32(%[in]), %%ymm6\n\t vmovdqu 7*32(%[in]), %%ymm7\n\t"
        "vmovdqu 8*32(%[in]), %%ymm8\n\t vmovdqu 9*32(%[in]), %%ymm9\n\t"
        "vmovdqu 10*32(%[in]), %%ymm10\n\t vmovdqu 11*32(%[in]), %%ymm11\n\t"
        "vmovdqu 12*32(%[in]), %%ymm12\n\t vmovdqu 13*32(%[in]), %%ymm13\n\t"
        "vmovdqu 14*32(%[in]), %%ymm14\n\t vmovdqu 15*32(%[in]), %%ymm15\n\t"
        "xor %%eax, %%eax\n\t"
        "syscall\n\t"
        "vmovdqu %%ymm0, 0*32(%[out])\n\t vmovdqu %%ymm1, 1*32(%[out])\n\t"
        "vmovdqu %%ymm2, 2*32(%[out])\n\t vmovdqu %%ymm3, 3*32(%[out])\n\t"
        "vmovdqu %%ymm4, 4*32(%[out])\n\t vmovdqu %%ymm5, 5*32(%[out])\n\t"
        "vmovdqu %%ymm6, 6*32(%[out])\n\t vmovdqu %%ymm7, 7*32(%[out])\n\t"
        "vmovdqu %%ymm8, 8*32(%[out])\n\t vmovdqu %%ymm9, 9*32(%[out])\n\t"
        "vmovdqu %%ymm10, 10*32(%[out])\n\t vmovdqu %%ymm11, 11*32(%[out])\n\t"
        "vmovdqu %%ymm12, 12*32(%[out])\n\t vmovdqu %%ymm13, 13*32(%[out])\n\t"
        "vmovdqu %%ymm14, 14*32(%[out])\n\t vmovdqu %%ymm15, 15*32(%[out])\n\t"
        "stmxcsr %[mx_out]\n\t"
        "vzeroupper"
        : "=a"(rc), [mx_out] "=m"(out->mxcsr)
        : [in] "r"(in->ymm), [out] "r"(out->ymm), [mx_in] "m"(in->mxcsr), "D"(pipe_fds[0]), "S"(c),
          "d"(1)
        : "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
          "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
    return rc;
}

__attribute__((target("avx512f,avx512bw"))) static long read_keeping_zmm(const struct regs *in, struct regs *out,
                                                                        char *c) {
    long rc;
    __asm__ volatile(
        "vmovdqu64 0*64(%[in]), %%zmm16\n\t vmovdqu64 1*64(%[in]), %%zmm17\n\t"
        "vmovdqu64 2*64(%[in]), %%zmm18\n\t vmovdqu64 3*64(%[in]), %%zmm19\n\t"
        "vmovdqu64 4*64(%[in]), %%zmm20\n\t vmovdqu64 5*64(%[in]), %%zmm21\n\t"
        "vmovdqu64 6*64(%[in]), %%zmm22\n\t vmovdqu64 7*64(%[in]), %%zmm23\n\t"
        "vmovdqu64 8*64(%[in]), %%zmm24\n\t vmovdqu64 9*64(%[in]), %%zmm25\n\t"
        "vmovdqu64 10*64(%[in]), %%zmm26\n\t vmovdqu64 11*64(%[in]), %%zmm27\n\t"
        "vmovdqu64 12*64(%[in]), %%zmm28\n\t vmovdqu64 13*64(%[in]), %%zmm29\n\t"
        "vmovdqu64 14*64(%[in]), %%zmm30\n\t vmovdqu64 15*64(%[in]), %%zmm31\n\t"
        "kmovq 0*8(%[kin]), %%k1\n\t kmovq 1*8(%[kin]), %%k2\n\t kmovq 2*8(%[kin]), %%k3\n\t"
        "kmovq 3*8(%[kin]), %%k4\n\t kmovq 4*8(%[kin]), %%k5\n\t kmovq 5*8(%[kin]), %%k6\n\t"
        "kmovq 6*8(%[kin]), %%k7\n\t"
        "xor %%eax, %%eax\n\t"
        "syscall\n\t"
        "vmovdqu64 %%zmm16, 0*64(%[out])\n\t vmovdqu64 %%zmm17, 1*64(%[out])\n\t"
        "vmovdqu64 %%zmm18, 2*64(%[out])\n\t vmovdqu64 %%zmm19, 3*64(%[out])\n\t"
        "vmovdqu64 %%zmm20, 4*64(%[out])\n\t vmovdqu64 %%zmm21, 5*64(%[out])\n\t"
        "vmovdqu64 %%zmm22, 6*64(%[out])\n\t vmovdqu64 %%zmm23, 7*64(%[out])\n\t"
        "vmovdqu64 %%zmm24, 8*64(%[out])\n\t vmovdqu64 %%zmm25, 9*64(%[out])\n\t"
        "vmovdqu64 %%zmm26, 10*64(%[out])\n\t vmovdqu64 %%zmm27, 11*64(%[out])\n\t"
        "vmovdqu64 %%zmm28, 12*64(%[out])\n\t vmovdqu64 %%zmm29, 13*64(%[out])\n\t"
        "vmovdqu64 %%zmm30, 14*64(%[out])\n\t vmovdqu64 %%zmm31, 15*64(%[out])\n\t"
        "kmovq %%k1, 0*8(%[kout])\n\t kmovq %%k2, 1*8(%[kout])\n\t kmovq %%k3, 2*8(%[kout])\n\t"
        "kmovq %%k4, 3*8(%[kout])\n\t kmovq %%k5, 4*8(%[kout])\n\t kmovq %%k6, 5*8(%[kout])\n\t"
        "kmovq %%k7, 6*8(%[kout])\n\t"
        "vzeroupper"
        : "=a"(rc)
        : [in] "r"(in->zmm), [out] "r"(out->zmm), [kin] "r"(in->k), [kout] "r"(out->k),
          "D"(pipe_fds[0]), "S"(c), "d"(1)
        : "rcx", "r11", "memory", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
          "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "k1",
          "k2", "k3", "k4", "k5", "k6", "k7");
    return rc;
}

static void *run(void *arg) {
    unsigned seed = (unsigned)(long)arg * 1000;
    for (;;) {
        struct regs in, out;
        char c;
        fill(&in, ++seed);
        memset(&out, 0, sizeof out);
        /* With AVX-512, every other read checks zmm16-31 and k1-k7 instead of ymm0-15. */
        int wide = have_avx512 && (seed & 1);
        long rc = wide ? read_keeping_zmm(&in, &out, &c) : read_keeping_ymm(&in, &out, &c);
        if (rc != 1)
            continue; /* an interrupted read (EINTR) checks nothing */
        int same = wide ? memcmp(out.zmm, in.zmm, sizeof in.zmm) == 0 && memcmp(out.k, in.k, sizeof in.k) == 0
                        : memcmp(out.ymm, in.ymm, sizeof in.ymm) == 0 && out.mxcsr == in.mxcsr;
        __atomic_add_fetch(&checked, 1, __ATOMIC_RELAXED);
        if (!same)
            __atomic_add_fetch(&corrupted, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int threads = argc > 1 ? atoi(argv[1]) : 4;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2")) {
        fprintf(stderr, "fpkeep needs AVX2\n");
        return 2;
    }
    have_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
    if (pipe(pipe_fds) != 0)
        return 1;
    for (long i = 0; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, run, (void *)i) != 0)
            return 1;
    }
    announce_ready();
    char line[256];
    while (next_command(line, sizeof line)) {
        long n;
        if (strcmp(line, "stats") == 0) {
            reply("fp checked=%ld corrupted=%ld avx512=%d", checked, corrupted, have_avx512);
        } else if (arg_of(line, "release", &n)) {
            for (long i = 0; i < n; i++)
                if (write(pipe_fds[1], "x", 1) != 1)
                    return 1;
            reply("released %ld", n);
        } else if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("compute %ld %d", n, compute(in));
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
