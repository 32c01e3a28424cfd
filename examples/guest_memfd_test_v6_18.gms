# profile: v6.18
# Ports tools/testing/selftests/kvm/guest_memfd_test.c of v6.18 (kernel-semantics.md §2.2):
# test_guest_memfd(type) for the VM types DEFAULT and SW_PROTECTED. For each type: the flags
# loop against the VM's KVM_CAP_GUEST_MEMFD_FLAGS answer, then __test_guest_memfd(vm, F) for
# F = 0, for F = MMAP if the answer has MMAP, and for F = MMAP|INIT_SHARED if it has
# INIT_SHARED. Every sub-test gets a fresh fd of 4 * page (gmem_test()), closed at its end.
# SEV_SNP and TDX VMs are private-memory VMs like SW_PROTECTED: their cap answers 1 (MMAP
# only, §3), so test_guest_memfd() takes the SW_PROTECTED path for them, and they are not
# repeated here (SEV and SEV_ES answer 3 and take the DEFAULT path).
# page = 4096 = 4K, total = 16K. memset() over whole ranges is replaced by stores of a few
# bytes at chosen offsets (the first and last bytes of each page), and the byte-by-byte
# read-back loops by loads at those offsets.
# test_guest_memfd_guest() is not ported: it needs a vCPU (guest verbs come later).

# main(): TEST_REQUIRE(kvm_has_cap(KVM_CAP_GUEST_MEMFD))
check_extension GUEST_MEMFD                             => ok 1
# vm_types = KVM_CAP_VM_TYPES. No expectation: the profile has DEFAULT, SW_PROTECTED, SNP and
# TDX VMs, but the documents do not give the full bit mask this profile reports.
check_extension VM_TYPES

################################################################################################
# test_guest_memfd(DEFAULT)
################################################################################################
vm = create_vm type=DEFAULT                             => ok   # vm_create_barebones_type()
check_extension vm GUEST_MEMFD_FLAGS                    => ok 3   # valid_flags

# [DEFAULT] test_guest_memfd_flags: size = page, each single bit; a bit in valid_flags
# gives an fd (closed at once), any other bit EINVAL
fd = create_guest_memfd vm size=4K flags=0x1            => ok   # BIT(0)
close fd                                                => ok
fd = create_guest_memfd vm size=4K flags=0x2            => ok   # BIT(1)
close fd                                                => ok
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

# ----------------------------------------------------------------------------------------------
# __test_guest_memfd(vm, 0)
# ----------------------------------------------------------------------------------------------
# [DEFAULT, F=0] create_multiple (flags 0)
fd1 = create_guest_memfd vm size=4K flags=0             => ok
fstat fd1                                               => ok size=4096 blksize=4096 blocks=0 mode=0o100600
fd2 = create_guest_memfd vm size=8K flags=0             => ok
fstat fd2                                               => ok size=8192 blksize=4096 blocks=0 mode=0o100600
fstat fd1                                               => ok size=4096 blksize=4096 blocks=0 mode=0o100600   # unchanged by fd2
# st_ino differ: not expressible (no inode number in the fstat record)
close fd2                                               => ok
close fd1                                               => ok

# [DEFAULT, F=0] invalid_sizes: every size 1..page-1 with flags F in the selftest; a representative set
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

# [DEFAULT, F=0] file_read_write
fd = create_guest_memfd vm size=16K flags=0             => ok   # gmem_test(): fresh fd
read fd len=64                                          => EINVAL
write fd len=64                                         => EINVAL
pread fd len=64 offset=0                                => ESPIPE
pwrite fd len=64 offset=0                               => ESPIPE
close fd                                                => ok

# [DEFAULT, F=0] mmap_not_supported: no MMAP flag
fd = create_guest_memfd vm size=16K flags=0             => ok   # gmem_test(): fresh fd
mem = mmap fd len=4K prot=READ|WRITE flags=SHARED       => ENODEV
mem = mmap fd len=16K prot=READ|WRITE flags=SHARED      => ENODEV
close fd                                                => ok

# [DEFAULT, F=0] file_size
fd = create_guest_memfd vm size=16K flags=0             => ok   # gmem_test(): fresh fd
fstat fd                                                => ok size=16384 blksize=4096 blocks=0 mode=0o100600
close fd                                                => ok

