# profile: v6.18
# The failure branch of the seed's kvm_gmem_prepare_folio: the arch prepare hook
# (kvm_arch_gmem_prepare) fails, the folio stays in the page cache but is not marked uptodate,
# kvm_gmem_get_pfn returns the error, and the private fault turns it into KVM_EXIT_MEMORY_FAULT
# with that errno. A SW_PROTECTED VM's hook cannot fail, so `inject gmem_prepare` makes the next
# prepares fail with EIO. Because the folio was not marked prepared, the next fault prepares it
# again (INV-UPTODATE-PREPARED): a second injected failure is hit, then the access succeeds.
# `dump g` shows the folio with uptodate=0, then uptodate=1. Guest verbs skip on `/dev/kvm`.

vm = create_vm type=SW_PROTECTED
g = create_guest_memfd vm size=16K
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=16K guest_memfd=g => ok
set_memory_attributes vm address=0 size=16K attributes=PRIVATE              => ok
v = create_vcpu vm id=0

# The next two prepares fail: each private fault exits with the hook's errno, nothing is mapped.
inject gmem_prepare count=2                                                 => ok
guest_store v gpa=0x1010 bytes=2a2b2c       => exit MEMORY_FAULT gpa=0x1000 size=0x1000 flags=PRIVATE errno=EIO
dump g
guest_load v gpa=0x1010 len=3               => exit MEMORY_FAULT gpa=0x1000 size=0x1000 flags=PRIVATE errno=EIO
# Without the injection the fault prepares the folio (zeroed: the failed store wrote nothing)
# and maps it.
guest_load v gpa=0x1010 len=3                                               => ok 000000
guest_store v gpa=0x1010 bytes=2a2b2c                                       => ok
guest_load v gpa=0x1010 len=3                                               => ok 2a2b2c
dump g

# `after=N` lets N prepares pass first: page 2 prepares, page 3 fails.
inject gmem_prepare count=1 after=1                                         => ok
guest_load v gpa=0x2000 len=1                                               => ok 00
guest_load v gpa=0x3000 len=1      => exit MEMORY_FAULT gpa=0x3000 size=0x1000 flags=PRIVATE errno=EIO
guest_load v gpa=0x3000 len=1                                               => ok 00

warnings                                                                    => ok 0
check_invariants                                                            => ok
