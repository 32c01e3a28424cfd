# profile: v6.14
# Ports tools/testing/selftests/kvm/guest_memfd_test.c in its v6.14 form (kernel-semantics.md
# §2.1, T14.1-T14.9): one DEFAULT VM (vm_create_barebones), one guest_memfd `fd` of
# total = 4 * page, the sub-tests in the selftest's order. Where the selftest only asserts
# "fails" (< 0), the errno is the one §2.1 gives in brackets, which §3 gives for v6.14 too
# (same VFS paths). page = 4096 = 4K, total = 16K.

# TEST_REQUIRE(kvm_has_cap(KVM_CAP_GUEST_MEMFD)): asked on /dev/kvm (`!kvm` -> 1, §3)
check_extension GUEST_MEMFD                             => ok 1
vm = create_vm type=DEFAULT                             => ok   # vm_create_barebones()
# Not asserted by the selftest, §3: on v6.14 a DEFAULT VM reports the cap as 0 (it can create
# a guest_memfd, T14.3/T14.4, but not bind one), and cap 244 (GUEST_MEMFD_FLAGS) does not exist.
check_extension vm GUEST_MEMFD                          => ok 0
check_extension vm GUEST_MEMFD_FLAGS                    => ok 0

# T14.1 create_invalid / sizes: the selftest tries every size 1..page-1 with flags 0;
# a representative set here (the first, the last, and some in between)
fd = create_guest_memfd vm size=1 flags=0               => EINVAL
fd = create_guest_memfd vm size=2 flags=0               => EINVAL
fd = create_guest_memfd vm size=3 flags=0               => EINVAL
fd = create_guest_memfd vm size=4 flags=0               => EINVAL
fd = create_guest_memfd vm size=8 flags=0               => EINVAL
fd = create_guest_memfd vm size=511 flags=0             => EINVAL
fd = create_guest_memfd vm size=512 flags=0             => EINVAL
fd = create_guest_memfd vm size=1024 flags=0            => EINVAL
fd = create_guest_memfd vm size=2048 flags=0            => EINVAL
fd = create_guest_memfd vm size=2049 flags=0            => EINVAL
fd = create_guest_memfd vm size=4094 flags=0            => EINVAL
fd = create_guest_memfd vm size=4095 flags=0            => EINVAL