# [DEFAULT, F=0] fallocate (T14.8 a-i)
fd = create_guest_memfd vm size=16K flags=0             => ok   # gmem_test(): fresh fd
fallocate fd mode=KEEP_SIZE offset=0 len=16K            => ok   # a
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4095 len=4K => EINVAL   # b
fallocate fd mode=KEEP_SIZE offset=16K len=4K           => EINVAL   # c
fallocate fd mode=KEEP_SIZE offset=20K len=4K           => EINVAL   # d
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=16K len=4K => ok   # e
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=20K len=4K => ok   # f
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4095 => EINVAL   # g
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4K => ok   # h
fallocate fd mode=KEEP_SIZE offset=4K len=4K            => ok   # i
close fd                                                => ok

# [DEFAULT, F=0] invalid_punch_hole (T14.9)
fd = create_guest_memfd vm size=16K flags=0             => ok   # gmem_test(): fresh fd
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

# ----------------------------------------------------------------------------------------------
# __test_guest_memfd(vm, MMAP)
# ----------------------------------------------------------------------------------------------
# [DEFAULT, F=MMAP] create_multiple (flags 0)
fd1 = create_guest_memfd vm size=4K flags=0             => ok
fstat fd1                                               => ok size=4096 blksize=4096 blocks=0 mode=0o100600
fd2 = create_guest_memfd vm size=8K flags=0             => ok
fstat fd2                                               => ok size=8192 blksize=4096 blocks=0 mode=0o100600
fstat fd1                                               => ok size=4096 blksize=4096 blocks=0 mode=0o100600   # unchanged by fd2
# st_ino differ: not expressible (no inode number in the fstat record)
close fd2                                               => ok
close fd1                                               => ok

# [DEFAULT, F=MMAP] invalid_sizes: every size 1..page-1 with flags F in the selftest; a representative set
fd = create_guest_memfd vm size=1 flags=MMAP            => EINVAL
fd = create_guest_memfd vm size=2 flags=MMAP            => EINVAL
fd = create_guest_memfd vm size=3 flags=MMAP            => EINVAL
fd = create_guest_memfd vm size=4 flags=MMAP            => EINVAL
fd = create_guest_memfd vm size=8 flags=MMAP            => EINVAL
fd = create_guest_memfd vm size=511 flags=MMAP          => EINVAL
fd = create_guest_memfd vm size=512 flags=MMAP          => EINVAL
fd = create_guest_memfd vm size=1024 flags=MMAP         => EINVAL
fd = create_guest_memfd vm size=2048 flags=MMAP         => EINVAL
fd = create_guest_memfd vm size=2049 flags=MMAP         => EINVAL
fd = create_guest_memfd vm size=4094 flags=MMAP         => EINVAL
fd = create_guest_memfd vm size=4095 flags=MMAP         => EINVAL

# [DEFAULT, F=MMAP] file_read_write
fd = create_guest_memfd vm size=16K flags=MMAP          => ok   # gmem_test(): fresh fd
read fd len=64                                          => EINVAL
write fd len=64                                         => EINVAL
pread fd len=64 offset=0                                => ESPIPE
pwrite fd len=64 offset=0                               => ESPIPE
close fd                                                => ok

# [DEFAULT, F=MMAP] fault_private: test_fault_sigbus(fd, 0, total); no INIT_SHARED, every user fault is SIGBUS
fd = create_guest_memfd vm size=16K flags=MMAP          => ok   # gmem_test(): fresh fd
mem = mmap fd len=16K prot=READ|WRITE flags=SHARED      => ok
store mem offset=0 bytes=aa                             => SIGBUS   # memset: SIGBUS at the first byte
load mem offset=0 len=1                                 => SIGBUS   # READ_ONCE(mem[0])
munmap mem                                              => ok
close fd                                                => ok

# [DEFAULT, F=MMAP] mmap_cow: MAP_PRIVATE is refused
fd = create_guest_memfd vm size=16K flags=MMAP          => ok   # gmem_test(): fresh fd
mem = mmap fd len=16K prot=READ|WRITE flags=PRIVATE     => EINVAL
close fd                                                => ok

# [DEFAULT, F=MMAP] file_size
fd = create_guest_memfd vm size=16K flags=MMAP          => ok   # gmem_test(): fresh fd
fstat fd                                                => ok size=16384 blksize=4096 blocks=0 mode=0o100600
close fd                                                => ok

