// The arm64 call stub for 4 KiB pages (rpatch_arch::aarch64::remote_call::call_stub(4096)) up
// to its return slot, written out from its documentation for GNU as:
// scripts/gen-aarch64-vectors.sh assembles it into the known-answer words of
// arch/tests/data/aarch64-vectors.txt (ids stub4k.N). The data block is at 0x41000 from the
// code page (one page, then the 256 KiB stack).
stub:
	adr	x19, stub + 0x41000
	add	x20, x19, #0x1b0
	stp	q0, q1, [x20, #0]
	stp	q2, q3, [x20, #32]
	stp	q4, q5, [x20, #64]
	stp	q6, q7, [x20, #96]
	stp	q8, q9, [x20, #128]
	stp	q10, q11, [x20, #160]
	stp	q12, q13, [x20, #192]
	stp	q14, q15, [x20, #224]
	stp	q16, q17, [x20, #256]
	stp	q18, q19, [x20, #288]
	stp	q20, q21, [x20, #320]
	stp	q22, q23, [x20, #352]
	stp	q24, q25, [x20, #384]
	stp	q26, q27, [x20, #416]
	stp	q28, q29, [x20, #448]
	stp	q30, q31, [x20, #480]
	mrs	x0, fpsr
	str	w0, [x19, #0x3b0]
	mrs	x0, fpcr
	str	w0, [x19, #0x3b4]
	ldr	x16, [x19, #0x50]
	cbz	x16, call
	blr	x16
	ldr	w1, [x0]
	str	w1, [x19, #0x78]
	str	x0, [x19, #0x70]
call:
	ldp	x0, x1, [x19, #0x20]
	ldp	x2, x3, [x19, #0x30]
	ldp	x4, x5, [x19, #0x40]
	ldr	x16, [x19, #0x18]
	blr	x16
	str	x0, [x19, #0x60]
	cbnz	x0, restore
	ldr	x16, [x19, #0x58]
	cbz	x16, restore
	blr	x16
	str	x0, [x19, #0x68]
restore:
	adr	x19, stub + 0x41000
	ldr	x0, [x19, #0x70]
	cbz	x0, errno_done
	ldr	w1, [x19, #0x78]
	str	w1, [x0]
errno_done:
	movz	x0, #1
	str	x0, [x19, #0x10]
tail:
	movz	x0, #0
	movz	x1, #0
	add	x2, x19, #0x88
	movz	x3, #0
	movz	x8, #73
	svc	#0
	cmn	x0, #4
	b.eq	tail
	add	x20, x19, #0x1b0
	ldp	q0, q1, [x20, #0]
	ldp	q2, q3, [x20, #32]
	ldp	q4, q5, [x20, #64]
	ldp	q6, q7, [x20, #96]
	ldp	q8, q9, [x20, #128]
	ldp	q10, q11, [x20, #160]
	ldp	q12, q13, [x20, #192]
	ldp	q14, q15, [x20, #224]
	ldp	q16, q17, [x20, #256]
	ldp	q18, q19, [x20, #288]
	ldp	q20, q21, [x20, #320]
	ldp	q22, q23, [x20, #352]
	ldp	q24, q25, [x20, #384]
	ldp	q26, q27, [x20, #416]
	ldp	q28, q29, [x20, #448]
	ldp	q30, q31, [x20, #480]
	ldr	w0, [x19, #0x3b0]
	msr	fpsr, x0
	ldr	w0, [x19, #0x3b4]
	msr	fpcr, x0
	movz	x0, #2
	add	x1, x19, #0x80
	movz	x2, #0
	movz	x3, #8
	movz	x8, #135
	svc	#0
	ldr	x16, [x19, #0x1a0]
	msr	nzcv, x16
	ldr	x16, [x19, #0x190]
	mov	sp, x16
	ldp	x0, x1, [x19, #0x98]
	ldp	x2, x3, [x19, #0xa8]
	ldp	x4, x5, [x19, #0xb8]
	ldp	x6, x7, [x19, #0xc8]
	ldp	x8, x9, [x19, #0xd8]
	ldp	x10, x11, [x19, #0xe8]
	ldp	x12, x13, [x19, #0xf8]
	ldp	x14, x15, [x19, #0x108]
	ldp	x17, x18, [x19, #0x120]
	ldp	x20, x21, [x19, #0x138]
	ldp	x22, x23, [x19, #0x148]
	ldp	x24, x25, [x19, #0x158]
	ldp	x26, x27, [x19, #0x168]
	ldp	x28, x29, [x19, #0x178]
	ldr	x30, [x19, #0x188]
	ldr	x16, [x19, #0x118]
	ldr	x19, [x19, #0x130]
