# profile: v6.18
# host: intel
# Reproduces upstream-fixes.md F15 ("KVM: TDX: ADD pages to the TD image while populating mirror
# EPT entries", v6.19) on v6.18, which lacks it: its smallest deterministic scenario. v6.18's
# KVM_TDX_INIT_MEM_REGION maps the page into the mirror EPT first (the S-EPT set hook only counts
# it in nr_premapped) and issues TDH.MEM.PAGE.ADD afterwards, outside mmu_lock. When that ADD
# meets a busy Secure EPT (here an injected TDX_OPERAND_BUSY on the S-EPT operand, which a
# concurrent SEAMCALL holding the S-EPT gives), INIT_MEM_REGION gives up with EBUSY and leaves the
# mirror and the S-EPT out of sync: the leaf stays premapped, the guest_memfd page is prepared
# (a retry is EEXIST), and FINALIZE is refused while nr_premapped is not 0. The launch cannot
# complete until the page is zapped again, which loses it from the image. With the fix the ADD
# is the set hook's, under mmu_lock, and a BUSY one reverts the mirror entry and retries the
# fault: tdx_bug_f15_fixed.gms, the same calls under v6.18+F15.

vm = create_vm type=TDX                                          => ok
tdx_init_vm vm                                                   => ok
g = create_guest_memfd vm size=2M                                => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g => ok
set_memory_attributes vm address=0 size=1M attributes=PRIVATE    => ok
v = create_vcpu vm                                               => ok
tdx_init_vcpu v                                                  => ok

inject tdx leaf=MEM_PAGE_ADD status=OPERAND_BUSY|SEPT            => ok
tdx_init_mem_region v gpa=0 size=4K measure=1 bytes=6b65726e656c => EBUSY   # the bug: the ADD is not retried
tdx_state vm                                                     => ok state=INITIALIZED nr_premapped=1 hkid_assigned=1 leaked=0 bugged=0
tdx_init_mem_region v gpa=0 size=4K measure=1 bytes=6b65726e656c => EEXIST  # the page is prepared already
tdx_finalize_vm vm                                               => EINVAL  # a premapped leaf awaits its ADD
check_invariants                                                 => ok      # T5: the premapped leaf is counted

# The only way on: zap the page (here by converting it to shared; TDH.MEM.RANGE.BLOCK finds the
# S-EPT leaf empty, the premap signature, and nr_premapped drops), which loses it from the image.
set_memory_attributes vm address=0 size=4K attributes=0          => ok
tdx_state vm                                                     => ok state=INITIALIZED nr_premapped=0 hkid_assigned=1 leaked=0 bugged=0
tdx_finalize_vm vm                                               => ok
warnings                                                         => ok 0
check_invariants                                                 => ok
