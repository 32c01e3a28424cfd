# profile: v6.18
# host: intel
# A TD guest touching a private page it has not accepted (arch/x86/kvm/vmx/tdx.c of 6.18.44).
# The first touch is an EPT violation: KVM's fault AUGs the page (TDH.MEM.PAGE.AUG: PENDING in
# the Secure EPT) and re-enters the guest, whose access then finds the page PENDING. Without
# SEPT_VE_DISABLE the TDX module gives the guest a #VE (Linux's handler would accept the page,
# or panic); the guest accepts it and goes on. With SEPT_VE_DISABLE (QEMU's default) the module
# exits to KVM instead with a "pending" EPT violation, which tdx_handle_ept_violation treats as
# fatal ("Guest access before accepting", a pr_warn and not a WARN): kvm_vm_dead, KVM_RUN fails
# with EIO, and so does every later ioctl on the VM and its vCPUs. The other TD is unaffected.
# On /dev/kvm here (no TDX) the TDs are EINVAL and the host-side lines fail with EBADF, as under
# v6.18-pvm; the guest-side and simulator-only lines skip.

# TD 1: no SEPT_VE_DISABLE.
vm = create_vm type=TDX                                          => ok
tdx_init_vm vm attributes=0                                      => ok
g = create_guest_memfd vm size=2M                                => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g => ok
set_memory_attributes vm address=0 size=2M attributes=PRIVATE    => ok
v = create_vcpu vm                                               => ok
tdx_init_vcpu v                                                  => ok
tdx_init_mem_region v gpa=0 size=4K measure=1 bytes=6b65726e656c => ok source_addr=bytes+0x1000 gpa=0x1000 nr_pages=0
tdx_finalize_vm vm                                               => ok
# The image page is MAPPED: no ACCEPT needed.
guest_load v gpa=0 len=6                                         => ok 6b65726e656c
# A page never accepted: AUGed by the fault, then a #VE for the page; again while it is PENDING.
guest_load v gpa=0x40000 len=4                                   => guest #VE gpa=0x40000 reason=ept-violation-pending-page
dump vm                                                          => ok
guest_store v gpa=0x40010 bytes=2a                               => guest #VE gpa=0x40000 reason=ept-violation-pending-page
# The guest accepts it: MAPPED and zeroed, and its accesses complete.
tdx_accept v gpa=0x40000                                         => ok SUCCESS
guest_store v gpa=0x40010 bytes=2a                               => ok
guest_load v gpa=0x40000 len=4                                   => ok 00000000
guest_load v gpa=0x40010 len=1                                   => ok 2a
# A pre-fault AUGs a page too (PENDING); the guest still gets its #VE until it accepts.
pre_fault_memory v gpa=0x41000 size=4K                           => ok 0
guest_load v gpa=0x41000 len=1                                   => guest #VE gpa=0x41000 reason=ept-violation-pending-page
tdx_accept v gpa=0x41000                                         => ok SUCCESS
guest_load v gpa=0x41000 len=1                                   => ok 00
tdx_state vm                                                     => ok state=RUNNABLE nr_premapped=0 hkid_assigned=1 leaked=0 bugged=0
check_invariants                                                 => ok
warnings                                                         => ok 0

# TD 2: SEPT_VE_DISABLE (tdx_init_vm's default).
vm2 = create_vm type=TDX                                         => ok
tdx_init_vm vm2                                                  => ok
g2 = create_guest_memfd vm2 size=2M                              => ok
set_user_memory_region2 vm2 slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g2 => ok
set_memory_attributes vm2 address=0 size=2M attributes=PRIVATE   => ok
v2 = create_vcpu vm2                                             => ok
tdx_init_vcpu v2                                                 => ok
tdx_init_mem_region v2 gpa=0 size=4K measure=1 bytes=6b65726e656c => ok source_addr=bytes+0x1000 gpa=0x1000 nr_pages=0
tdx_finalize_vm vm2                                              => ok
guest_load v2 gpa=0 len=6                                        => ok 6b65726e656c
# The store before any ACCEPT: the page is AUGed, the access finds it PENDING, the TD is killed.
guest_store v2 gpa=0x40000 bytes=2a                              => EIO
tdx_state vm2                                                    => ok state=RUNNABLE nr_premapped=0 hkid_assigned=1 leaked=0 bugged=1
warnings                                                         => ok 0
# Every later ioctl on the dead VM or its vCPUs is EIO: KVM_RUN (the guest's accesses, ACCEPT,
# MapGPA), the vCPU and VM ioctls.
guest_load v2 gpa=0 len=6                                        => EIO
tdx_accept v2 gpa=0x40000                                        => EIO
tdx_map_gpa v2 gpa=0x40000 size=4K shared=1                      => EIO
pre_fault_memory v2 gpa=0x50000 size=4K                          => EIO
tdx_init_vcpu v2                                                 => EIO
set_memory_attributes vm2 address=0x40000 size=4K attributes=0  => EIO
create_vcpu vm2 id=1                                             => EIO
# TD 1 runs on.
guest_load v gpa=0x40010 len=1                                   => ok 2a
check_invariants                                                 => ok

# Teardown of both: the dead TD's pages go back through the TDX module too, without a WARN.
close v2                                                         => ok
close g2                                                         => ok
close vm2                                                        => ok
close v                                                          => ok
close g                                                          => ok
close vm                                                         => ok
check_invariants                                                 => ok
warnings                                                         => ok 0