# [DEFAULT, F=MMAP] fallocate (T14.8 a-i)
fd = create_guest_memfd vm size=16K flags=MMAP          => ok   # gmem_test(): fresh fd
fallocate fd mode=KEEP_SIZE offset=0 len=16K            => ok   # a
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4095 len=4K => EINVAL   # b
fallocate fd mode=KEEP_SIZE offset=16K len=4K           => EINVAL   # c
fallocate fd mode=KEEP_SIZE offset=20K len=4K           => EINVAL   # d
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=16K len=4K => ok   # e
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=20K len=4K => ok   # f
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4095 => EINVAL   # g
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4K => ok   # h
fallocate fd mode=KEEP_SIZE offset=4K len=4K            => ok   # i
close fd                                                => ok

# [DEFAULT, F=MMAP] invalid_punch_hole (T14.9)
fd = create_guest_memfd vm size=16K flags=MMAP          => ok   # gmem_test(): fresh fd
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

# ----------------------------------------------------------------------------------------------
# __test_guest_memfd(vm, MMAP|INIT_SHARED)
# ----------------------------------------------------------------------------------------------
# [DEFAULT, F=MMAP|INIT_SHARED] create_multiple (flags 0)
fd1 = create_guest_memfd vm size=4K flags=0             => ok
fstat fd1                                               => ok size=4096 blksize=4096 blocks=0 mode=0o100600
fd2 = create_guest_memfd vm size=8K flags=0             => ok
fstat fd2                                               => ok size=8192 blksize=4096 blocks=0 mode=0o100600
fstat fd1                                               => ok size=4096 blksize=4096 blocks=0 mode=0o100600   # unchanged by fd2
# st_ino differ: not expressible (no inode number in the fstat record)
close fd2                                               => ok
close fd1                                               => ok

# [DEFAULT, F=MMAP|INIT_SHARED] invalid_sizes: every size 1..page-1 with flags F in the selftest; a representative set
fd = create_guest_memfd vm size=1 flags=MMAP|INIT_SHARED => EINVAL
fd = create_guest_memfd vm size=2 flags=MMAP|INIT_SHARED => EINVAL
fd = create_guest_memfd vm size=3 flags=MMAP|INIT_SHARED => EINVAL
fd = create_guest_memfd vm size=4 flags=MMAP|INIT_SHARED => EINVAL
fd = create_guest_memfd vm size=8 flags=MMAP|INIT_SHARED => EINVAL
fd = create_guest_memfd vm size=511 flags=MMAP|INIT_SHARED => EINVAL
fd = create_guest_memfd vm size=512 flags=MMAP|INIT_SHARED => EINVAL
fd = create_guest_memfd vm size=1024 flags=MMAP|INIT_SHARED => EINVAL
fd = create_guest_memfd vm size=2048 flags=MMAP|INIT_SHARED => EINVAL
fd = create_guest_memfd vm size=2049 flags=MMAP|INIT_SHARED => EINVAL
fd = create_guest_memfd vm size=4094 flags=MMAP|INIT_SHARED => EINVAL
fd = create_guest_memfd vm size=4095 flags=MMAP|INIT_SHARED => EINVAL

# [DEFAULT, F=MMAP|INIT_SHARED] file_read_write
fd = create_guest_memfd vm size=16K flags=MMAP|INIT_SHARED => ok   # gmem_test(): fresh fd
read fd len=64                                          => EINVAL
write fd len=64                                         => EINVAL
pread fd len=64 offset=0                                => ESPIPE
pwrite fd len=64 offset=0                               => ESPIPE
close fd                                                => ok

