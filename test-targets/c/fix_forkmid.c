/* fix_forkmid.so: for prefork.  Its constructor has the master fork a worker (another thread
 * forks, through prefork_fork_now) while the constructor runs, inside dlopen: that worker is a
 * copy of the master with the library half loaded.
 *   compute -> x*100 */
void prefork_fork_now(void) __attribute__((weak));

__attribute__((constructor)) static void fork_during_load(void) {
    if (prefork_fork_now)
        prefork_fork_now();
}

int compute(int x) { return x * 100; }
