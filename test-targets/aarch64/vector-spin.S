// Spin loops with live vector state, for test-targets/aarch64/vectors.c. Each never returns.
	.arch	armv9-a+sve+sme
	.text

// Z and P registers in use (the kernel keeps the thread's SVE state live until its next
// system call).
	.globl	spin_sve
	.type	spin_sve, %function
spin_sve:
	bti	c
	ptrue	p0.b
	mov	z0.b, #1
1:	add	z0.b, z0.b, #1
	b	1b

// SME streaming mode (PSTATE.SM).
	.globl	spin_streaming
	.type	spin_streaming, %function
spin_streaming:
	bti	c
	smstart	sm
2:	add	x0, x0, #1
	b	2b

// SME ZA storage enabled (PSTATE.ZA), outside streaming mode.
	.globl	spin_za
	.type	spin_za, %function
spin_za:
	bti	c
	smstart	za
3:	add	x0, x0, #1
	b	3b

	.section .note.GNU-stack, "", %progbits
