/* fix_victim.so: replacement for libvictim.so's lib_compute (x*300). */
int lib_compute(int x) { return x * 300; }
