/* Included (-include) into build/basic_code_b only: the same program as basic_code_a with its
 * code 256 bytes further on (tests/cache.rs). */
__asm__(".text\n.skip 256, 0xcc\n");