# [DEFAULT, F=MMAP|INIT_SHARED] mmap_supported
fd = create_guest_memfd vm size=16K flags=MMAP|INIT_SHARED => ok   # gmem_test(): fresh fd
mem = mmap fd len=16K prot=READ|WRITE flags=SHARED      => ok   # 1.
# 2. memset(mem, 0xaa, total), read back 0xaa everywhere
store mem offset=0x0000 bytes=aaaaaaaa                  => ok
store mem offset=0x0ffc bytes=aaaaaaaa                  => ok
store mem offset=0x1000 bytes=aaaaaaaa                  => ok
store mem offset=0x1ffc bytes=aaaaaaaa                  => ok
store mem offset=0x2000 bytes=aaaaaaaa                  => ok
store mem offset=0x2ffc bytes=aaaaaaaa                  => ok
store mem offset=0x3000 bytes=aaaaaaaa                  => ok
store mem offset=0x3ffc bytes=aaaaaaaa                  => ok
load mem offset=0x0000 len=4                            => ok aaaaaaaa
load mem offset=0x0ffc len=4                            => ok aaaaaaaa
load mem offset=0x1000 len=4                            => ok aaaaaaaa
load mem offset=0x1ffc len=4                            => ok aaaaaaaa
load mem offset=0x2000 len=4                            => ok aaaaaaaa
load mem offset=0x2ffc len=4                            => ok aaaaaaaa
load mem offset=0x3000 len=4                            => ok aaaaaaaa
load mem offset=0x3ffc len=4                            => ok aaaaaaaa
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=0 len=4K  => ok   # 3. punch the first page
# 4. [0, page) reads 0x00, the rest still 0xaa
load mem offset=0x0000 len=4                            => ok 00000000
load mem offset=0x0ffc len=4                            => ok 00000000
load mem offset=0x1000 len=4                            => ok aaaaaaaa
load mem offset=0x1ffc len=4                            => ok aaaaaaaa
load mem offset=0x2000 len=4                            => ok aaaaaaaa
load mem offset=0x2ffc len=4                            => ok aaaaaaaa
load mem offset=0x3000 len=4                            => ok aaaaaaaa
load mem offset=0x3ffc len=4                            => ok aaaaaaaa
# 5. memset(mem, 0xaa, page): the whole range reads 0xaa again
store mem offset=0x0000 bytes=aaaaaaaa                  => ok
store mem offset=0x0ffc bytes=aaaaaaaa                  => ok
load mem offset=0x0000 len=4                            => ok aaaaaaaa
load mem offset=0x0ffc len=4                            => ok aaaaaaaa
load mem offset=0x1000 len=4                            => ok aaaaaaaa
load mem offset=0x1ffc len=4                            => ok aaaaaaaa
load mem offset=0x2000 len=4                            => ok aaaaaaaa
load mem offset=0x2ffc len=4                            => ok aaaaaaaa
load mem offset=0x3000 len=4                            => ok aaaaaaaa
load mem offset=0x3ffc len=4                            => ok aaaaaaaa
munmap mem                                              => ok
close fd                                                => ok

# [DEFAULT, F=MMAP|INIT_SHARED] fault_overflow: test_fault_sigbus(fd, total, 4 * total)
fd = create_guest_memfd vm size=16K flags=MMAP|INIT_SHARED => ok   # gmem_test(): fresh fd
mem = mmap fd len=64K prot=READ|WRITE flags=SHARED      => ok   # 4 * total
# memset(mem, 0xaa, 4 * total) writes [0, total) and raises SIGBUS at offset total
store mem offset=0x0000 bytes=aaaaaaaa                  => ok
store mem offset=0x1000 bytes=aaaaaaaa                  => ok
store mem offset=0x2000 bytes=aaaaaaaa                  => ok
store mem offset=0x3000 bytes=aaaaaaaa                  => ok
store mem offset=0x3ffc bytes=aaaaaaaa                  => ok
store mem offset=0x4000 bytes=aa                        => SIGBUS   # pgoff >= i_size
load mem offset=0x4000 len=1                            => SIGBUS   # READ_ONCE(mem[total])
# [0, total) == 0xaa
load mem offset=0x0000 len=4                            => ok aaaaaaaa
load mem offset=0x1000 len=4                            => ok aaaaaaaa
load mem offset=0x2000 len=4                            => ok aaaaaaaa
load mem offset=0x3000 len=4                            => ok aaaaaaaa
load mem offset=0x3ffc len=4                            => ok aaaaaaaa
munmap mem                                              => ok
close fd                                                => ok

# [DEFAULT, F=MMAP|INIT_SHARED] mmap_cow: MAP_PRIVATE is refused
fd = create_guest_memfd vm size=16K flags=MMAP|INIT_SHARED => ok   # gmem_test(): fresh fd
mem = mmap fd len=16K prot=READ|WRITE flags=PRIVATE     => EINVAL
close fd                                                => ok

# [DEFAULT, F=MMAP|INIT_SHARED] file_size
fd = create_guest_memfd vm size=16K flags=MMAP|INIT_SHARED => ok   # gmem_test(): fresh fd
fstat fd                                                => ok size=16384 blksize=4096 blocks=0 mode=0o100600
close fd                                                => ok

