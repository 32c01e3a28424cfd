# profile: v6.18
# Ports the guest_memfd parts of tools/testing/selftests/kvm/set_memory_region_test.c
# (kernel-semantics.md §2.4) as they run on a v6.18 kernel with SW_PROTECTED VMs:
# test_invalid_memory_region_flags, test_add_private_memory_region and
# test_add_overlapping_private_memory_regions. The script format has no verb for the v1 ioctl
# KVM_SET_USER_MEMORY_REGION, so only the v2 calls are ported. The checks that pass the
# /dev/kvm fd or a memfd as guest_memfd cannot be expressed either (no verb opens them).
# A last section, not part of the selftest, contrasts with set_memory_region_test_v6_14.gms.
# MEM_REGION_SIZE = 2M, MEM_REGION_GPA = 0xc0000000, MEM_REGION_SLOT = 10.

# main(): the x86 checks that decide which VM types are used
check_extension GUEST_MEMFD                             => ok 1   # /dev/kvm
# No expectation: BIT(SW_PROTECTED) is set on this profile, but the documents do not give
# the whole mask (the SEV/SNP/TDX bits).
check_extension VM_TYPES

################################################################################################
# test_invalid_memory_region_flags
################################################################################################
# VM_TYPES has SW_PROTECTED, so the test uses a SW_PROTECTED VM
vm = create_vm type=SW_PROTECTED                        => ok
# KVM_CAP_MEMORY_ATTRIBUTES on /dev/kvm reports PRIVATE (§3.1), so supported_flags =
# LOG_DIRTY_PAGES|READONLY|GUEST_MEMFD; v2_only_flags = GUEST_MEMFD
check_extension MEMORY_ATTRIBUTES                       => ok 8
# bits 0 (LOG_DIRTY_PAGES) and 1 (READONLY): supported and not v2-only, skipped
# bit 2 (GUEST_MEMFD): only the v1 call (-> EINVAL), not expressible; supported, so no v2 call
# bits 3..31: the v1 call (not expressible), then v2 (slot 0, BIT(i), gpa 0, MEM_REGION_SIZE,
# uaddr NULL, guest_memfd 0, offset 0): the flags check fails first
set_user_memory_region2 vm slot=0 flags=0x8 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(3)
set_user_memory_region2 vm slot=0 flags=0x10 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(4)
set_user_memory_region2 vm slot=0 flags=0x20 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(5)
set_user_memory_region2 vm slot=0 flags=0x40 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(6)
set_user_memory_region2 vm slot=0 flags=0x80 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(7)
set_user_memory_region2 vm slot=0 flags=0x100 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(8)
set_user_memory_region2 vm slot=0 flags=0x200 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(9)
set_user_memory_region2 vm slot=0 flags=0x400 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(10)
set_user_memory_region2 vm slot=0 flags=0x800 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(11)
set_user_memory_region2 vm slot=0 flags=0x1000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(12)
set_user_memory_region2 vm slot=0 flags=0x2000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(13)
set_user_memory_region2 vm slot=0 flags=0x4000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(14)
set_user_memory_region2 vm slot=0 flags=0x8000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(15)
set_user_memory_region2 vm slot=0 flags=0x10000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(16)
set_user_memory_region2 vm slot=0 flags=0x20000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(17)
set_user_memory_region2 vm slot=0 flags=0x40000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(18)
set_user_memory_region2 vm slot=0 flags=0x80000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(19)
set_user_memory_region2 vm slot=0 flags=0x100000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(20)
set_user_memory_region2 vm slot=0 flags=0x200000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(21)
set_user_memory_region2 vm slot=0 flags=0x400000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(22)
set_user_memory_region2 vm slot=0 flags=0x800000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(23)
set_user_memory_region2 vm slot=0 flags=0x1000000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(24)
set_user_memory_region2 vm slot=0 flags=0x2000000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(25)
set_user_memory_region2 vm slot=0 flags=0x4000000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(26)
set_user_memory_region2 vm slot=0 flags=0x8000000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(27)
set_user_memory_region2 vm slot=0 flags=0x10000000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(28)
set_user_memory_region2 vm slot=0 flags=0x20000000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(29)
set_user_memory_region2 vm slot=0 flags=0x40000000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(30)
set_user_memory_region2 vm slot=0 flags=0x80000000 gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL   # BIT(31)
# supported_flags has GUEST_MEMFD: dirty logging of guest_memfd memory is refused
# (§2.4 does not say which fd this call passes; 0 here: the flags check fails before the fd
# is looked at, §3.1 step 1)
set_user_memory_region2 vm slot=0 flags=LOG_DIRTY_PAGES|GUEST_MEMFD gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL
# Not in the §2.4 description of the test: READONLY|GUEST_MEMFD, also refused by the flags
# check (§3.1 step 1: READONLY is valid only without GUEST_MEMFD)
set_user_memory_region2 vm slot=0 flags=READONLY|GUEST_MEMFD gpa=0 size=2M uaddr=0 guest_memfd=0 => EINVAL
close vm                                                => ok

