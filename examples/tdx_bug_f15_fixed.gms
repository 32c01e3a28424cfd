# profile: v6.18+F15
# host: intel
# The calls of tdx_bug_f15_busy_page_add.gms with upstream fix F15 (v6.19): the S-EPT set hook
# issues TDH.MEM.PAGE.ADD itself, under mmu_lock, from the source page INIT_MEM_REGION hands it.
# The injected TDX_OPERAND_BUSY makes the hook fail with EBUSY, which reverts the mirror entry, and
# the fault is retried: the page is added and measured, nothing stays premapped, and the launch
# completes.

vm = create_vm type=TDX                                          => ok
tdx_init_vm vm                                                   => ok
g = create_guest_memfd vm size=2M                                => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g => ok
set_memory_attributes vm address=0 size=1M attributes=PRIVATE    => ok
v = create_vcpu vm                                               => ok
tdx_init_vcpu v                                                  => ok

inject tdx leaf=MEM_PAGE_ADD status=OPERAND_BUSY|SEPT            => ok
tdx_init_mem_region v gpa=0 size=4K measure=1 bytes=6b65726e656c => ok source_addr=bytes+0x1000 gpa=0x1000 nr_pages=0
tdx_state vm                                                     => ok state=INITIALIZED nr_premapped=0 hkid_assigned=1 leaked=0 bugged=0
tdx_init_mem_region v gpa=0 size=4K measure=1 bytes=6b65726e656c => EEXIST  # added once, as it should be
tdx_finalize_vm vm                                               => ok
tdx_state vm                                                     => ok state=RUNNABLE nr_premapped=0 hkid_assigned=1 leaked=0 bugged=0
warnings                                                         => ok 0
check_invariants                                                 => ok