# [DEFAULT, F=MMAP|INIT_SHARED] fallocate (T14.8 a-i)
fd = create_guest_memfd vm size=16K flags=MMAP|INIT_SHARED => ok   # gmem_test(): fresh fd
fallocate fd mode=KEEP_SIZE offset=0 len=16K            => ok   # a
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4095 len=4K => EINVAL   # b
fallocate fd mode=KEEP_SIZE offset=16K len=4K           => EINVAL   # c
fallocate fd mode=KEEP_SIZE offset=20K len=4K           => EINVAL   # d
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=16K len=4K => ok   # e
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=20K len=4K => ok   # f
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4095 => EINVAL   # g
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4K => ok   # h
fallocate fd mode=KEEP_SIZE offset=4K len=4K            => ok   # i
close fd                                                => ok

# [DEFAULT, F=MMAP|INIT_SHARED] invalid_punch_hole (T14.9)
fd = create_guest_memfd vm size=16K flags=MMAP|INIT_SHARED => ok   # gmem_test(): fresh fd
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

close vm                                                => ok   # kvm_vm_free()

################################################################################################
# test_guest_memfd(SW_PROTECTED)
################################################################################################
vm = create_vm type=SW_PROTECTED                        => ok   # vm_create_barebones_type()
check_extension vm GUEST_MEMFD_FLAGS                    => ok 1   # valid_flags: no INIT_SHARED for a private-memory VM

# [SW_PROTECTED] test_guest_memfd_flags: size = page, each single bit; a bit in valid_flags
# gives an fd (closed at once), any other bit EINVAL
fd = create_guest_memfd vm size=4K flags=0x1            => ok   # BIT(0)
close fd                                                => ok
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

# ----------------------------------------------------------------------------------------------
# __test_guest_memfd(vm, 0)
# ----------------------------------------------------------------------------------------------
# [SW_PROTECTED, F=0] create_multiple (flags 0)
fd1 = create_guest_memfd vm size=4K flags=0             => ok
fstat fd1                                               => ok size=4096 blksize=4096 blocks=0 mode=0o100600
fd2 = create_guest_memfd vm size=8K flags=0             => ok
fstat fd2                                               => ok size=8192 blksize=4096 blocks=0 mode=0o100600
fstat fd1                                               => ok size=4096 blksize=4096 blocks=0 mode=0o100600   # unchanged by fd2
# st_ino differ: not expressible (no inode number in the fstat record)
close fd2                                               => ok
close fd1                                               => ok

# [SW_PROTECTED, F=0] invalid_sizes: every size 1..page-1 with flags F in the selftest; a representative set
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

# [SW_PROTECTED, F=0] file_read_write
fd = create_guest_memfd vm size=16K flags=0             => ok   # gmem_test(): fresh fd
read fd len=64                                          => EINVAL
write fd len=64                                         => EINVAL
pread fd len=64 offset=0                                => ESPIPE
pwrite fd len=64 offset=0                               => ESPIPE
close fd                                                => ok

# [SW_PROTECTED, F=0] mmap_not_supported: no MMAP flag
fd = create_guest_memfd vm size=16K flags=0             => ok   # gmem_test(): fresh fd
mem = mmap fd len=4K prot=READ|WRITE flags=SHARED       => ENODEV
mem = mmap fd len=16K prot=READ|WRITE flags=SHARED      => ENODEV
close fd                                                => ok

# [SW_PROTECTED, F=0] file_size
fd = create_guest_memfd vm size=16K flags=0             => ok   # gmem_test(): fresh fd
fstat fd                                                => ok size=16384 blksize=4096 blocks=0 mode=0o100600
close fd                                                => ok

# [SW_PROTECTED, F=0] fallocate (T14.8 a-i)
fd = create_guest_memfd vm size=16K flags=0             => ok   # gmem_test(): fresh fd
fallocate fd mode=KEEP_SIZE offset=0 len=16K            => ok   # a
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4095 len=4K => EINVAL   # b
fallocate fd mode=KEEP_SIZE offset=16K len=4K           => EINVAL   # c
fallocate fd mode=KEEP_SIZE offset=20K len=4K           => EINVAL   # d
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=16K len=4K => ok   # e
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=20K len=4K => ok   # f
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4095 => EINVAL   # g
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4K => ok   # h
fallocate fd mode=KEEP_SIZE offset=4K len=4K            => ok   # i
close fd                                                => ok

# [SW_PROTECTED, F=0] invalid_punch_hole (T14.9)
fd = create_guest_memfd vm size=16K flags=0             => ok   # gmem_test(): fresh fd
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

