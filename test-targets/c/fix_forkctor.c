/* fix_forkctor.so: its constructor forks in the thread running dlopen.  The child returns from
 * the constructor like the parent: into dlopen, then into whatever called dlopen (for an
 * injected load, rpatch's call stub, whose way back is the borrowed thread's own code).
 *   compute -> x*100 */
#include <unistd.h>

__attribute__((constructor)) static void fork_in_constructor(void) { fork(); }

int compute(int x) { return x * 100; }
