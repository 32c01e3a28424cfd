# profile: v6.18-pvm
# The mm layer around guest_memfd mappings on this machine's kernel (Linux 6.18.44, kvm_pvm),
# measured with docs/probes/p9_mm_layer.c (docs/FIDELITY.md, "The mm layer"): every advice the kernel
# accepts with its errno on a guest_memfd mapping, on private and shared anonymous memory, on
# locked mappings and over holes; guard regions; MAP_LOCKED, MAP_POPULATE, shared anonymous
# memory, MAP_SHARED_VALIDATE's check order and the mmap offset limit per file type; a stale
# name after munmap. A gmem here has 4 pages (16K). Host-side verbs only: runs on /dev/kvm too.

vm = create_vm type=DEFAULT                                 => ok
g = create_guest_memfd vm size=16K flags=MMAP|INIT_SHARED   => ok
m = mmap g len=16K                                          => ok
store m offset=0x1000 bytes=5a                              => ok

################################################################################################
# every advice on a guest_memfd mapping (MMAP|INIT_SHARED, read-write)
################################################################################################
madvise m offset=0x1000 len=4K advice=NORMAL                => ok
madvise m offset=0x1000 len=4K advice=RANDOM                => ok
madvise m offset=0x1000 len=4K advice=SEQUENTIAL            => ok
madvise m offset=0x1000 len=4K advice=WILLNEED              => ok
madvise m offset=0x1000 len=4K advice=DONTNEED              => ok
load m offset=0x1000 len=1                                  => ok 5a   # page-cache backed: kept
madvise m offset=0x1000 len=4K advice=FREE                  => EINVAL  # not anonymous memory
madvise m offset=0x1000 len=4K advice=DONTFORK              => ok
madvise m offset=0x1000 len=4K advice=DOFORK                => ok
madvise m offset=0x1000 len=4K advice=MERGEABLE             => ok      # KSM ignores it
madvise m offset=0x1000 len=4K advice=UNMERGEABLE           => ok
madvise m offset=0x1000 len=4K advice=HUGEPAGE              => ok
madvise m offset=0x1000 len=4K advice=NOHUGEPAGE            => ok
madvise m offset=0x1000 len=4K advice=DONTDUMP              => ok
madvise m offset=0x1000 len=4K advice=DODUMP                => ok
madvise m offset=0x1000 len=4K advice=WIPEONFORK            => EINVAL  # file VMA
madvise m offset=0x1000 len=4K advice=KEEPONFORK            => ok
madvise m offset=0x1000 len=4K advice=COLD                  => ok
madvise m offset=0x1000 len=4K advice=PAGEOUT               => ok
madvise m offset=0x1000 len=4K advice=POPULATE_READ         => ok
madvise m offset=0x1000 len=4K advice=POPULATE_WRITE        => ok
madvise m offset=0x1000 len=4K advice=DONTNEED_LOCKED       => ok
madvise m offset=0x1000 len=4K advice=COLLAPSE              => EINVAL  # no THP for guest_memfd
madvise m offset=0x1000 len=4K advice=HWPOISON              => EINVAL  # no CONFIG_MEMORY_FAILURE
madvise m offset=0x1000 len=4K advice=SOFT_OFFLINE          => EINVAL
madvise m offset=0x1000 len=4K advice=26                    => EINVAL  # not an advice
madvise m offset=0x1000 len=0 advice=26                     => EINVAL  # checked before the length
madvise m offset=0x1000 len=0 advice=COLLAPSE               => ok      # empty range
madvise m offset=1 len=4K advice=DONTNEED                   => EINVAL
load m offset=0x1000 len=1                                  => ok 5a
madvise m offset=0x1000 len=4K advice=REMOVE                => ok      # punches the page
load m offset=0x1000 len=1                                  => ok 00

################################################################################################
# guard regions: SIGSEGV on the guarded page; zaps and punches keep the marker; the data of the
# page cache stays; another mapping of the file is not guarded
################################################################################################
store m offset=0x2000 bytes=22                              => ok
madvise m offset=0x2000 len=4K advice=GUARD_INSTALL         => ok
load m offset=0x2000 len=1                                  => SIGSEGV
store m offset=0x2000 bytes=01                              => SIGSEGV
madvise m offset=0x2000 len=4K advice=DONTNEED              => ok
load m offset=0x2000 len=1                                  => SIGSEGV
madvise m offset=0 len=16K advice=POPULATE_READ             => EFAULT
n = mmap g len=16K prot=READ                                => ok
load n offset=0x2000 len=1                                  => ok 22
munmap n                                                    => ok
madvise m offset=0x2000 len=4K advice=GUARD_REMOVE          => ok
load m offset=0x2000 len=1                                  => ok 22
madvise m offset=0x2000 len=4K advice=GUARD_INSTALL         => ok
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0x2000 len=4K  => ok
load m offset=0x2000 len=1                                  => SIGSEGV
madvise m offset=0x2000 len=4K advice=GUARD_REMOVE          => ok
load m offset=0x2000 len=1                                  => ok 00
# a punch of a page another mapping has present drops the markers at that page in every mapping
# (unmap_mapping_folio's zap has ZAP_FLAG_DROP_MARKER); the punch above, of a page no mapping
# had present, kept it
n = mmap g len=16K flags=SHARED|POPULATE                    => ok
madvise m offset=0x2000 len=4K advice=GUARD_INSTALL         => ok
load m offset=0x2000 len=1                                  => SIGSEGV
madvise n offset=0x2000 len=4K advice=REMOVE                => ok
load m offset=0x2000 len=1                                  => ok 00
munmap n                                                    => ok

