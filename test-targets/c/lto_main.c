/* lto: a program built with link-time optimisation (-flto) whose caller_across, here, holds an
 * inlined copy of scale from lto_scale.c: with LTO the copy's DWARF is in a unit of its own
 * that refers across units to scale's. Tests: tests/resolve.rs, tests/dwarf.rs.
 *
 *   call N    -> "scale N R"   R = scale(N) = 3N+1, through a pointer: the out-of-line copy
 *   across N  -> "across N R"  R = caller_across(N) = scale(N) + 1, the inlined copy
 *
 * fix_lto.so (fix_inl.so) replaces scale with x*100: only `call` changes. */
#include "common.h"

int scale(int x);

int (*volatile scale_ptr)(int) = scale;

__attribute__((noinline)) int caller_across(int x) { return scale(x) + 1; }

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    announce_ready();
    char line[128];
    while (next_command(line, sizeof line)) {
        long n;
        if (arg_of(line, "call", &n))
            reply("scale %ld %d", n, scale_ptr((int)n));
        else if (arg_of(line, "across", &n))
            reply("across %ld %d", n, caller_across((int)n));
        else
            reply("error unknown command: %s", line);
    }
    return 0;
}