# T14.2 create_invalid / flags: size = page, flags = BIT(0)..BIT(63) one at a time
# (v6.14: valid_flags = 0, so every bit is EINVAL; on v6.18 bits 0 and 1 succeed)
fd = create_guest_memfd vm size=4K flags=0x1            => EINVAL   # BIT(0)
fd = create_guest_memfd vm size=4K flags=0x2            => EINVAL   # BIT(1)
fd = create_guest_memfd vm size=4K flags=0x4            => EINVAL   # BIT(2)
fd = create_guest_memfd vm size=4K flags=0x8            => EINVAL   # BIT(3)
fd = create_guest_memfd vm size=4K flags=0x10           => EINVAL   # BIT(4)
fd = create_guest_memfd vm size=4K flags=0x20           => EINVAL   # BIT(5)
fd = create_guest_memfd vm size=4K flags=0x40           => EINVAL   # BIT(6)
fd = create_guest_memfd vm size=4K flags=0x80           => EINVAL   # BIT(7)
fd = create_guest_memfd vm size=4K flags=0x100          => EINVAL   # BIT(8)
fd = create_guest_memfd vm size=4K flags=0x200          => EINVAL   # BIT(9)
fd = create_guest_memfd vm size=4K flags=0x400          => EINVAL   # BIT(10)
fd = create_guest_memfd vm size=4K flags=0x800          => EINVAL   # BIT(11)
fd = create_guest_memfd vm size=4K flags=0x1000         => EINVAL   # BIT(12)
fd = create_guest_memfd vm size=4K flags=0x2000         => EINVAL   # BIT(13)
fd = create_guest_memfd vm size=4K flags=0x4000         => EINVAL   # BIT(14)
fd = create_guest_memfd vm size=4K flags=0x8000         => EINVAL   # BIT(15)
fd = create_guest_memfd vm size=4K flags=0x10000        => EINVAL   # BIT(16)
fd = create_guest_memfd vm size=4K flags=0x20000        => EINVAL   # BIT(17)
fd = create_guest_memfd vm size=4K flags=0x40000        => EINVAL   # BIT(18)
fd = create_guest_memfd vm size=4K flags=0x80000        => EINVAL   # BIT(19)
fd = create_guest_memfd vm size=4K flags=0x100000       => EINVAL   # BIT(20)
fd = create_guest_memfd vm size=4K flags=0x200000       => EINVAL   # BIT(21)
fd = create_guest_memfd vm size=4K flags=0x400000       => EINVAL   # BIT(22)
fd = create_guest_memfd vm size=4K flags=0x800000       => EINVAL   # BIT(23)
fd = create_guest_memfd vm size=4K flags=0x1000000      => EINVAL   # BIT(24)
fd = create_guest_memfd vm size=4K flags=0x2000000      => EINVAL   # BIT(25)
fd = create_guest_memfd vm size=4K flags=0x4000000      => EINVAL   # BIT(26)
fd = create_guest_memfd vm size=4K flags=0x8000000      => EINVAL   # BIT(27)
fd = create_guest_memfd vm size=4K flags=0x10000000     => EINVAL   # BIT(28)
fd = create_guest_memfd vm size=4K flags=0x20000000     => EINVAL   # BIT(29)
fd = create_guest_memfd vm size=4K flags=0x40000000     => EINVAL   # BIT(30)
fd = create_guest_memfd vm size=4K flags=0x80000000     => EINVAL   # BIT(31)
fd = create_guest_memfd vm size=4K flags=0x100000000    => EINVAL   # BIT(32)
fd = create_guest_memfd vm size=4K flags=0x200000000    => EINVAL   # BIT(33)
fd = create_guest_memfd vm size=4K flags=0x400000000    => EINVAL   # BIT(34)
fd = create_guest_memfd vm size=4K flags=0x800000000    => EINVAL   # BIT(35)
fd = create_guest_memfd vm size=4K flags=0x1000000000   => EINVAL   # BIT(36)
fd = create_guest_memfd vm size=4K flags=0x2000000000   => EINVAL   # BIT(37)
fd = create_guest_memfd vm size=4K flags=0x4000000000   => EINVAL   # BIT(38)
fd = create_guest_memfd vm size=4K flags=0x8000000000   => EINVAL   # BIT(39)
fd = create_guest_memfd vm size=4K flags=0x10000000000  => EINVAL   # BIT(40)
fd = create_guest_memfd vm size=4K flags=0x20000000000  => EINVAL   # BIT(41)
fd = create_guest_memfd vm size=4K flags=0x40000000000  => EINVAL   # BIT(42)
fd = create_guest_memfd vm size=4K flags=0x80000000000  => EINVAL   # BIT(43)
fd = create_guest_memfd vm size=4K flags=0x100000000000 => EINVAL   # BIT(44)
fd = create_guest_memfd vm size=4K flags=0x200000000000 => EINVAL   # BIT(45)
fd = create_guest_memfd vm size=4K flags=0x400000000000 => EINVAL   # BIT(46)
fd = create_guest_memfd vm size=4K flags=0x800000000000 => EINVAL   # BIT(47)
fd = create_guest_memfd vm size=4K flags=0x1000000000000 => EINVAL   # BIT(48)
fd = create_guest_memfd vm size=4K flags=0x2000000000000 => EINVAL   # BIT(49)
fd = create_guest_memfd vm size=4K flags=0x4000000000000 => EINVAL   # BIT(50)
fd = create_guest_memfd vm size=4K flags=0x8000000000000 => EINVAL   # BIT(51)
fd = create_guest_memfd vm size=4K flags=0x10000000000000 => EINVAL   # BIT(52)
fd = create_guest_memfd vm size=4K flags=0x20000000000000 => EINVAL   # BIT(53)
fd = create_guest_memfd vm size=4K flags=0x40000000000000 => EINVAL   # BIT(54)
fd = create_guest_memfd vm size=4K flags=0x80000000000000 => EINVAL   # BIT(55)
fd = create_guest_memfd vm size=4K flags=0x100000000000000 => EINVAL   # BIT(56)
fd = create_guest_memfd vm size=4K flags=0x200000000000000 => EINVAL   # BIT(57)
fd = create_guest_memfd vm size=4K flags=0x400000000000000 => EINVAL   # BIT(58)
fd = create_guest_memfd vm size=4K flags=0x800000000000000 => EINVAL   # BIT(59)
fd = create_guest_memfd vm size=4K flags=0x1000000000000000 => EINVAL   # BIT(60)
fd = create_guest_memfd vm size=4K flags=0x2000000000000000 => EINVAL   # BIT(61)
fd = create_guest_memfd vm size=4K flags=0x4000000000000000 => EINVAL   # BIT(62)
fd = create_guest_memfd vm size=4K flags=0x8000000000000000 => EINVAL   # BIT(63)

