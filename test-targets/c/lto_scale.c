/* lto: the function LTO inlines across units (with lto_main.c, see dwarf.mk).
 * scale(N) = 3N+1: an out-of-line copy (lto_main.c calls it through a pointer) and a copy
 * inlined into caller_across in lto_main.c, whose DWARF sits in another unit than scale's. */
#include "common.h"

volatile long scale_calls;

int scale(int x) {
    scale_calls++;
    return x * 3 + 1;
}
