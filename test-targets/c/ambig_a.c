/* ambig, first translation unit: a static helper whose name also exists in ambig_b.c. */
#include "common.h"
static volatile long helper_calls;
/* Long enough to be patchable (the counter), so that the only problem is the name. */
PATCHABLE static int helper(int x) {
    helper_calls++;
    return x + 1;
}
int call_a(int x) { return helper(x); }
