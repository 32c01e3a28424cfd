# profile: v6.14
# Reproduces upstream-fixes.md F2 ("KVM: Disallow toggling KVM_MEM_GUEST_MEMFD on an existing
# memslot") on the seed, which lacks the fix: its smallest scenario, single-threaded, on a
# SW_PROTECTED VM (on v6.14 a DEFAULT VM cannot bind a guest_memfd at all). Re-issuing the
# guest_memfd memslot with the same slot, gpa, size and uaddr but flags 0 is accepted as a
# FLAGS_ONLY change: the old memslot is replaced and freed without kvm_gmem_unbind(), so the
# gmem's bindings keep pointing at it, and INV-BIND is violated right after that ioctl.
# This file exists to show that violation, so it does not end with `check_invariants => ok`.
# The fixed behaviour is in seed_bug_f2_fixed.gms.

vm = create_vm type=SW_PROTECTED                        => ok
g = create_guest_memfd vm size=2M flags=0               => ok   # gmem F
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g => ok   # bind slot 0 to F
# the same slot, gpa, size and uaddr, flags 0 (guest_memfd is ignored without GUEST_MEMFD)
set_user_memory_region2 vm slot=0 flags=0 gpa=0xc0000000 size=2M uaddr=0 guest_memfd=-1 => ok   # the seed's bug: FLAGS_ONLY
# x86's kvm_mmu_slot_apply_flags WARNs on a FLAGS_ONLY change that does not toggle dirty
# logging (the only flag it expects to change): the kernel's own hint that something is off.
warnings                                                => ok 1
# details follow as indented lines; they are not compared
check_invariants                                        => VIOLATION INV-BIND
# Closing F runs kvm_gmem_release(), which writes NULL into the freed memslot's gmem.file
# (the use-after-free KASAN reported) and then reads the freed slot's range to zap it. The
# simulator records each access to the freed memslot as a warning: two more.
close g                                                 => ok
warnings                                                => ok 3
dump
