# profile: v6.18-pvm
# Ports the memslot measurements of kernel-semantics.md §2.7 on this machine's kernel (Linux
# 6.18.44, kvm_pvm; KVM_SET_USER_MEMORY_REGION2 on DEFAULT VMs) and the memslot items of §5:
# flag checks, fd checks, offset and size checks on an 8 MiB gmem, create and modify, overlap and
# rebinding, lifetime, and KVM_SET_MEMORY_ATTRIBUTES (ENOTTY). The calls follow probe p4 in its
# order (slot 10, gpa G = 0xc0000000, SZ = 2M, gmem g of 4 * SZ), then p6 (INIT_SHARED-only
# bind) and p1 (memory attributes). Every memslot is at most 4 MiB: real memslots cost kernel
# memory (§5). Host-side verbs only, DEFAULT VMs only: this file also runs on /dev/kvm.
# Not expressible: the v1 ioctl (GUEST_MEMFD -> EINVAL), the /dev/kvm fd and a memfd as
# guest_memfd (both EINVAL).

vm = create_vm type=DEFAULT                             => ok
vm2 = create_vm type=DEFAULT                            => ok
g = create_guest_memfd vm size=8M flags=0               => ok   # 4 * SZ
g2 = create_guest_memfd vm2 size=2M flags=0             => ok   # another VM's gmem
# The probe's `ua` is an anonymous mapping; no verb makes one under a name, so where the same
# uaddr must be passed twice (slot 12 below) a shared mapping of an mmap-able gmem stands in.
# Elsewhere uaddr=auto (fresh anonymous memory of the slot's size) plays `ua`.
ug = create_guest_memfd vm size=2M flags=MMAP|INIT_SHARED => ok
ua = mmap ug len=2M prot=READ|WRITE flags=SHARED        => ok

################################################################################################
# flag checks (slot 10): BIT(0), BIT(1), BIT(2) are accepted alone (each slot deleted again,
# §3.1 step 6), BIT(3) and up are EINVAL
################################################################################################
set_user_memory_region2 vm slot=10 flags=LOG_DIRTY_PAGES gpa=0xc0000000 size=2M uaddr=auto guest_memfd=g => ok
set_user_memory_region2 vm slot=10 flags=LOG_DIRTY_PAGES gpa=0xc0000000 size=0 uaddr=0 guest_memfd=-1 => ok   # delete
set_user_memory_region2 vm slot=10 flags=READONLY gpa=0xc0000000 size=2M uaddr=auto guest_memfd=g => ok
set_user_memory_region2 vm slot=10 flags=READONLY gpa=0xc0000000 size=0 uaddr=0 guest_memfd=-1 => ok   # delete
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=auto guest_memfd=g => ok
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=0 uaddr=0 guest_memfd=-1 => ok   # delete
set_user_memory_region2 vm slot=10 flags=0x8 gpa=0xc0000000 size=2M uaddr=auto guest_memfd=g => EINVAL   # BIT(3)
set_user_memory_region2 vm slot=10 flags=0x10 gpa=0xc0000000 size=2M uaddr=auto guest_memfd=g => EINVAL   # BIT(4)
set_user_memory_region2 vm slot=10 flags=0x20 gpa=0xc0000000 size=2M uaddr=auto guest_memfd=g => EINVAL   # BIT(5)
set_user_memory_region2 vm slot=10 flags=0x100 gpa=0xc0000000 size=2M uaddr=auto guest_memfd=g => EINVAL   # BIT(8)
set_user_memory_region2 vm slot=10 flags=0x10000 gpa=0xc0000000 size=2M uaddr=auto guest_memfd=g => EINVAL   # BIT(16)
set_user_memory_region2 vm slot=10 flags=0x80000000 gpa=0xc0000000 size=2M uaddr=auto guest_memfd=g => EINVAL   # BIT(31)
# GUEST_MEMFD excludes LOG_DIRTY_PAGES and READONLY
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD|LOG_DIRTY_PAGES gpa=0xc0000000 size=2M uaddr=auto guest_memfd=g => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD|READONLY gpa=0xc0000000 size=2M uaddr=auto guest_memfd=g => EINVAL