################################################################################################
# holes: the first VMA's error wins, else ENOMEM
################################################################################################
munmap m                                                    => ok
m = mmap g len=16K                                          => ok
madvise m offset=0 len=32K advice=DONTNEED                  => ENOMEM   # [gmem][hole]
madvise m offset=0 len=32K advice=FREE                      => EINVAL   # the VMA's error first
madvise m offset=0 len=32K advice=COLLAPSE                  => EINVAL
madvise m offset=0 len=32K advice=WIPEONFORK                => EINVAL
madvise m offset=0 len=32K advice=POPULATE_READ             => ENOMEM
madvise m offset=0 len=32K advice=GUARD_INSTALL             => ENOMEM
madvise m offset=0 len=32K advice=GUARD_REMOVE              => ENOMEM
madvise m offset=0 len=32K advice=26                        => EINVAL
munmap m                                                    => ok
# a stale name: its range is not handed out again while the script runs
madvise m offset=0 len=16K advice=DONTNEED                  => ENOMEM
madvise m offset=0 len=16K advice=COLLAPSE                  => ENOMEM
madvise m offset=0 len=16K advice=POPULATE_WRITE            => ENOMEM
load m offset=0 len=1                                       => SIGSEGV
munmap m                                                    => ok
m2 = mmap g len=16K                                         => ok
load m offset=0 len=1                                       => SIGSEGV
munmap m2                                                   => ok

################################################################################################
# permissions: POPULATE needs VM_READ / VM_WRITE; MMAP without INIT_SHARED faults (EFAULT)
################################################################################################
m = mmap g len=16K prot=READ                                => ok
madvise m offset=0 len=4K advice=POPULATE_WRITE             => EINVAL
madvise m offset=0 len=4K advice=POPULATE_READ              => ok
madvise m offset=0 len=4K advice=REMOVE                     => ok      # shared and maywrite
munmap m                                                    => ok
m = mmap g len=16K prot=WRITE                               => ok
madvise m offset=0 len=4K advice=POPULATE_READ              => EINVAL
madvise m offset=0 len=4K advice=POPULATE_WRITE             => ok
munmap m                                                    => ok
m = mmap g len=16K prot=NONE                                => ok
madvise m offset=0 len=4K advice=POPULATE_READ              => EINVAL
madvise m offset=0 len=4K advice=GUARD_INSTALL              => ok
munmap m                                                    => ok
m = mmap g len=32K                                          => ok
madvise m offset=0x3000 len=8K advice=POPULATE_READ         => EFAULT  # past EOF
munmap m                                                    => ok
g1 = create_guest_memfd vm size=16K flags=MMAP              => ok
m = mmap g1 len=16K                                         => ok
madvise m offset=0 len=4K advice=POPULATE_READ              => EFAULT  # the fault is SIGBUS
madvise m offset=0 len=4K advice=GUARD_INSTALL              => ok
load m offset=0 len=1                                       => SIGSEGV # the guard comes first
load m offset=0x1000 len=1                                  => SIGBUS
munmap m                                                    => ok

