# profile: v6.18
# host: intel
# A TD launch as a VMM performs it (QEMU's order: KVM_TDX_CAPABILITIES, KVM_TDX_INIT_VM, the
# guest_memfd and its memslot, PRIVATE attributes, a vCPU and KVM_TDX_INIT_VCPU,
# KVM_TDX_INIT_MEM_REGION of the image with its measurement, KVM_TDX_FINALIZE_VM), with the
# checks each step makes and the errno it gives (arch/x86/kvm/vmx/tdx.c of 6.18.44), on the Intel
# host. Then the TD runs (a pre-fault is a TDH.MEM.PAGE.AUG) and is torn down by closing its
# descriptors: every page goes back through the TDX module (no WARN), and the module's own
# invariants still hold once no TD is left. On /dev/kvm here (no TDX) the TDX VM is EINVAL at
# create_vm and everything after it fails on the invalid descriptor, as on the simulator under
# v6.18-pvm.

check_extension VM_TYPES                                         => ok 35   # DEFAULT, SW_PROTECTED, TDX
vm = create_vm type=TDX                                          => ok
tdx_state vm                                                     => ok state=UNINITIALIZED nr_premapped=0 hkid_assigned=0 leaked=0 bugged=0

# KVM_TDX_CAPABILITIES: flags must be 0, and the room for CPUID entries at least the number of
# leaves the module lets a VMM configure (five on this platform). The TD may have
# SEPT_VE_DISABLE (bit 28) of the attributes, and XFAM x87, SSE, AVX, AVX-512 and PKRU (0x2e7).
tdx_capabilities vm flags=1                                      => EINVAL
tdx_capabilities vm nent=4                                       => E2BIG
tdx_capabilities vm                                              => ok supported_attrs=0x10000000 supported_xfam=0x2e7 nent=5

# No vCPU before INIT_VM (tdx_vcpu_create: EIO).
create_vcpu vm                                                   => EIO

# KVM_TDX_INIT_VM: flags must be 0; attributes and XFAM only what the capabilities offer; the CPUID
# must have leaf 0x80000008 with GPAW 48 (52 needs a 5-level EPT, which this host lacks), no TSX
# or WAITPKG, and only leaves the module has a slot for. None of these allocates anything: the TD
# has no KeyID until INIT_VM succeeds. It succeeds once.
tdx_init_vm vm flags=1                                           => EINVAL
tdx_init_vm vm attributes=SEPT_VE_DISABLE|DEBUG                  => EINVAL
tdx_init_vm vm xfam=0x20000                                      => EINVAL   # AMX tile data
tdx_init_vm vm gpaw=0                                            => EINVAL   # no leaf 0x80000008
tdx_init_vm vm gpaw=52                                           => EINVAL
tdx_init_vm vm cpuid=7.0:0:0x800                                 => EINVAL   # RTM (TSX)
tdx_init_vm vm cpuid=0x40000000                                  => EINVAL   # no slot for this leaf
tdx_state vm                                                     => ok state=UNINITIALIZED nr_premapped=0 hkid_assigned=0 leaked=0 bugged=0
tdx_init_vm vm                                                   => ok
tdx_init_vm vm                                                   => EINVAL
tdx_state vm                                                     => ok state=INITIALIZED nr_premapped=0 hkid_assigned=1 leaked=0 bugged=0

# 2M of guest_memfd behind the memslot, the first 1M private.
g = create_guest_memfd vm size=2M                                => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g => ok
set_memory_attributes vm address=0 size=1M attributes=PRIVATE    => ok

# KVM_TDX_INIT_VCPU: flags must be 0; once per vCPU. Memory needs an initialised vCPU.
v = create_vcpu vm                                               => ok
tdx_init_mem_region v gpa=0 size=4K                              => EINVAL
tdx_init_vcpu v flags=1                                          => EINVAL
tdx_init_vcpu v                                                  => ok
tdx_init_vcpu v                                                  => EINVAL
# Before FINALIZE nothing may be pre-faulted (pre_fault_allowed is still false).
pre_fault_memory v gpa=0x10000 size=4K                           => EOPNOTSUPP

# The image, as a VMM loads its firmware: two pages of a mapping, measured into MRTD (one
# TDH.MEM.PAGE.ADD and 16 TDH.MR.EXTEND per page). The region comes back advanced past them.
img = mmap -1 len=8K flags=PRIVATE|ANONYMOUS                     => ok
store img offset=0 bytes=6b65726e656c                            => ok
store img offset=0x1000 bytes=696e6974726400                     => ok
tdx_init_mem_region v gpa=0 size=8K measure=1 source=img         => ok source_addr=img+0x2000 gpa=0x2000 nr_pages=0
# A page added once cannot be added again (kvm_gmem_populate's EEXIST, before any progress).
tdx_init_mem_region v gpa=0 size=4K source=img                   => EEXIST
# Unmeasured data (as QEMU adds a TDVF section without MR_EXTEND) from bytes staged for the
# call; the rest of the page reads as zeros.
tdx_init_mem_region v gpa=0x2000 size=4K bytes=0102              => ok source_addr=bytes+0x1000 gpa=0x3000 nr_pages=0
# Every PAGE.ADD followed its premap: nothing is left pending, so FINALIZE may run.
tdx_state vm                                                     => ok state=INITIALIZED nr_premapped=0 hkid_assigned=1 leaked=0 bugged=0
check_invariants                                                 => ok

# KVM_TDX_FINALIZE_VM: TDH.MR.FINALIZE freezes MRTD; the TD is runnable, and the image fixed.
tdx_finalize_vm vm                                               => ok
tdx_state vm                                                     => ok state=RUNNABLE nr_premapped=0 hkid_assigned=1 leaked=0 bugged=0
tdx_finalize_vm vm                                               => EINVAL
tdx_init_mem_region v gpa=0x4000 size=4K                         => EINVAL
tdx_init_vm vm                                                   => EINVAL
# A private fault now adds a PENDING page (TDH.MEM.PAGE.AUG) for the guest to accept.
pre_fault_memory v gpa=0x10000 size=4K                           => ok 0
check_invariants                                                 => ok
warnings                                                         => ok 0

# Teardown. Closing the guest_memfd removes the private pages from the TD (BLOCK, TRACK, REMOVE,
# WBINVD, clear); closing the last descriptor destroys the VM: the vCPU flushed, the KeyID freed
# (VPFLUSHDONE, CACHE.WB, KEY.FREEID), the S-EPT tables and control pages reclaimed.
close v                                                          => ok
close g                                                          => ok
tdx_state vm                                                     => ok state=RUNNABLE nr_premapped=0 hkid_assigned=1 leaked=0 bugged=0
close vm                                                         => ok
tdx_state vm                                                     => EBADF
munmap img                                                       => ok
check_invariants                                                 => ok   # the TDX module's: no page left a TD's
warnings                                                         => ok 0
