/* _start for btipac, marked BTI and PAC: Debian's cross crt objects carry no GNU property
 * note, so an executable linked with them is not marked (and `-z force-bti` would mark it while
 * their _init and frame_dummy, reached by indirect calls, have no landing pad). btipac links
 * with -nostartfiles and this instead; glibc >= 2.34 needs no init/fini arguments. */
    .text
    .globl _start
    .type _start, %function
_start:
    bti c
    mov x29, #0
    mov x30, #0
    mov x5, x0              /* rtld_fini, from the dynamic loader */
    ldr x1, [sp]            /* argc */
    add x2, sp, #8          /* argv */
    mov x6, sp              /* stack_end */
    adrp x0, main
    add x0, x0, :lo12:main
    mov x3, #0              /* init, fini: unused since glibc 2.34 */
    mov x4, #0
    bl __libc_start_main
    bl abort
    .size _start, . - _start

    /* GNU_PROPERTY_AARCH64_FEATURE_1_AND: BTI (1) | PAC (2). */
    .section .note.gnu.property, "a"
    .p2align 3
    .word 4, 16, 5          /* namesz, descsz, NT_GNU_PROPERTY_TYPE_0 */
    .asciz "GNU"
    .word 0xc0000000, 4, 3, 0

    .section .note.GNU-stack, "", %progbits
