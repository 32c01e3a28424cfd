# profile: v6.18-pvm
# Ports what kernel-semantics.md measured on this machine's kernel (Linux 6.18.44, kvm_pvm):
# the capability values of §1, KVM_CREATE_VM types, and from §2.7 guest_memfd creation, the fd,
# fstat, the other file operations and the fallocate table, plus the closed-descriptor cases of
# §5. The calls follow probes p1 (caps, VM types, creation, fstat) and p2 (file operations,
# fallocate), in their order. Host-side verbs only, DEFAULT VMs only: this file also runs on
# /dev/kvm. Measurements that no verb can express are listed in comments where they belong.

################################################################################################
# §1 capabilities (p1), on /dev/kvm and on a DEFAULT VM
################################################################################################
check_extension USER_MEMORY2                            => ok 1
check_extension MEMORY_FAULT_INFO                       => ok 1
check_extension MEMORY_ATTRIBUTES                       => ok 0   # not compiled in
check_extension GUEST_MEMFD                             => ok 1
check_extension VM_TYPES                                => ok 1   # BIT(DEFAULT) only
check_extension PRE_FAULT_MEMORY                        => ok 0   # no TDP
check_extension GUEST_MEMFD_FLAGS                       => ok 3
check_extension 10                                      => ok 32764   # KVM_CAP_NR_MEMSLOTS
vm = create_vm type=DEFAULT                             => ok
check_extension vm USER_MEMORY2                         => ok 1
check_extension vm MEMORY_FAULT_INFO                    => ok 1
check_extension vm MEMORY_ATTRIBUTES                    => ok 0   # not compiled in
check_extension vm GUEST_MEMFD                          => ok 1
check_extension vm VM_TYPES                             => ok 1   # BIT(DEFAULT) only
check_extension vm PRE_FAULT_MEMORY                     => ok 0   # no TDP
check_extension vm GUEST_MEMFD_FLAGS                    => ok 3
check_extension vm 10                                   => ok 32764   # KVM_CAP_NR_MEMSLOTS

# §1 KVM_CREATE_VM: type 0 only; types 1..7 -> EINVAL
bad = create_vm type=SW_PROTECTED                       => EINVAL
bad = create_vm type=SEV                                => EINVAL
bad = create_vm type=SEV_ES                             => EINVAL
bad = create_vm type=SEV_SNP                            => EINVAL
bad = create_vm type=TDX                                => EINVAL
bad = create_vm type=6                                  => EINVAL
bad = create_vm type=7                                  => EINVAL

