# profile: v6.18
# Guest accesses through the software TDP MMU (arch-and-mmu.md §3): private faults served by
# guest_memfd, KVM_EXIT_MEMORY_FAULT when the access kind and the PRIVATE attribute disagree,
# conversions and punch holes zapping what the guest had mapped, KVM_PRE_FAULT_MEMORY.
# A SW_PROTECTED guest's accesses are private exactly where the gfn is PRIVATE; `private=0|1`
# forces the kind, as SNP's C-bit or TDX's shared bit would.
# On /dev/kvm (v6.18-pvm) the SW_PROTECTED VM cannot be created and the guest verbs skip; the
# host-side lines below do not depend on what a guest did, so both backends still agree.

vm = create_vm type=SW_PROTECTED
g = create_guest_memfd vm size=64K
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=64K guest_memfd=g => ok
set_memory_attributes vm address=0 size=64K attributes=PRIVATE            => ok
v = create_vcpu vm id=0
create_vcpu vm id=0                                                         => EEXIST
create_vcpu vm id=16384                                                     => EINVAL

# A private fault allocates, zeroes and prepares the folio and maps it; later accesses hit the
# SPTE, whatever kind they claim.
guest_store v gpa=0x1010 bytes=2a2b2c                                       => ok
guest_load v gpa=0x1010 len=3                                               => ok 2a2b2c
guest_load v gpa=0x1010 len=3 private=1                                     => ok 2a2b2c
# A shared access to an unmapped private page.
guest_load v gpa=0x2000 len=1 private=0          => exit MEMORY_FAULT gpa=0x2000 size=0x1000 flags=0

# Converting gfn 1 to shared zaps its private SPTE: a private access now exits, and the default
# (shared) access reads the shared backing (the slot's anonymous userspace_addr: zeroes).
set_memory_attributes vm address=0x1000 size=4K attributes=0                => ok
guest_load v gpa=0x1010 len=1 private=1    => exit MEMORY_FAULT gpa=0x1000 size=0x1000 flags=PRIVATE
guest_load v gpa=0x1010 len=3                                               => ok 000000
# Converting back zaps the shared SPTE; the private data is still in guest_memfd.
set_memory_attributes vm address=0x1000 size=4K attributes=PRIVATE          => ok
guest_load v gpa=0x1010 len=3                                               => ok 2a2b2c

# Punching a hole zaps the SPTE before the folio is freed; the guest then faults in a fresh,
# zeroed page.
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0x1000 len=4K                  => ok
guest_load v gpa=0x1010 len=3                                               => ok 000000

# KVM_PRE_FAULT_MEMORY maps what a fault would; past the memslot there is nothing to map.
pre_fault_memory v gpa=0x4000 size=16K                                      => ok 0
pre_fault_memory v gpa=64K size=4K                                          => ENOENT
pre_fault_memory v gpa=0x4800 size=4K                                       => EINVAL
# No memslot and not private: the access is MMIO, for the VMM to emulate.
set_memory_attributes vm address=1M size=4K attributes=0                    => ok
guest_store v gpa=1M bytes=01                     => exit MMIO phys_addr=0x100000 len=0x1 is_write=1

# A DEFAULT VM on an MMAP|INIT_SHARED guest_memfd (a v6.18 GMEM_ONLY slot): shared faults are
# served by guest_memfd too, so the guest sees what the host wrote through the mapping.
dvm = create_vm
dg = create_guest_memfd dvm size=64K flags=MMAP|INIT_SHARED
set_user_memory_region2 dvm slot=0 flags=GUEST_MEMFD gpa=0 size=64K guest_memfd=dg => ok
m = mmap dg len=64K
store m offset=0x3000 bytes=abcd                                            => ok
dv = create_vcpu dvm
guest_load dv gpa=0x3000 len=2                                              => ok abcd
guest_store dv gpa=0x3002 bytes=ef                                          => ok
guest_load dv gpa=0x3000 len=3                                              => ok abcdef
fallocate dg mode=KEEP_SIZE|PUNCH_HOLE offset=0x3000 len=4K                 => ok
guest_load dv gpa=0x3000 len=3                                              => ok 000000
# A DEFAULT VM has no private memory: every private access mismatches.
guest_load dv gpa=0x5000 len=1 private=1   => exit MEMORY_FAULT gpa=0x5000 size=0x1000 flags=PRIVATE
pre_fault_memory dv gpa=0 size=8K                                           => ok 0

warnings                                                                    => ok 0
check_invariants                                                            => ok
