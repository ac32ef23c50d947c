/* fix_shared.so: for prefork's clone(CLONE_VM) process.
 *   shared_park -> returns -7 at once */
int shared_park(int fd) {
    (void)fd;
    return -7;
}
