// sve_hold(expect, seen, control, fpcr) for test-targets/aarch64/sveregs.c: loads Z0–Z31,
// P0–P15 and FFR from `expect` (Z at multiples of VL, then P and FFR at multiples of VL/8, as
// in NT_ARM_SVE) and FPCR from `fpcr`, then, until control[0] is set: stores every register to
// `seen` and compares it byte by byte with `expect`, checks FPCR and the vector length, and
// counts the round in control[1]. No system call and no function call in the loop: the SVE
// state stays live. Returns 0 when stopped, the differing byte's offset + 1, -1 (FPCR) or -2
// (vector length). d8–d15 (callee-saved) and FPCR are put back before returning.
	.arch	armv8.2-a+sve
	.text
	.globl	sve_hold
	.type	sve_hold, %function
sve_hold:
	stp	d8, d9, [sp, #-64]!
	stp	d10, d11, [sp, #16]
	stp	d12, d13, [sp, #32]
	stp	d14, d15, [sp, #48]
	mrs	x9, fpcr
	msr	fpcr, x3
	addvl	x10, x0, #16		// P0 of expect: 32 VL on (ADDVL adds at most 31 VL)
	addvl	x10, x10, #16
	addvl	x11, x1, #16		// P0 of seen
	addvl	x11, x11, #16
	rdvl	x12, #1			// VL in bytes
	mov	x13, #34		// bytes compared: 32 VL (Z) + 17 VL/8 (P, FFR)
	mul	x13, x12, x13
	add	x13, x13, x12, lsr #3
	ldr	p0, [x10, #16, mul vl]
	wrffr	p0.b
	.irp	n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	ldr	p\n, [x10, #\n, mul vl]
	.endr
	.irp	n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	ldr	z\n, [x0, #\n, mul vl]
	.endr
1:	.irp	n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	str	z\n, [x1, #\n, mul vl]
	.endr
	.irp	n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15
	str	p\n, [x11, #\n, mul vl]
	.endr
	rdffr	p0.b
	str	p0, [x11, #16, mul vl]
	ldr	p0, [x11, #0, mul vl]	// P0 back from its copy
	mov	x4, #0
2:	ldrb	w5, [x0, x4]
	ldrb	w6, [x1, x4]
	cmp	w5, w6
	b.ne	8f
	add	x4, x4, #1
	cmp	x4, x13
	b.lo	2b
	mrs	x5, fpcr
	cmp	x5, x3
	b.ne	7f
	rdvl	x5, #1
	cmp	x5, x12
	b.ne	6f
	ldr	x5, [x2, #8]
	add	x5, x5, #1
	str	x5, [x2, #8]
	ldr	x5, [x2]
	cbz	x5, 1b
	mov	x0, #0
	b	9f
8:	add	x0, x4, #1
	b	9f
7:	mov	x0, #-1
	b	9f
6:	mov	x0, #-2
9:	msr	fpcr, x9
	ldp	d14, d15, [sp, #48]
	ldp	d12, d13, [sp, #32]
	ldp	d10, d11, [sp, #16]
	ldp	d8, d9, [sp], #64
	ret
	.size	sve_hold, . - sve_hold

	.section .note.GNU-stack, "", %progbits
