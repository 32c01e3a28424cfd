# profile: v6.18
# The same calls as seed_bug_f2_flags_only.gms (upstream-fixes.md F2, smallest scenario) on
# v6.18, which has the fix "KVM: Disallow toggling KVM_MEM_GUEST_MEMFD on an existing memslot"
# (6.18.44 carries it, kernel-semantics.md §0.2, §3.1 step 8): the re-issue with flags 0 is
# EINVAL, the binding stays intact and the invariants hold.

vm = create_vm type=SW_PROTECTED                        => ok
g = create_guest_memfd vm size=2M flags=0               => ok   # gmem F
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g => ok   # bind slot 0 to F
# the same slot, gpa, size and uaddr, flags 0 (guest_memfd is ignored without GUEST_MEMFD)
set_user_memory_region2 vm slot=0 flags=0 gpa=0xc0000000 size=2M uaddr=0 guest_memfd=-1 => EINVAL   # the fix

warnings                                                => ok 0
check_invariants                                        => ok