################################################################################################
# test_add_private_memory_region (runs: GUEST_MEMFD cap and SW_PROTECTED in VM_TYPES)
################################################################################################
vm = create_vm type=SW_PROTECTED                        => ok
# test_invalid_guest_memfd(vm, vm->kvm_fd, 0): the /dev/kvm fd, not expressible
# test_invalid_guest_memfd(vm, vm->fd, 0): the VM's own fd is not a guest_memfd
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=vm => EINVAL
# memfd = kvm_memfd_alloc(MEM_REGION_SIZE): no verb creates a memfd. Standard input (fd 0,
# open, not a guest_memfd) stands in for "a file that is not a guest_memfd" (§2.4: fd 0
# reaches kvm_gmem_bind, which returns EINVAL)
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=0 => EINVAL
# another VM's guest_memfd
vm2 = create_vm type=SW_PROTECTED                       => ok
memfd = create_guest_memfd vm2 size=2M flags=0          => ok
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd => EINVAL   # gmem->kvm != kvm
set_user_memory_region2 vm2 slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd => ok   # binds to its own VM
close memfd                                             => ok
close vm2                                               => ok   # kvm_vm_free(vm2)
# own guest_memfd, unaligned offsets: the selftest tries every offset 1..PAGE_SIZE-1;
# a representative set here
memfd = create_guest_memfd vm size=2M flags=0           => ok
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd guest_memfd_offset=1 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd guest_memfd_offset=2 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd guest_memfd_offset=3 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd guest_memfd_offset=4 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd guest_memfd_offset=8 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd guest_memfd_offset=511 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd guest_memfd_offset=512 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd guest_memfd_offset=1024 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd guest_memfd_offset=2048 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd guest_memfd_offset=2049 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd guest_memfd_offset=4094 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd guest_memfd_offset=4095 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd guest_memfd_offset=0 => ok   # offset 0
close memfd                                             => ok
close vm                                                => ok

################################################################################################
# test_add_overlapping_private_memory_regions
################################################################################################
vm = create_vm type=SW_PROTECTED                        => ok
memfd = create_guest_memfd vm size=8M flags=0           => ok   # MEM_REGION_SIZE * 4
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=4M uaddr=0 guest_memfd=memfd => ok   # 1. gpa G, gmem [0, 4M)
set_user_memory_region2 vm slot=11 flags=GUEST_MEMFD gpa=0x180000000 size=4M uaddr=0 guest_memfd=memfd guest_memfd_offset=4M => ok   # 2. gpa 2G, gmem [4M, 8M)
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=0 uaddr=0 guest_memfd=-1 => ok   # 3. delete slot 10
# 4. and 5. overlap slot 11 in GPA (front half, back half): EEXIST comes before the bind
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0x17fe00000 size=4M uaddr=0 guest_memfd=memfd => EEXIST   # gpa 2G - 2M
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0x180200000 size=4M uaddr=0 guest_memfd=memfd => EEXIST   # gpa 2G + 2M
close memfd                                             => ok
close vm                                                => ok

################################################################################################
# Contrast with set_memory_region_test_v6_14.gms (not part of the selftest): on v6.18 a
# DEFAULT VM binds a guest_memfd too (§2.4 last line, §3.1 step 1: GUEST_MEMFD is always valid)
################################################################################################
vm = create_vm type=DEFAULT                             => ok
check_extension vm GUEST_MEMFD                          => ok 1
memfd = create_guest_memfd vm size=2M flags=0           => ok
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=memfd => ok
close memfd                                             => ok
close vm                                                => ok

warnings                                                => ok 0
check_invariants                                        => ok
