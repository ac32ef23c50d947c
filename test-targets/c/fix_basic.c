/* fix_basic.so: replacements for basic (and blocked, which has the same compute).
 *   compute    -> x*100      compute2 -> x*200     compute_v2 -> x*1000 (for --func compute=compute_v2)
 *   tiny, branchy -> x*100   (their originals cannot be patched: the attach must refuse)
 *   held       -> -100       (blocked's function that a thread is always inside)
 *   parked     -> returns    (blocked's function whose first bytes a thread is always at) */
int compute(int x) { return x * 100; }
int compute2(int x) { return x * 200; }
int compute_v2(int x) { return x * 1000; }
int tiny(int x) { return x * 100; }
int branchy(int x) { return x * 100; }
int held(int fd) { (void)fd; return -100; }
void parked(void) {}