################################################################################################
# §2.7 creation (p1), on the DEFAULT VM
################################################################################################
# sizes: 0 and unaligned ones, and sizes that are negative as loff_t, are EINVAL; any positive
# aligned size works (allocation is lazy)
g = create_guest_memfd vm size=0 flags=0                => EINVAL
g = create_guest_memfd vm size=1 flags=0                => EINVAL
g = create_guest_memfd vm size=4095 flags=0             => EINVAL
g = create_guest_memfd vm size=4097 flags=0             => EINVAL
g = create_guest_memfd vm size=4096 flags=0             => ok
close g                                                 => ok
g = create_guest_memfd vm size=-4096 flags=0            => EINVAL   # negative as loff_t
g = create_guest_memfd vm size=0x8000000000000000 flags=0 => EINVAL   # 1<<63, negative as loff_t
g = create_guest_memfd vm size=0x4000000000000000 flags=0 => ok   # 1<<62
close g                                                 => ok
g = create_guest_memfd vm size=0x7ffffffffffff000 flags=0 => ok   # (1<<63) - 4096
close g                                                 => ok
g = create_guest_memfd vm size=1T flags=0               => ok   # 1<<40
close g                                                 => ok
# flags, one bit at a time (size = page): bits 0 (MMAP) and 1 (INIT_SHARED) succeed, bits
# 2..63 are EINVAL
g = create_guest_memfd vm size=4K flags=0x1             => ok   # BIT(0)
close g                                                 => ok
g = create_guest_memfd vm size=4K flags=0x2             => ok   # BIT(1)
close g                                                 => ok
g = create_guest_memfd vm size=4K flags=0x4             => EINVAL   # BIT(2)
g = create_guest_memfd vm size=4K flags=0x8             => EINVAL   # BIT(3)
g = create_guest_memfd vm size=4K flags=0x10            => EINVAL   # BIT(4)
g = create_guest_memfd vm size=4K flags=0x20            => EINVAL   # BIT(5)
g = create_guest_memfd vm size=4K flags=0x40            => EINVAL   # BIT(6)
g = create_guest_memfd vm size=4K flags=0x80            => EINVAL   # BIT(7)
g = create_guest_memfd vm size=4K flags=0x100           => EINVAL   # BIT(8)
g = create_guest_memfd vm size=4K flags=0x200           => EINVAL   # BIT(9)
g = create_guest_memfd vm size=4K flags=0x400           => EINVAL   # BIT(10)
g = create_guest_memfd vm size=4K flags=0x800           => EINVAL   # BIT(11)
g = create_guest_memfd vm size=4K flags=0x1000          => EINVAL   # BIT(12)
g = create_guest_memfd vm size=4K flags=0x2000          => EINVAL   # BIT(13)
g = create_guest_memfd vm size=4K flags=0x4000          => EINVAL   # BIT(14)
g = create_guest_memfd vm size=4K flags=0x8000          => EINVAL   # BIT(15)
g = create_guest_memfd vm size=4K flags=0x10000         => EINVAL   # BIT(16)
g = create_guest_memfd vm size=4K flags=0x20000         => EINVAL   # BIT(17)
g = create_guest_memfd vm size=4K flags=0x40000         => EINVAL   # BIT(18)
g = create_guest_memfd vm size=4K flags=0x80000         => EINVAL   # BIT(19)
g = create_guest_memfd vm size=4K flags=0x100000        => EINVAL   # BIT(20)
g = create_guest_memfd vm size=4K flags=0x200000        => EINVAL   # BIT(21)
g = create_guest_memfd vm size=4K flags=0x400000        => EINVAL   # BIT(22)
g = create_guest_memfd vm size=4K flags=0x800000        => EINVAL   # BIT(23)
g = create_guest_memfd vm size=4K flags=0x1000000       => EINVAL   # BIT(24)
g = create_guest_memfd vm size=4K flags=0x2000000       => EINVAL   # BIT(25)
g = create_guest_memfd vm size=4K flags=0x4000000       => EINVAL   # BIT(26)
g = create_guest_memfd vm size=4K flags=0x8000000       => EINVAL   # BIT(27)
g = create_guest_memfd vm size=4K flags=0x10000000      => EINVAL   # BIT(28)
g = create_guest_memfd vm size=4K flags=0x20000000      => EINVAL   # BIT(29)
g = create_guest_memfd vm size=4K flags=0x40000000      => EINVAL   # BIT(30)
g = create_guest_memfd vm size=4K flags=0x80000000      => EINVAL   # BIT(31)
g = create_guest_memfd vm size=4K flags=0x100000000     => EINVAL   # BIT(32)
g = create_guest_memfd vm size=4K flags=0x200000000     => EINVAL   # BIT(33)
g = create_guest_memfd vm size=4K flags=0x400000000     => EINVAL   # BIT(34)
g = create_guest_memfd vm size=4K flags=0x800000000     => EINVAL   # BIT(35)
g = create_guest_memfd vm size=4K flags=0x1000000000    => EINVAL   # BIT(36)
g = create_guest_memfd vm size=4K flags=0x2000000000    => EINVAL   # BIT(37)
g = create_guest_memfd vm size=4K flags=0x4000000000    => EINVAL   # BIT(38)
g = create_guest_memfd vm size=4K flags=0x8000000000    => EINVAL   # BIT(39)
g = create_guest_memfd vm size=4K flags=0x10000000000   => EINVAL   # BIT(40)
g = create_guest_memfd vm size=4K flags=0x20000000000   => EINVAL   # BIT(41)
g = create_guest_memfd vm size=4K flags=0x40000000000   => EINVAL   # BIT(42)
g = create_guest_memfd vm size=4K flags=0x80000000000   => EINVAL   # BIT(43)
g = create_guest_memfd vm size=4K flags=0x100000000000  => EINVAL   # BIT(44)
g = create_guest_memfd vm size=4K flags=0x200000000000  => EINVAL   # BIT(45)
g = create_guest_memfd vm size=4K flags=0x400000000000  => EINVAL   # BIT(46)
g = create_guest_memfd vm size=4K flags=0x800000000000  => EINVAL   # BIT(47)
g = create_guest_memfd vm size=4K flags=0x1000000000000 => EINVAL   # BIT(48)
g = create_guest_memfd vm size=4K flags=0x2000000000000 => EINVAL   # BIT(49)
g = create_guest_memfd vm size=4K flags=0x4000000000000 => EINVAL   # BIT(50)
g = create_guest_memfd vm size=4K flags=0x8000000000000 => EINVAL   # BIT(51)
g = create_guest_memfd vm size=4K flags=0x10000000000000 => EINVAL   # BIT(52)
g = create_guest_memfd vm size=4K flags=0x20000000000000 => EINVAL   # BIT(53)
g = create_guest_memfd vm size=4K flags=0x40000000000000 => EINVAL   # BIT(54)
g = create_guest_memfd vm size=4K flags=0x80000000000000 => EINVAL   # BIT(55)
g = create_guest_memfd vm size=4K flags=0x100000000000000 => EINVAL   # BIT(56)
g = create_guest_memfd vm size=4K flags=0x200000000000000 => EINVAL   # BIT(57)
g = create_guest_memfd vm size=4K flags=0x400000000000000 => EINVAL   # BIT(58)
g = create_guest_memfd vm size=4K flags=0x800000000000000 => EINVAL   # BIT(59)
g = create_guest_memfd vm size=4K flags=0x1000000000000000 => EINVAL   # BIT(60)
g = create_guest_memfd vm size=4K flags=0x2000000000000000 => EINVAL   # BIT(61)
g = create_guest_memfd vm size=4K flags=0x4000000000000000 => EINVAL   # BIT(62)
g = create_guest_memfd vm size=4K flags=0x8000000000000000 => EINVAL   # BIT(63)
g = create_guest_memfd vm size=4K flags=MMAP|INIT_SHARED => ok
close g                                                 => ok
g = create_guest_memfd vm size=4K flags=INIT_SHARED     => ok   # INIT_SHARED without MMAP
close g                                                 => ok
# Not expressible: non-zero `reserved` (ok), the ioctl on the /dev/kvm fd (EINVAL), a bad
# pointer (EFAULT).