# T14.3 create_multiple
fd1 = create_guest_memfd vm size=4096 flags=0           => ok
fstat fd1                                               => ok size=4096 blksize=4096 blocks=0 mode=0o100600
fd2 = create_guest_memfd vm size=8192 flags=0           => ok
fstat fd2                                               => ok size=8192 blksize=4096 blocks=0 mode=0o100600
fstat fd1                                               => ok size=4096 blksize=4096 blocks=0 mode=0o100600   # still the size it was created with
# st1.st_ino != st2.st_ino: the fstat record has no inode number, not expressible
close fd2                                               => ok
close fd1                                               => ok

# T14.4 the fd the remaining sub-tests share
fd = create_guest_memfd vm size=16K flags=0             => ok

# T14.5 file_read_write (buf of 64 bytes)
read fd len=64                                          => EINVAL
write fd len=64                                         => EINVAL
pread fd len=64 offset=0                                => ESPIPE
pwrite fd len=64 offset=0                               => ESPIPE

# T14.6 mmap: v6.14 guest_memfd has no .mmap
mem = mmap fd len=4K prot=READ|WRITE flags=SHARED       => ENODEV

# T14.7 file_size
fstat fd                                                => ok size=16384 blksize=4096 blocks=0 mode=0o100600

# T14.8 fallocate (same fd, in order)
fallocate fd mode=KEEP_SIZE offset=0 len=16K            => ok   # a. whole file
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4095 len=4K => EINVAL   # b. unaligned offset
fallocate fd mode=KEEP_SIZE offset=16K len=4K           => EINVAL   # c. allocation at total
fallocate fd mode=KEEP_SIZE offset=20K len=4K           => EINVAL   # d. allocation past total
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=16K len=4K => ok   # e. punch at total
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=20K len=4K => ok   # f. punch past total
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4095 => EINVAL   # g. unaligned length
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4K => ok   # h. aligned punch
fallocate fd mode=KEEP_SIZE offset=4K len=4K            => ok   # i. re-fill the hole

# T14.9 invalid_punch_hole: KEEP_SIZE|PUNCH_HOLE with unaligned (offset, len)
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=0 len=1   => EINVAL
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=0 len=4095 => EINVAL
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=0 len=4097 => EINVAL
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=1 len=1   => EINVAL
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=1 len=4095 => EINVAL
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=1 len=4096 => EINVAL
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=1 len=4097 => EINVAL
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=1  => EINVAL
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4095 => EINVAL
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4097 => EINVAL

close fd                                                => ok

warnings                                                => ok 0
check_invariants                                        => ok
