// The arm64 bootstrap (rpatch_arch::aarch64::remote_call::bootstrap_code), written out from its
// documentation for GNU as: scripts/gen-aarch64-vectors.sh assembles it into the known-answer
// words of arch/tests/data/aarch64-vectors.txt (ids boot.N).
	svc	#0
	ldp	x0, x1, [sp]
	ldp	x2, x3, [sp, #16]
	ldp	x4, x5, [sp, #32]
	ldr	x8, [sp, #48]
	svc	#0
park:
	movz	x0, #0
	movz	x1, #0
	add	x2, sp, #64
	movz	x3, #0
	movz	x8, #73
	svc	#0
	cmn	x0, #4
	b.eq	park
	movz	x0, #2
	add	x1, sp, #80
	movz	x2, #0
	movz	x3, #8
	movz	x8, #135
	svc	#0
	ldr	x16, [sp, #360]
	msr	nzcv, x16
	ldp	x0, x1, [sp, #96]
	ldp	x2, x3, [sp, #112]
	ldp	x4, x5, [sp, #128]
	ldp	x6, x7, [sp, #144]
	ldp	x8, x9, [sp, #160]
	ldp	x10, x11, [sp, #176]
	ldp	x12, x13, [sp, #192]
	ldp	x14, x15, [sp, #208]
	ldp	x17, x18, [sp, #232]
	ldp	x19, x20, [sp, #248]
	ldp	x21, x22, [sp, #264]
	ldp	x23, x24, [sp, #280]
	ldp	x25, x26, [sp, #296]
	ldp	x27, x28, [sp, #312]
	ldp	x29, x30, [sp, #328]
	ldr	x16, [sp, #352]
	add	sp, sp, #368
	ret	x16
