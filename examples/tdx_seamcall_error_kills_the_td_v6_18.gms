# profile: v6.18
# host: intel
# KVM's TDX error policy (arch/x86/kvm/vmx/tdx.c of 6.18.44): a TDX_OPERAND_BUSY from a SEAMCALL
# that zaps a private page is retried (with the vCPUs kept out of the TD), but any other failure
# is a KVM_BUG_ON. Here an injected TDX_OPERAND_INVALID from TDH.MEM.PAGE.REMOVE, while a
# conversion to shared zaps a page of a running TD: the VM is dead (every later VM and vCPU ioctl
# is EIO), and the page is leaked, kept from the host rather than handed back half-released.
# At teardown the TD's control pages cannot be reclaimed while the TD still owns that page (the
# module refuses with TDX_TD_ASSOCIATED_PAGES_EXIST, a WARN): they are leaked too, and nothing
# the TD owns reaches the host's free pool (check_invariants runs the TDX module's invariants).

vm = create_vm type=TDX                                          => ok
tdx_init_vm vm                                                   => ok
g = create_guest_memfd vm size=2M                                => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g => ok
set_memory_attributes vm address=0 size=1M attributes=PRIVATE    => ok
v = create_vcpu vm                                               => ok
tdx_init_vcpu v                                                  => ok
tdx_init_mem_region v gpa=0 size=4K measure=1 bytes=6b65726e656c => ok source_addr=bytes+0x1000 gpa=0x1000 nr_pages=0
tdx_finalize_vm vm                                               => ok
pre_fault_memory v gpa=0x10000 size=8K                           => ok 0

# BUSY: the REMOVE is retried once with the vCPUs kicked out and kept out; the conversion
# completes and the TD lives on.
inject tdx leaf=MEM_PAGE_REMOVE status=OPERAND_BUSY|SEPT         => ok
set_memory_attributes vm address=0x10000 size=4K attributes=0    => ok
tdx_state vm                                                     => ok state=RUNNABLE nr_premapped=0 hkid_assigned=1 leaked=0 bugged=0
warnings                                                         => ok 0

# Anything else: KVM_BUG_ON, in tdx_sept_drop_private_spte and again in the TDP MMU's
# remove_external_spte, which gets EIO from the hook. The conversion itself reports success (the
# zap cannot fail it), but the VM is bugged and the page leaked.
inject tdx leaf=MEM_PAGE_REMOVE status=OPERAND_INVALID|RCX       => ok
set_memory_attributes vm address=0x11000 size=4K attributes=0    => ok
tdx_state vm                                                     => ok state=RUNNABLE nr_premapped=0 hkid_assigned=1 leaked=1 bugged=1
warnings                                                         => ok 2   # tdx.c's KVM_BUG_ON, and the TDP MMU's on the hook's EIO

# Every VM and vCPU ioctl is EIO from now on.
set_memory_attributes vm address=0 size=4K attributes=0          => EIO
tdx_finalize_vm vm                                               => EIO
tdx_capabilities vm                                              => EIO
create_guest_memfd vm size=4K                                    => EIO
create_vcpu vm id=1                                              => EIO
pre_fault_memory v gpa=0x20000 size=4K                           => EIO
tdx_init_mem_region v gpa=0x2000 size=4K                         => EIO
# The guest_memfd is a file of its own: fallocate still works on it.
fallocate g mode=KEEP_SIZE offset=0x100000 len=4K                => ok
check_invariants                                                 => ok

# Teardown: the remaining private pages are removed, the KeyID freed, but the TDR cannot be
# reclaimed while the TD owns the leaked page (WARN), so the TD's control pages stay leaked.
close v                                                          => ok
close g                                                          => ok
close vm                                                         => ok
warnings                                                         => ok 3   # TDH.PHYMEM.PAGE.RECLAIM of the TDR
check_invariants                                                 => ok
