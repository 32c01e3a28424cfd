# profile: v6.18-pvm
# Ports the mmap measurements of kernel-semantics.md §2.7 on this machine's kernel (Linux
# 6.18.44, kvm_pvm): the mmap table for gmem flags 0 / 1 / 2 / 3 (none / MMAP / INIT_SHARED
# only / MMAP|INIT_SHARED), "flags 1: every access SIGBUS", the flags 3 content rules, and the
# mmap items of §5. The calls follow probes p3 (table, content rules), p6 (fallocated pages)
# and p7 (length 0, unaligned offset), in their order. A gmem here has 4 pages, T = 16K.
# Host-side verbs only, DEFAULT VMs only: this file also runs on /dev/kvm.
# Not expressible (no verb): mprotect, mlock, msync, mbind / get_mempolicy, mmap flag bits
# above bit 31. The madvise advice (HUGEPAGE, COLLAPSE, PAGEOUT, ...) is measured in
# measured_6_18_44_madvise.gms.

vm = create_vm type=DEFAULT                             => ok

################################################################################################
# gmem flags 0 (none)
################################################################################################
g = create_guest_memfd vm size=16K flags=0              => ok
m = mmap g len=16K prot=READ|WRITE flags=PRIVATE        => ENODEV   # MAP_PRIVATE RW
m = mmap g len=16K prot=READ flags=PRIVATE              => ENODEV   # MAP_PRIVATE RO
m = mmap g len=16K prot=READ|EXEC flags=SHARED          => EPERM   # noexec mount, before f_op->mmap
m = mmap g len=16K prot=NONE flags=SHARED               => ENODEV
m = mmap g len=16K prot=READ|WRITE flags=SHARED_VALIDATE => ENODEV
# offset past EOF: 16 pages at offset 8 pages
m = mmap g len=64K offset=32K prot=READ|WRITE flags=SHARED => ENODEV
# a mapping longer than the file: 2 * T
m = mmap g len=32K prot=READ|WRITE flags=SHARED         => ENODEV
close g                                                 => ok

################################################################################################
# gmem flags 1 (MMAP)
################################################################################################
g = create_guest_memfd vm size=16K flags=MMAP           => ok
m = mmap g len=16K prot=READ|WRITE flags=PRIVATE        => EINVAL   # MAP_PRIVATE RW
m = mmap g len=16K prot=READ flags=PRIVATE              => EINVAL   # MAP_PRIVATE RO
m = mmap g len=16K prot=READ|EXEC flags=SHARED          => EPERM   # noexec mount, before f_op->mmap
m = mmap g len=16K prot=NONE flags=SHARED               => ok
munmap m                                                => ok
m = mmap g len=16K prot=READ|WRITE flags=SHARED_VALIDATE => ok
munmap m                                                => ok
# offset past EOF: 16 pages at offset 8 pages
m = mmap g len=64K offset=32K prot=READ|WRITE flags=SHARED => ok
load m offset=0 len=1                                   => SIGBUS   # beyond i_size
munmap m                                                => ok
# a mapping longer than the file: 2 * T
m = mmap g len=32K prot=READ|WRITE flags=SHARED         => ok
# flags 1: every read or write through the mapping is SIGBUS (no INIT_SHARED)
load m offset=0 len=1                                   => SIGBUS   # m[0]
load m offset=0x3fff len=1                              => SIGBUS   # m[T-1]
load m offset=0x4000 len=1                              => SIGBUS   # m[T]
store m offset=0 bytes=aa                               => SIGBUS   # m[0] = 0xaa
# still SIGBUS once the pages are allocated (§3: the fault checks INIT_SHARED first)
fallocate g mode=KEEP_SIZE offset=0 len=16K             => ok
load m offset=0 len=1                                   => SIGBUS
store m offset=0x1000 bytes=aa                          => SIGBUS
munmap m                                                => ok
# §5: madvise(MADV_REMOVE) on an MMAP-only mapping succeeds (it punches)
m = mmap g len=16K prot=READ|WRITE flags=SHARED         => ok
madvise m offset=0 len=4K advice=REMOVE                 => ok
load m offset=0 len=1                                   => SIGBUS   # accesses still SIGBUS
munmap m                                                => ok
close g                                                 => ok

################################################################################################
# gmem flags 2 (INIT_SHARED)
################################################################################################
g = create_guest_memfd vm size=16K flags=INIT_SHARED    => ok
m = mmap g len=16K prot=READ|WRITE flags=PRIVATE        => ENODEV   # MAP_PRIVATE RW
m = mmap g len=16K prot=READ flags=PRIVATE              => ENODEV   # MAP_PRIVATE RO
m = mmap g len=16K prot=READ|EXEC flags=SHARED          => EPERM   # noexec mount, before f_op->mmap
m = mmap g len=16K prot=NONE flags=SHARED               => ENODEV
m = mmap g len=16K prot=READ|WRITE flags=SHARED_VALIDATE => ENODEV
# offset past EOF: 16 pages at offset 8 pages
m = mmap g len=64K offset=32K prot=READ|WRITE flags=SHARED => ENODEV
# a mapping longer than the file: 2 * T
m = mmap g len=32K prot=READ|WRITE flags=SHARED         => ENODEV
close g                                                 => ok