# ----------------------------------------------------------------------------------------------
# __test_guest_memfd(vm, MMAP)
# ----------------------------------------------------------------------------------------------
# [SW_PROTECTED, F=MMAP] create_multiple (flags 0)
fd1 = create_guest_memfd vm size=4K flags=0             => ok
fstat fd1                                               => ok size=4096 blksize=4096 blocks=0 mode=0o100600
fd2 = create_guest_memfd vm size=8K flags=0             => ok
fstat fd2                                               => ok size=8192 blksize=4096 blocks=0 mode=0o100600
fstat fd1                                               => ok size=4096 blksize=4096 blocks=0 mode=0o100600   # unchanged by fd2
# st_ino differ: not expressible (no inode number in the fstat record)
close fd2                                               => ok
close fd1                                               => ok

# [SW_PROTECTED, F=MMAP] invalid_sizes: every size 1..page-1 with flags F in the selftest; a representative set
fd = create_guest_memfd vm size=1 flags=MMAP            => EINVAL
fd = create_guest_memfd vm size=2 flags=MMAP            => EINVAL
fd = create_guest_memfd vm size=3 flags=MMAP            => EINVAL
fd = create_guest_memfd vm size=4 flags=MMAP            => EINVAL
fd = create_guest_memfd vm size=8 flags=MMAP            => EINVAL
fd = create_guest_memfd vm size=511 flags=MMAP          => EINVAL
fd = create_guest_memfd vm size=512 flags=MMAP          => EINVAL
fd = create_guest_memfd vm size=1024 flags=MMAP         => EINVAL
fd = create_guest_memfd vm size=2048 flags=MMAP         => EINVAL
fd = create_guest_memfd vm size=2049 flags=MMAP         => EINVAL
fd = create_guest_memfd vm size=4094 flags=MMAP         => EINVAL
fd = create_guest_memfd vm size=4095 flags=MMAP         => EINVAL

# [SW_PROTECTED, F=MMAP] file_read_write
fd = create_guest_memfd vm size=16K flags=MMAP          => ok   # gmem_test(): fresh fd
read fd len=64                                          => EINVAL
write fd len=64                                         => EINVAL
pread fd len=64 offset=0                                => ESPIPE
pwrite fd len=64 offset=0                               => ESPIPE
close fd                                                => ok

# [SW_PROTECTED, F=MMAP] fault_private: test_fault_sigbus(fd, 0, total); no INIT_SHARED, every user fault is SIGBUS
fd = create_guest_memfd vm size=16K flags=MMAP          => ok   # gmem_test(): fresh fd
mem = mmap fd len=16K prot=READ|WRITE flags=SHARED      => ok
store mem offset=0 bytes=aa                             => SIGBUS   # memset: SIGBUS at the first byte
load mem offset=0 len=1                                 => SIGBUS   # READ_ONCE(mem[0])
munmap mem                                              => ok
close fd                                                => ok

# [SW_PROTECTED, F=MMAP] mmap_cow: MAP_PRIVATE is refused
fd = create_guest_memfd vm size=16K flags=MMAP          => ok   # gmem_test(): fresh fd
mem = mmap fd len=16K prot=READ|WRITE flags=PRIVATE     => EINVAL
close fd                                                => ok

# [SW_PROTECTED, F=MMAP] file_size
fd = create_guest_memfd vm size=16K flags=MMAP          => ok   # gmem_test(): fresh fd
fstat fd                                                => ok size=16384 blksize=4096 blocks=0 mode=0o100600
close fd                                                => ok

# [SW_PROTECTED, F=MMAP] fallocate (T14.8 a-i)
fd = create_guest_memfd vm size=16K flags=MMAP          => ok   # gmem_test(): fresh fd
fallocate fd mode=KEEP_SIZE offset=0 len=16K            => ok   # a
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4095 len=4K => EINVAL   # b
fallocate fd mode=KEEP_SIZE offset=16K len=4K           => EINVAL   # c
fallocate fd mode=KEEP_SIZE offset=20K len=4K           => EINVAL   # d
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=16K len=4K => ok   # e
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=20K len=4K => ok   # f
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4095 => EINVAL   # g
fallocate fd mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4K => ok   # h
fallocate fd mode=KEEP_SIZE offset=4K len=4K            => ok   # i
close fd                                                => ok

# [SW_PROTECTED, F=MMAP] invalid_punch_hole (T14.9)
fd = create_guest_memfd vm size=16K flags=MMAP          => ok   # gmem_test(): fresh fd
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

close vm                                                => ok   # kvm_vm_free()

# test_guest_memfd_guest(): skipped, it runs a vCPU (create_vcpu and guest_load/guest_store
# are not available yet).

warnings                                                => ok 0
check_invariants                                        => ok
