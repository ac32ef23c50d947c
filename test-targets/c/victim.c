/* libvictim.so: a shared library whose function is patched in the process that loaded it. */
static volatile long lib_compute_calls;
__attribute__((noipa)) int lib_compute(int x) {
    lib_compute_calls++;
    return x + 3;
}