################################################################################################
# gmem flags 3 (MMAP|INIT_SHARED)
################################################################################################
g = create_guest_memfd vm size=16K flags=MMAP|INIT_SHARED => ok
m = mmap g len=16K prot=READ|WRITE flags=PRIVATE        => EINVAL   # MAP_PRIVATE RW
m = mmap g len=16K prot=READ flags=PRIVATE              => EINVAL   # MAP_PRIVATE RO
m = mmap g len=16K prot=READ|EXEC flags=SHARED          => EPERM   # noexec mount, before f_op->mmap
m = mmap g len=16K prot=NONE flags=SHARED               => ok
munmap m                                                => ok
m = mmap g len=16K prot=READ|WRITE flags=SHARED_VALIDATE => ok
munmap m                                                => ok
# offset past EOF: 16 pages at offset 8 pages
m = mmap g len=64K offset=32K prot=READ|WRITE flags=SHARED => ok
load m offset=0 len=1                                   => SIGBUS   # beyond i_size
munmap m                                                => ok
# a mapping longer than the file: 2 * T
m = mmap g len=32K prot=READ|WRITE flags=SHARED         => ok
# flags 3: untouched pages read 0; past EOF is SIGBUS
load m offset=0 len=1                                   => ok 00   # m[0]
load m offset=0x3fff len=1                              => ok 00   # m[T-1]
load m offset=0x4000 len=1                              => SIGBUS   # m[T]
store m offset=0 bytes=aa                               => ok   # m[0] = 0xaa
# memset(m, 0xaa, T): stores at the edges of each page instead
store m offset=0x0000 bytes=aaaaaaaa                    => ok
store m offset=0x0ffc bytes=aaaaaaaa                    => ok
store m offset=0x1000 bytes=aaaaaaaa                    => ok
store m offset=0x1ffc bytes=aaaaaaaa                    => ok
store m offset=0x2000 bytes=aaaaaaaa                    => ok
store m offset=0x2ffc bytes=aaaaaaaa                    => ok
store m offset=0x3000 bytes=aaaaaaaa                    => ok
store m offset=0x3ffc bytes=aaaaaaaa                    => ok
# punch page 0: it reads 0, the other pages keep their data
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0 len=4K   => ok
load m offset=0x0000 len=4                              => ok 00000000
load m offset=0x0ffc len=4                              => ok 00000000
load m offset=0x1000 len=4                              => ok aaaaaaaa
load m offset=0x3ffc len=4                              => ok aaaaaaaa
# MADV_DONTNEED on page 1 keeps the data (page-cache backed)
madvise m offset=0x1000 len=4K advice=DONTNEED          => ok
load m offset=0x1000 len=4                              => ok aaaaaaaa
load m offset=0x1ffc len=4                              => ok aaaaaaaa
# MADV_REMOVE on page 2 punches it: it reads 0
madvise m offset=0x2000 len=4K advice=REMOVE            => ok
load m offset=0x2000 len=4                              => ok 00000000
load m offset=0x2ffc len=4                              => ok 00000000
# a second mapping sees the same data
m2 = mmap g len=16K prot=READ flags=SHARED              => ok
store m offset=0x3000 bytes=5a                          => ok
load m2 offset=0x3000 len=1                             => ok 5a
# the data survives munmap of every mapping and a new mmap
munmap m2                                               => ok
munmap m                                                => ok
m2 = mmap g len=16K prot=READ flags=SHARED              => ok
load m2 offset=0x0000 len=1                             => ok 00   # punched
load m2 offset=0x1000 len=1                             => ok aa   # DONTNEED kept it
load m2 offset=0x2000 len=1                             => ok 00   # REMOVE punched it
load m2 offset=0x3000 len=1                             => ok 5a
munmap m2                                               => ok
close g                                                 => ok

################################################################################################
# flags 3: pages allocated by fallocate but never touched read 0 (p6)
################################################################################################
g = create_guest_memfd vm size=16K flags=MMAP|INIT_SHARED => ok
fallocate g mode=KEEP_SIZE offset=0 len=16K             => ok   # before the mmap
m = mmap g len=16K prot=READ|WRITE flags=SHARED         => ok
load m offset=0 len=1                                   => ok 00
load m offset=0x1005 len=1                              => ok 00   # m[PS+5]
munmap m                                                => ok
close g                                                 => ok

################################################################################################
# §5 and p7: generic mmap checks (flags 3 gmem)
################################################################################################
g = create_guest_memfd vm size=16K flags=MMAP|INIT_SHARED => ok
# §5: offset -4096 is EOVERFLOW, not EINVAL (the length used by the measurement is not given;
# the check does not depend on it for a small length)
m = mmap g len=4K offset=-4096 prot=READ|WRITE flags=SHARED => EOVERFLOW
# §5: prot = 0x8 is accepted
m = mmap g len=16K prot=0x8 flags=SHARED                => ok
munmap m                                                => ok
# p7: length 0 and an unaligned offset are EINVAL
m = mmap g len=0 prot=READ flags=SHARED                 => EINVAL
m = mmap g len=4K offset=1 prot=READ flags=SHARED       => EINVAL
close g                                                 => ok

################################################################################################
# flags 3: data survives closing the gmem fd and the VM fd while a mapping exists (p3 end)
################################################################################################
g = create_guest_memfd vm size=4K flags=MMAP|INIT_SHARED => ok
m = mmap g len=4K prot=READ|WRITE flags=SHARED          => ok
store m offset=0 bytes=07                               => ok
close g                                                 => ok
close vm                                                => ok
load m offset=0 len=1                                   => ok 07
store m offset=1 bytes=09                               => ok
load m offset=0 len=2                                   => ok 0709
munmap m                                                => ok