################################################################################################
# MAP_LOCKED: the advice that would drop pages is EINVAL, the data stays
################################################################################################
m = mmap g len=16K flags=SHARED|LOCKED                      => ok
store m offset=0x3000 bytes=77                              => ok
madvise m offset=0x3000 len=4K advice=DONTNEED              => EINVAL
madvise m offset=0x3000 len=4K advice=FREE                  => EINVAL
madvise m offset=0x3000 len=4K advice=REMOVE                => EINVAL
madvise m offset=0x3000 len=4K advice=COLD                  => EINVAL
madvise m offset=0x3000 len=4K advice=PAGEOUT               => EINVAL
madvise m offset=0x3000 len=4K advice=GUARD_INSTALL         => EINVAL
madvise m offset=0x3000 len=4K advice=DONTNEED_LOCKED       => ok
madvise m offset=0x3000 len=4K advice=GUARD_REMOVE          => ok
madvise m offset=0x3000 len=4K advice=POPULATE_WRITE        => ok
load m offset=0x3000 len=1                                  => ok 77
munmap m                                                    => ok
m = mmap g1 len=16K flags=SHARED|LOCKED|POPULATE            => ok      # populate's SIGBUS ignored
munmap m                                                    => ok
m = mmap g len=32K flags=SHARED|POPULATE                    => ok      # past EOF ignored
load m offset=0x3000 len=1                                  => ok 77
munmap m                                                    => ok
m = mmap g len=16K flags=PRIVATE|LOCKED                     => EINVAL  # guest_memfd: shared only
m = mmap g len=16K flags=SHARED_VALIDATE|LOCKED|POPULATE    => ok
munmap m                                                    => ok

################################################################################################
# mlock and munlock (docs/probes/p11_mlock.c): VM_LOCKED on the part of the VMA locked; a hole
# is ENOMEM (the VMAs before it stay locked); a population that faults (SIGBUS, past EOF,
# PROT_NONE) is ENOMEM with the VMA locked all the same
################################################################################################
m = mmap g len=16K                                          => ok
mlock m offset=0x1000 len=4K                                => ok
madvise m offset=0x1000 len=4K advice=DONTNEED              => EINVAL
madvise m offset=0x2000 len=4K advice=DONTNEED              => ok      # split: not locked
madvise m offset=0 len=12K advice=DONTNEED                  => EINVAL
munlock m offset=0x1000 len=4K                              => ok
madvise m offset=0x1000 len=4K advice=DONTNEED              => ok
mlock m offset=0x1001 len=4K                                => ok      # widened to pages 1 and 2
madvise m offset=0x2000 len=4K advice=DONTNEED              => EINVAL
munlock m len=16K                                           => ok
mlock m len=0                                               => ok
mlock m len=-1                                              => ok      # the length wraps to 0
munmap m                                                    => ok
m = mmap g len=32K                                          => ok
mlock m len=32K                                             => ENOMEM  # past EOF
madvise m offset=0 len=4K advice=DONTNEED                   => EINVAL  # locked all the same
munmap m                                                    => ok
m = mmap g1 len=16K                                         => ok
mlock m len=16K                                             => ENOMEM  # the fault is SIGBUS
munmap m                                                    => ok
m = mmap g len=16K prot=NONE                                => ok
mlock m len=16K                                             => ENOMEM
madvise m offset=0 len=4K advice=DONTNEED                   => EINVAL
munmap m                                                    => ok
m = mmap g len=16K prot=WRITE                               => ok
mlock m len=16K                                             => ok      # accessible: forced reads
munmap m                                                    => ok
m = mmap g len=16K                                          => ok
munmap m                                                    => ok
mlock m len=16K                                             => ENOMEM  # a stale name: a hole
munlock m len=16K                                           => ENOMEM
m = mmap g len=16K                                          => ok
mlock m len=32K                                             => ENOMEM  # [map][guard gap]
madvise m offset=0 len=4K advice=DONTNEED                   => EINVAL
munlock m len=32K                                           => ENOMEM
madvise m offset=0 len=4K advice=DONTNEED                   => ok
munmap m                                                    => ok
m = mmap g len=16K flags=SHARED|LOCKED                      => ok
munlock m len=16K                                           => ok
madvise m offset=0 len=4K advice=DONTNEED                   => ok
munmap m                                                    => ok

################################################################################################
# MAP_SHARED_VALIDATE: unknown flags (MAP_SYNC) are EOPNOTSUPP before the write, exec and
# f_op->mmap checks; MAP_SHARED drops them; MAP_32BIT is a legacy flag
################################################################################################
m = mmap g len=16K flags=SHARED_VALIDATE|SYNC               => EOPNOTSUPP
m = mmap g len=16K prot=READ|EXEC flags=SHARED_VALIDATE|SYNC => EOPNOTSUPP
m = mmap g len=16K flags=SHARED|SYNC                        => ok
munmap m                                                    => ok
m = mmap g len=16K flags=SHARED_VALIDATE|0x40               => ok      # MAP_32BIT
munmap m                                                    => ok
m = mmap g len=16K flags=SHARED|GROWSDOWN                   => EINVAL
g0 = create_guest_memfd vm size=16K flags=0                 => ok
m = mmap g0 len=16K flags=SHARED_VALIDATE|SYNC              => EOPNOTSUPP # before ENODEV
m = mmap g0 len=16K flags=SHARED_VALIDATE                   => ENODEV