################################################################################################
# fd checks (slot 10, GUEST_MEMFD, gpa G, SZ, uaddr 0)
################################################################################################
# not a guest_memfd -> EINVAL: the VM fd; standard input (fd 0, open per the script format)
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=vm => EINVAL   # the VM fd
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=0 => EINVAL   # fd 0
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g2 => EINVAL   # another VM's gmem
# not an open fd -> EBADF
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=9999 => EBADF   # not open
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=-1 => EBADF   # -1 (0xffffffff)
# §5: a closed guest_memfd's number (nothing is opened in between)
gc = create_guest_memfd vm size=2M flags=0              => ok
close gc                                                => ok
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=gc => EBADF

################################################################################################
# offset and size checks (gmem g of 8M)
################################################################################################
# offset 1..4095: p4 tried 1, 2, 4, ..., 2048 and 4095
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=1 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=2 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=4 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=8 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=16 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=32 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=64 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=128 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=256 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=512 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=1024 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=2048 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=4095 => EINVAL
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=8M => EINVAL   # offset == gmem size
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=0x601000 => EINVAL   # 3*SZ + 4K: end past EOF
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=10M uaddr=0 guest_memfd=g => EINVAL   # size 5*SZ: end past EOF
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=-4096 => EINVAL   # offset + size wraps
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g guest_memfd_offset=0x8000000000000000 => EINVAL   # 1<<63
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=4097 uaddr=0 guest_memfd=g => EINVAL   # size unaligned
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000001 size=2M uaddr=0 guest_memfd=g => EINVAL   # gpa unaligned
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=1 guest_memfd=g => EINVAL   # uaddr unaligned
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0xffff800000000000 guest_memfd=g => EINVAL   # kernel-range uaddr: access_ok
# §5: the last user page fails access_ok (§5 does not say whether that slot had GUEST_MEMFD;
# the check comes before any GUEST_MEMFD handling, §3.1 step 3, so a plain slot is used)
set_user_memory_region2 vm slot=10 flags=0 gpa=0xc0000000 size=4K uaddr=0x7ffffffff000 => EINVAL
set_user_memory_region2 vm slot=32764 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g => EINVAL   # slot id >= 32764
set_user_memory_region2 vm slot=0x10000 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g => EINVAL   # as_id 1
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=0 uaddr=0 guest_memfd=-1 => EINVAL   # delete of a missing slot

################################################################################################
# create and modify: a guest_memfd memslot cannot be modified, not even as a no-op
################################################################################################
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=4M uaddr=0 guest_memfd=g => ok   # create, uaddr 0
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=4M uaddr=0 guest_memfd=g => EINVAL   # identical re-issue
set_user_memory_region2 vm slot=10 flags=0 gpa=0xc0000000 size=4M uaddr=0 guest_memfd=-1 => EINVAL   # same with flags 0 (6.18.y fix, F2)
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0x181000000 size=4M uaddr=0 guest_memfd=g => EINVAL   # move (gpa 2G + 8*SZ)
set_user_memory_region2 vm slot=10 flags=LOG_DIRTY_PAGES gpa=0xc0000000 size=4M uaddr=0 guest_memfd=g => EINVAL   # add LOG_DIRTY