################################################################################################
# §2.7 the fd and fstat (p1)
################################################################################################
# Not expressible: F_GETFL 0x8002 / no FD_CLOEXEC, readlink anon_inode:[kvm-gmem], reopen via
# /proc/self/fd (ENXIO), dup (same st_ino), st_nlink/uid/gid/ino/dev, statfs f_type, timestamps.
g = create_guest_memfd vm size=16K flags=0              => ok
fstat g                                                 => ok size=16384 blksize=4096 blocks=0 mode=0o100600
g3 = create_guest_memfd vm size=16K flags=MMAP|INIT_SHARED => ok
fstat g3                                                => ok size=16384 blksize=4096 blocks=0 mode=0o100600   # same mode whatever the flags

################################################################################################
# §2.7 other file operations (p2), on a 4-page gmem with flags 0, then with flags 3
################################################################################################
# g: flags 0
read g len=64                                           => EINVAL
read g len=0                                            => EINVAL   # even a read of length 0
write g len=64                                          => EINVAL
pread g len=64 offset=0                                 => ESPIPE
pwrite g len=64 offset=0                                => ESPIPE
lseek g offset=0 whence=SET                             => ESPIPE
lseek g offset=0 whence=CUR                             => ESPIPE   # "any whence" (p2 measured SET, END, DATA)
lseek g offset=0 whence=END                             => ESPIPE
ftruncate g size=32K                                    => EINVAL   # grow
ftruncate g size=16K                                    => EINVAL   # the same size
ftruncate g size=0                                      => EINVAL   # shrink
fstat g                                                 => ok size=16384 blksize=4096 blocks=0 mode=0o100600   # st_size never changes
# g3: flags MMAP|INIT_SHARED
read g3 len=64                                          => EINVAL
read g3 len=0                                           => EINVAL   # even a read of length 0
write g3 len=64                                         => EINVAL
pread g3 len=64 offset=0                                => ESPIPE
pwrite g3 len=64 offset=0                               => ESPIPE
lseek g3 offset=0 whence=SET                            => ESPIPE
lseek g3 offset=0 whence=CUR                            => ESPIPE   # "any whence" (p2 measured SET, END, DATA)
lseek g3 offset=0 whence=END                            => ESPIPE
ftruncate g3 size=32K                                   => EINVAL   # grow
ftruncate g3 size=16K                                   => EINVAL   # the same size
ftruncate g3 size=0                                     => EINVAL   # shrink
# the VM file (kvm_vm_fops): noop_llseek, no read/write (found by gmem-sim diff)
lseek vm offset=4096 whence=SET                         => ok 0     # the position never moves
lseek vm offset=0 whence=END                            => ok 0
lseek vm offset=0 whence=5                              => EINVAL   # whence > SEEK_MAX (SEEK_HOLE)
read vm len=8                                           => EINVAL
pread vm len=8 offset=0                                 => ESPIPE
ftruncate vm size=0                                     => EINVAL
fstat g3                                                => ok size=16384 blksize=4096 blocks=0 mode=0o100600   # st_size never changes
# Not expressible: readv/preadv, fsync/fdatasync, unknown ioctl, fchmod/fchown/futimens,
# xattrs, sendfile/splice/copy_file_range, fcntl, poll, flock, posix_fadvise, syncfs.
close g3                                                => ok
close g                                                 => ok

