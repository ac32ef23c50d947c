/* ambig, second translation unit: another static helper of the same name. */
#include "common.h"
static volatile long helper_calls;
/* Long enough to be patchable (the counter), so that the only problem is the name. */
PATCHABLE static int helper(int x) {
    helper_calls++;
    return x + 2;
}
int call_b(int x) { return helper(x); }