################################################################################################
# overlap and rebinding (slot 10 = gpa [G, G+4M), gmem [0, 4M))
################################################################################################
set_user_memory_region2 vm slot=11 flags=GUEST_MEMFD gpa=0x180000000 size=4M uaddr=0 guest_memfd=g guest_memfd_offset=2M => EINVAL   # gpa disjoint, gmem [2M, 6M) overlaps
set_user_memory_region2 vm slot=11 flags=GUEST_MEMFD gpa=0xc0200000 size=4M uaddr=0 guest_memfd=g guest_memfd_offset=4M => EEXIST   # gpa overlaps, gmem disjoint
set_user_memory_region2 vm slot=11 flags=GUEST_MEMFD gpa=0xc0200000 size=4M uaddr=0 guest_memfd=g guest_memfd_offset=2M => EEXIST   # both overlap
set_user_memory_region2 vm slot=11 flags=GUEST_MEMFD gpa=0x180000000 size=4M uaddr=0 guest_memfd=g guest_memfd_offset=4M => ok   # gpa 2G, gmem [4M, 8M): disjoint
set_user_memory_region2 vm slot=12 flags=0 gpa=0xc0000000 size=2M uaddr=auto => EEXIST   # non-gmem slot, gpa overlap
set_user_memory_region2 vm slot=12 flags=0 gpa=0x100000000 size=2M uaddr=ua => ok   # a normal slot
set_user_memory_region2 vm slot=12 flags=GUEST_MEMFD gpa=0x100000000 size=2M uaddr=ua guest_memfd=g => EINVAL   # convert it to a gmem slot
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=0 uaddr=0 guest_memfd=-1 => ok   # delete slot 10
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=0 uaddr=0 guest_memfd=-1 => EINVAL   # delete repeated
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0x17fe00000 size=4M uaddr=0 guest_memfd=g => EEXIST   # gpa 2G - SZ: front of slot 11
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0x180200000 size=4M uaddr=0 guest_memfd=g => EEXIST   # gpa 2G + SZ: back of slot 11
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=4M uaddr=0 guest_memfd=g guest_memfd_offset=6M => EINVAL   # gmem [6M, 10M): overlaps slot 11, ends past EOF
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=4M uaddr=0 guest_memfd=g guest_memfd_offset=0 => ok   # rebinding [0, 4M)

################################################################################################
# lifetime
################################################################################################
# close the gmem while slots 10 and 11 are bound to it, then delete them
close g                                                 => ok
set_user_memory_region2 vm slot=10 flags=0 gpa=0xc0000000 size=0 uaddr=0 guest_memfd=-1 => ok   # delete slot 10 (flags 0)
set_user_memory_region2 vm slot=11 flags=GUEST_MEMFD gpa=0x180000000 size=0 uaddr=0 guest_memfd=-1 => ok   # delete slot 11
# an mmap-able gmem (flags 3) binds with uaddr 0; its range cannot be bound twice
g3 = create_guest_memfd vm size=2M flags=MMAP|INIT_SHARED => ok
set_user_memory_region2 vm slot=13 flags=GUEST_MEMFD gpa=0x200000000 size=2M uaddr=0 guest_memfd=g3 => ok
set_user_memory_region2 vm slot=14 flags=GUEST_MEMFD gpa=0x300000000 size=2M uaddr=0 guest_memfd=g3 => EINVAL   # same gmem range
# p6: a gmem with flags 2 (INIT_SHARED only) binds
g4 = create_guest_memfd vm size=16K flags=INIT_SHARED   => ok
set_user_memory_region2 vm slot=1 flags=GUEST_MEMFD gpa=0x100000 size=16K uaddr=0 guest_memfd=g4 => ok
# close the VM while a slot is bound, then fallocate on its gmem
set_user_memory_region2 vm2 slot=1 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=g2 => ok   # bind g2 into vm2
close vm2                                               => ok
fallocate g2 mode=KEEP_SIZE|PUNCH_HOLE offset=0 len=2M  => ok

################################################################################################
# memory attributes (p1): KVM_SET_MEMORY_ATTRIBUTES is not compiled in
################################################################################################
set_memory_attributes vm address=0 size=4K attributes=PRIVATE => ENOTTY
set_memory_attributes vm address=0 size=4K attributes=0 => ENOTTY

################################################################################################
# the largest guest frame: without TDP (kvm_pvm shadow paging) kvm_mmu_max_gfn() uses a fixed
# 52 bits, so the last 4 KiB below 1 << 52 is a valid slot and 1 << 52 is not
################################################################################################
vmx = create_vm                                           => ok
set_user_memory_region2 vmx slot=0 gpa=0xffffffffff000 size=4K uaddr=0 => ok
set_user_memory_region2 vmx slot=1 gpa=0x10000000000000 size=4K uaddr=0 => EINVAL
set_user_memory_region2 vmx slot=2 gpa=0xfffffffffe000 size=8K uaddr=0 => EEXIST
