/* inl: DWARF's view of inlining, for `rpatch resolve` and the attach checks.
 *
 *   a N     -> "a N R"       R = caller_a(N) = scale(N) + 1   (scale inlined here: old code stays)
 *   b N     -> "b N R"       R = caller_b(N) = scale(N) * 2   (inlined here too)
 *   call N  -> "scale N R"   R = scale(N) = 3N+1, called through a pointer: the out-of-line copy
 *   c N     -> "c N R"       R = caller_c(N) = offset_of(N) - 1   (offset_of exists only inlined)
 *   d N     -> "d N R"       R = caller_d(N) = offset_of(N) * 3
 *   k N     -> "k N R"       R = caller_k(N) = mul_add(N, 7), through the clone mul_add.constprop.0
 *   v N     -> "v N R"       R = caller_v(N, N) = mul_add(N, N), the function itself
 *
 * Built with -O2 -fipa-cp-clone (see dwarf.mk). fix_inl.so replaces scale with x*100: only
 * `call` changes, `a` and `b` keep the inlined old code. */
#include "common.h"

static volatile long calls;

/* The file-scope declaration without `inline` makes the inline definition below an external
 * one: scale has an out-of-line copy (global symbol) and is also inlined into its callers. */
int scale(int x);
__attribute__((always_inline)) inline int scale(int x) {
    calls++;
    return x * 3 + 1;
}

/* Static and always inlined, address never taken: no out-of-line copy at all. */
static inline __attribute__((always_inline)) int offset_of(int x) {
    calls++;
    return x + 42;
}

/* Called with the constant k = 7 by caller_k: GCC clones it for that call
 * (mul_add.constprop.0, the loop unrolled); the address taken keeps the original too. */
__attribute__((noinline)) static int mul_add(int x, int k) {
    int r = 0;
    calls++;
    for (int i = 0; i < k; i++)
        r += (x ^ i) * (i + 1);
    return r;
}

PATCHABLE int caller_a(int x) { return scale(x) + 1; }
PATCHABLE int caller_b(int x) { return scale(x) * 2; }
PATCHABLE int caller_c(int x) { return offset_of(x) - 1; }
PATCHABLE int caller_d(int x) { return offset_of(x) * 3; }
PATCHABLE int caller_k(int x) { return mul_add(x, 7); }
PATCHABLE int caller_v(int x, int k) { return mul_add(x, k); }
int (*volatile mul_add_ptr)(int, int) = mul_add;

int (*volatile scale_ptr)(int) = scale;

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    announce_ready();
    char line[256];
    while (next_command(line, sizeof line)) {
        long n;
        volatile int in;
        if (arg_of(line, "a", &n)) {
            in = (int)n;
            reply("a %ld %d", n, caller_a(in));
        } else if (arg_of(line, "b", &n)) {
            in = (int)n;
            reply("b %ld %d", n, caller_b(in));
        } else if (arg_of(line, "call", &n)) {
            in = (int)n;
            reply("scale %ld %d", n, scale_ptr(in));
        } else if (arg_of(line, "c", &n)) {
            in = (int)n;
            reply("c %ld %d", n, caller_c(in));
        } else if (arg_of(line, "d", &n)) {
            in = (int)n;
            reply("d %ld %d", n, caller_d(in));
        } else if (arg_of(line, "k", &n)) {
            in = (int)n;
            reply("k %ld %d", n, caller_k(in));
        } else if (arg_of(line, "v", &n)) {
            in = (int)n;
            reply("v %ld %d", n, caller_v(in, in));
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
