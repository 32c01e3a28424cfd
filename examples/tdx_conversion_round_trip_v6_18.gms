# profile: v6.18
# host: intel
# A TD converts a page private -> shared -> private as a Linux guest does, with the VMM's part
# done by the script the way QEMU does it (kvm_convert_memory). The guest accepts a private
# page before its first use (TDG.MEM.PAGE.ACCEPT: the EPT violation makes KVM AUG the page, the
# ACCEPT zeroes and maps it), asks for a conversion with TDG.VP.VMCALL<MapGPA>, which KVM
# forwards as KVM_EXIT_HYPERCALL (KVM_HC_MAP_GPA_RANGE, nr 12; args gpa without the shared bit,
# pages, ENCRYPTED 0x10 or DECRYPTED 0), and the VMM sets the memory attributes, discards the
# side the page leaves (guest_memfd's page by PUNCH_HOLE, which removes it from the TD; the
# shared backing by MADV_DONTNEED) and completes the exit with the next KVM_RUN. A page back
# from shared is a new page: accepted again, zeroed, the old private data gone. The TD has
# SEPT_VE_DISABLE (QEMU's default) and GPAW 48, so its shared bit is gpa bit 47 (`shared=1`
# adds it). `dump vm` shows the Secure EPT's leaves and their states. On /dev/kvm here (no TDX)
# the TD is EINVAL and the host-side lines fail with EBADF, as under v6.18-pvm; the guest-side
# lines skip.

# The launch (tdx_launch_v6_18.gms shows each step's checks), and the MapGPA exit enabled.
vm = create_vm type=TDX                                          => ok
tdx_init_vm vm                                                   => ok
g = create_guest_memfd vm size=2M                                => ok
shared = mmap -1 len=2M flags=PRIVATE|ANONYMOUS                  => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M uaddr=shared guest_memfd=g => ok
set_memory_attributes vm address=0 size=2M attributes=PRIVATE    => ok
v = create_vcpu vm                                               => ok
tdx_init_vcpu v                                                  => ok
tdx_init_mem_region v gpa=0 size=4K measure=1 bytes=6b65726e656c => ok source_addr=bytes+0x1000 gpa=0x1000 nr_pages=0
tdx_finalize_vm vm                                               => ok
enable_cap vm EXIT_HYPERCALL arg0=0x1000                         => ok

# The image page was added by TDH.MEM.PAGE.ADD: MAPPED, the guest reads it as it is; accepting it
# again is the module's "already accepted", a status that is not an error.
guest_load v gpa=0 len=6                                         => ok 6b65726e656c
tdx_accept v gpa=0                                               => ok PAGE_ALREADY_ACCEPTED

# A private page the guest never touched has no S-EPT leaf. Its ACCEPT is the first touch: an
# EPT violation, KVM's fault AUGs the page (PENDING), the ACCEPT runs again and maps it, zeroed.
dump vm                                                          => ok
tdx_accept v gpa=0x40000                                         => ok SUCCESS
dump vm                                                          => ok
guest_load v gpa=0x40000 len=8                                   => ok 0000000000000000
guest_store v gpa=0x40000 bytes=7072697661746521                 => ok
guest_load v gpa=0x40000 len=8                                   => ok 7072697661746521
tdx_accept v gpa=0x40000                                         => ok PAGE_ALREADY_ACCEPTED
check_invariants                                                 => ok

# Private -> shared. MapGPA names the shared alias of the page; KVM exits with its gpa.
tdx_map_gpa v gpa=0x40000 size=4K shared=1                       => exit HYPERCALL nr=12 args=0x40000,0x1,0x0 flags=0x1
# The VMM: the attribute first, then the private page out of guest_memfd (BLOCK, TRACK, REMOVE).
set_memory_attributes vm address=0x40000 size=4K attributes=0     => ok
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0x40000 len=4K      => ok
# KVM_RUN completes the TDVMCALL: R10 = TDVMCALL_STATUS_SUCCESS, R11 the leaf (MapGPA, 0x10001).
complete_hypercall v                                             => ok status=SUCCESS r11=0x10001
complete_hypercall v                                             => EINVAL   # nothing is pending
dump vm                                                          => ok
check_invariants                                                 => ok
# The guest's accesses through the shared alias land in the VMM's memory (the gpa with bit 47
# written out is the same access). A private access now is the VMM's memory-fault exit, and an
# explicit kind that contradicts the gpa's shared bit is refused.
guest_store v gpa=0x40000 bytes=736861726564 shared=1            => ok
load shared offset=0x40000 len=6                                 => ok 736861726564
guest_load v gpa=0x800000040000 len=6                            => ok 736861726564
guest_load v gpa=0x40000 len=6                                   => exit MEMORY_FAULT gpa=0x40000 size=0x1000 flags=PRIVATE
guest_load v gpa=0x40000 len=6 private=0                         => EINVAL
# ACCEPT takes a private gpa only (the module refuses the operand in RCX).
tdx_accept v gpa=0x40000 shared=1                                => ok OPERAND_INVALID|RCX

# Shared -> private. MapGPA of the private gpa: ENCRYPTED.
tdx_map_gpa v gpa=0x40000 size=4K                                => exit HYPERCALL nr=12 args=0x40000,0x1,0x10 flags=0x1
set_memory_attributes vm address=0x40000 size=4K attributes=PRIVATE => ok
madvise shared offset=0x40000 len=4K advice=DONTNEED             => ok
complete_hypercall v                                             => ok status=SUCCESS r11=0x10001
# The guest accepts the page before using it (an access first would kill this TD:
# tdx_guest_access_before_accept_v6_18.gms). A new page: the private data did not survive, and
# the shared data is gone with the shared backing.
tdx_accept v gpa=0x40000                                         => ok SUCCESS
guest_load v gpa=0x40000 len=8                                   => ok 0000000000000000
load shared offset=0x40000 len=6                                 => ok 000000000000
guest_store v gpa=0x40000 bytes=616761696e                       => ok
guest_load v gpa=0x40000 len=5                                   => ok 616761696e
dump vm                                                          => ok
tdx_state vm                                                     => ok state=RUNNABLE nr_premapped=0 hkid_assigned=1 leaked=0 bugged=0
check_invariants                                                 => ok
warnings                                                         => ok 0

# Teardown: every private page goes back through the TDX module.
close v                                                          => ok
close g                                                          => ok
close vm                                                         => ok
check_invariants                                                 => ok
warnings                                                         => ok 0