################################################################################################
# §2.7 fallocate (p2), gmem of 4 pages (T = 16K), checked in VFS order then gmem order
################################################################################################
g = create_guest_memfd vm size=16K flags=0              => ok
fallocate g mode=0 offset=0 len=16K                     => EOPNOTSUPP   # allocate without KEEP_SIZE (gmem)
fallocate g mode=PUNCH_HOLE offset=0 len=4K             => EOPNOTSUPP   # PUNCH without KEEP (VFS)
fallocate g mode=KEEP_SIZE offset=0 len=16K             => ok
fallocate g mode=KEEP_SIZE|ZERO_RANGE offset=0 len=4K   => EOPNOTSUPP
fallocate g mode=ZERO_RANGE offset=0 len=4K             => EOPNOTSUPP
fallocate g mode=COLLAPSE_RANGE offset=0 len=4K         => EOPNOTSUPP
fallocate g mode=INSERT_RANGE offset=0 len=4K           => EOPNOTSUPP
fallocate g mode=KEEP_SIZE|UNSHARE_RANGE offset=0 len=4K => EOPNOTSUPP
fallocate g mode=WRITE_ZEROES offset=0 len=4K           => EOPNOTSUPP
fallocate g mode=KEEP_SIZE|0x100 offset=0 len=4K        => EOPNOTSUPP   # unknown bit
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=4095 len=4K => EINVAL   # unaligned offset
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4095 => EINVAL   # unaligned length
fallocate g mode=KEEP_SIZE offset=16K len=4K            => EINVAL   # allocate at T
fallocate g mode=KEEP_SIZE offset=20K len=4K            => EINVAL   # allocate past T
fallocate g mode=KEEP_SIZE offset=0 len=20K             => EINVAL   # allocate ending past T
fallocate g mode=KEEP_SIZE offset=1 len=1               => EINVAL   # unaligned, in range
fallocate g mode=KEEP_SIZE offset=16385 len=1           => EINVAL   # unaligned, beyond
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=16K len=4K => ok   # punch at T
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=20K len=4K => ok   # punch past T
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0 len=1T   => ok   # huge punch
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0 len=0    => EINVAL   # len 0 (VFS)
fallocate g mode=KEEP_SIZE offset=0 len=0               => EINVAL   # len 0 (VFS)
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=-4096 len=4K => EINVAL   # offset < 0 (VFS)
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0 len=-4096 => EINVAL   # len < 0 (VFS)
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0 len=0x7ffffffffffff000 => ok   # LLONG_MAX & ~4095
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=0x7ffffffffffff000 => EFBIG   # offset + len > LLONG_MAX (VFS)
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0x4000000000000000 len=0x4000000000000000 => EFBIG   # sum 1<<63
fallocate g mode=KEEP_SIZE offset=0 len=0x7ffffffffffff000 => EINVAL   # allocate ending past i_size
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=4K len=4K  => ok   # aligned punch
fallocate g mode=KEEP_SIZE offset=4K len=4K             => ok   # re-fill
fstat g                                                 => ok size=16384 blksize=4096 blocks=0 mode=0o100600   # st_blocks stays 0 after allocation
close g                                                 => ok
# allocation near the end of a 1 TiB gmem
h = create_guest_memfd vm size=1T flags=0               => ok
fallocate h mode=KEEP_SIZE offset=0xfffffff000 len=4K   => ok   # 1T - 4K
close h                                                 => ok
# Not expressible: reopening through /proc/self/fd (ENXIO).

################################################################################################
# §5 a closed guest_memfd's descriptor number gives EBADF everywhere
################################################################################################
# (nothing is opened between the close and the uses, so the number stays free)
gc = create_guest_memfd vm size=2M flags=0              => ok
close gc                                                => ok
fstat gc                                                => EBADF
close gc                                                => EBADF
set_user_memory_region2 vm slot=10 flags=GUEST_MEMFD gpa=0xc0000000 size=2M uaddr=0 guest_memfd=gc => EBADF   # fget() fails in kvm_gmem_bind
fallocate gc mode=KEEP_SIZE offset=0 len=4K             => EBADF

################################################################################################
# §2.5 end / §4 item 7 (p2): the gmem keeps the VM alive; fallocate after the VM fd is closed
################################################################################################
g = create_guest_memfd vm size=16K flags=0              => ok
close vm                                                => ok
fallocate g mode=KEEP_SIZE offset=0 len=16K             => ok
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0 len=16K  => ok
close g                                                 => ok
