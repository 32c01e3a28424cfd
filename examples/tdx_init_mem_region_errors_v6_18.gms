# profile: v6.18
# host: intel
# Every way KVM_TDX_INIT_MEM_REGION fails, in the order tdx_vcpu_init_mem_region checks
# (arch/x86/kvm/vmx/tdx.c of 6.18.44): the vCPU, the TD's state, the flags, the region's
# alignment and range, then one kvm_gmem_populate per page (a pending signal, the source, the
# memslot, the PRIVATE attribute, a page added already). Once the loop has started, the region is
# copied back whatever happens, so a failure after some pages says where it stopped and a VMM
# resumes from there.

vm = create_vm type=TDX                                          => ok
tdx_init_vm vm                                                   => ok
g = create_guest_memfd vm size=2M                                => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g => ok
set_memory_attributes vm address=0 size=1M attributes=PRIVATE    => ok
set_memory_attributes vm address=0x1ff000 size=4K attributes=PRIVATE => ok
img = mmap -1 len=8K flags=PRIVATE|ANONYMOUS                     => ok
store img offset=0 bytes=6b65726e656c                            => ok

# The vCPU: not one (a VM command's handler has no INIT_MEM_REGION: EINVAL), not initialised.
tdx_init_mem_region vm gpa=0 size=4K source=img                  => EINVAL
v1 = create_vcpu vm id=1                                         => ok
tdx_init_mem_region v1 gpa=0 size=4K source=img                  => EINVAL
v = create_vcpu vm                                               => ok
tdx_init_vcpu v                                                  => ok

# The flags: only KVM_TDX_MEASURE_MEMORY_REGION (bit 0).
tdx_init_mem_region v gpa=0 size=4K source=img flags=2           => EINVAL
tdx_init_mem_region v gpa=0 size=4K source=img measure=1 flags=0x80000000 => EINVAL

# The region: page-aligned source and gpa, at least one page, no wrap, and a private gpa at both
# ends (GPAW 48: bit 47 is the shared bit).
tdx_init_mem_region v gpa=0 size=4K source=0x1001                => EINVAL
tdx_init_mem_region v gpa=0x800 size=4K source=img               => EINVAL
tdx_init_mem_region v gpa=0 size=0 source=img                    => EINVAL
tdx_init_mem_region v gpa=0xfffffffffffff000 nr_pages=2 source=img => EINVAL
tdx_init_mem_region v gpa=0x1000 nr_pages=0x10000000000000 source=img => EINVAL   # nr_pages << 12 wraps to 0
tdx_init_mem_region v gpa=0x800000000000 size=4K source=img      => EINVAL   # the shared alias of gpa 0
tdx_init_mem_region v gpa=0x7ffffffff000 size=8K source=img      => EINVAL   # ends in the shared half

# The populate loop. A signal pending: EINTR, here after the first page (each page checks three
# times: INIT_MEM_REGION's loop, kvm_gmem_populate's, the fault's in kvm_tdp_map_page).
inject signal after=3                                            => ok
tdx_init_mem_region v gpa=0 size=8K source=img                   => EINTR source_addr=img+0x1000 gpa=0x1000 nr_pages=1
# The source must be mapped (the pin is EFAULT; nothing is mapped into the TD).
tdx_init_mem_region v gpa=0x1000 size=4K source=0x1000           => EFAULT
tdx_state vm                                                     => ok state=INITIALIZED nr_premapped=0 hkid_assigned=1 leaked=0 bugged=0
# A page added already: EEXIST before any progress.
tdx_init_mem_region v gpa=0 size=4K source=img                   => EEXIST
# gpa 1M is in the memslot but shared: the page is not PRIVATE (EINVAL).
tdx_init_mem_region v gpa=0x100000 size=4K source=img            => EINVAL
# The last page of the memslot is private, the next is in no memslot: one page is done.
tdx_init_mem_region v gpa=0x1ff000 size=8K source=img            => EINVAL source_addr=img+0x1000 gpa=0x200000 nr_pages=1
# Resuming where it stopped: gpa 0x1000 of the first call.
tdx_init_mem_region v gpa=0x1000 size=4K source=img              => ok source_addr=img+0x1000 gpa=0x2000 nr_pages=0

# Once the TD is finalized its image is fixed.
tdx_finalize_vm vm                                               => ok
tdx_init_mem_region v gpa=0x2000 size=4K source=img              => EINVAL
warnings                                                         => ok 0
check_invariants                                                 => ok