################################################################################################
# the offset limit: MAX_LFS_FILESIZE for regular files (guest_memfd), ULONG_MAX for the VM's
# untyped anonymous inode
################################################################################################
m = mmap g len=16K offset=0x7fffffffffffb000                => ok
munmap m                                                    => ok
m = mmap g len=16K offset=0x7fffffffffffc000                => EOVERFLOW
m = mmap g len=16K offset=0x8000000000000000                => EOVERFLOW
m = mmap vm len=16K offset=0x7ffffffffffff000               => ENODEV
m = mmap vm len=16K offset=-8192                            => EOVERFLOW

################################################################################################
# shared anonymous memory: a shmem object, protections enforced
################################################################################################
a = mmap -1 len=16K flags=SHARED|ANONYMOUS                  => ok
store a offset=0 bytes=07                                   => ok
madvise a offset=0 len=4K advice=DONTNEED                   => ok
load a offset=0 len=1                                       => ok 07   # shmem keeps the data
madvise a offset=0 len=4K advice=FREE                       => EINVAL
madvise a offset=0 len=4K advice=WIPEONFORK                 => EINVAL
madvise a offset=0 len=4K advice=COLLAPSE                   => EINVAL
madvise a offset=0 len=4K advice=REMOVE                     => ok
load a offset=0 len=1                                       => ok 00
load a offset=16K len=1                                     => SIGSEGV
munmap a                                                    => ok
a = mmap -1 len=16K prot=READ flags=SHARED|ANONYMOUS        => ok
load a offset=0 len=1                                       => ok 00
store a offset=0 bytes=01                                   => SIGSEGV
munmap a                                                    => ok
a = mmap -1 len=16K prot=NONE flags=SHARED|ANONYMOUS        => ok
load a offset=0 len=1                                       => SIGSEGV
munmap a                                                    => ok
a = mmap -1 len=16K prot=WRITE flags=SHARED|ANONYMOUS       => ok
load a offset=0 len=1                                       => ok 00   # x86: writable is readable
munmap a                                                    => ok
a = mmap -1 len=16K flags=SHARED|ANONYMOUS|LOCKED           => ok
madvise a offset=0 len=4K advice=DONTNEED                   => EINVAL
munmap a                                                    => ok
a = mmap -1 len=16K flags=SHARED_VALIDATE|ANONYMOUS         => EINVAL
a = mmap -1 len=16K flags=SHARED|ANONYMOUS|GROWSDOWN        => EINVAL
a = mmap -1 len=16K offset=1 flags=SHARED|ANONYMOUS         => EINVAL
a = mmap -1 len=16K offset=-4096 flags=SHARED|ANONYMOUS     => ok      # no file: no offset limit
munmap a                                                    => ok
a = mmap 12345 len=16K flags=SHARED|ANONYMOUS               => ok      # the descriptor is ignored
munmap a                                                    => ok
a = mmap -1 len=0x800000000000 flags=SHARED|ANONYMOUS       => ENOMEM  # past TASK_SIZE

################################################################################################
# uaddr=auto for a slot no mapping can hold (128 TiB, past TASK_SIZE): the runner passes uaddr 0
# and the ioctl gives its own answer
################################################################################################
set_user_memory_region2 vm slot=0 gpa=0 size=0x800000000000 => EINVAL
set_user_memory_region2 vm slot=0 gpa=0 size=-4096          => EINVAL

################################################################################################
# private anonymous memory
################################################################################################
p = mmap -1 len=16K flags=PRIVATE|ANONYMOUS                 => ok
store p offset=0 bytes=07                                   => ok
madvise p offset=0 len=4K advice=FREE                       => ok
madvise p offset=0 len=4K advice=WIPEONFORK                 => ok
madvise p offset=0 len=4K advice=COLLAPSE                   => EINVAL  # THP enabled=madvise
madvise p offset=0 len=4K advice=REMOVE                     => EINVAL  # no file
madvise p offset=0 len=4K advice=DONTNEED                   => ok
load p offset=0 len=1                                       => ok 00   # private: dropped
store p offset=0x1000 bytes=03                              => ok
madvise p offset=0x1000 len=4K advice=GUARD_INSTALL         => ok
load p offset=0x1000 len=1                                  => SIGSEGV
madvise p offset=0x1000 len=4K advice=GUARD_REMOVE          => ok
load p offset=0x1000 len=1                                  => ok 00   # the zap freed it
munmap p                                                    => ok
p = mmap -1 len=16K prot=READ flags=PRIVATE|ANONYMOUS       => ok
store p offset=0 bytes=01                                   => SIGSEGV
munmap p                                                    => ok
p = mmap -1 len=16K flags=PRIVATE|ANONYMOUS|GROWSDOWN       => ok
munmap p                                                    => ok
