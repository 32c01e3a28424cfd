# profile: v6.18
# The MMU notifier of the VM owner's address space (kvm_mmu_notifier_invalidate_range_start and
# _end): munmap and madvise of a memslot's userspace_addr, and a punch or memory failure of the
# file mapped there, zap the SPTEs that map it before the pages go, and the guest faults again
# into whatever backs the address then.
# The backing is an MMAP|INIT_SHARED guest_memfd mapped into the process and passed as the
# userspace_addr of a plain memslot, so shared faults go through the process's mapping.
# On /dev/kvm the guest verbs and dump skip; the host-side lines do not depend on them.

vm = create_vm
g = create_guest_memfd vm size=64K flags=MMAP|INIT_SHARED
m = mmap g len=64K
set_user_memory_region2 vm slot=0 gpa=1M size=64K uaddr=m                  => ok
v = create_vcpu vm
store m offset=0x1000 bytes=1122                                            => ok
guest_load v gpa=0x101000 len=2                                             => ok 1122
guest_store v gpa=0x102000 bytes=33                                         => ok
# Two shared SPTEs, gfns 0x101 and 0x102.
dump vm

# MADV_DONTNEED zaps the PTEs, and the notifier the SPTE of gfn 0x101 (not 0x102's); the data
# stays in the file, so the guest re-faults and reads it.
madvise m offset=0x1000 len=4K advice=DONTNEED                              => ok
dump vm
guest_load v gpa=0x101000 len=2                                             => ok 1122

# MADV_REMOVE punches the file behind the mapping: the SPTE goes first, then the guest faults in
# a fresh, zeroed page.
madvise m offset=0x2000 len=4K advice=REMOVE                                => ok
guest_load v gpa=0x102000 len=1                                             => ok 00

# A punch through the descriptor (not the mapping): truncation unmaps the mapped folio from every
# VMA of the file's reverse map (i_mmap), so the notifier zaps gfn 0x103's SPTE before the frame
# is freed; the guest then faults a fresh, zeroed page in.
guest_store v gpa=0x103000 bytes=44                                         => ok
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0x3000 len=4K                  => ok
check_invariants                                                            => ok
guest_load v gpa=0x103000 len=1                                             => ok 00

# Memory failure unmaps the page from every mapping first (hwpoison_user_mappings), then
# guest_memfd keeps the poisoned folio: the guest's next access is a SIGBUS.
guest_store v gpa=0x104000 bytes=55                                         => ok
inject_memory_failure g offset=0x4000                                       => ok
check_invariants                                                            => ok
guest_load v gpa=0x104000 len=1                                             => SIGBUS

# munmap: every SPTE of the slot goes; nothing maps userspace_addr any more, so the access fails
# with EFAULT (no exit).
munmap m                                                                    => ok
dump vm
guest_load v gpa=0x101000 len=1                                             => EFAULT

warnings                                                                    => ok 0
check_invariants                                                            => ok
