# profile: v6.18
# Reproduces upstream-fixes.md F8 ("KVM: SVM: Fix a missing kunmap_local() in
# sev_gmem_post_populate()", v7.0), which Linux 6.18 lacks: its smallest scenario, an
# SNP_LAUNCH_UPDATE whose source cannot be read. The copy fails (EFAULT, reported as EIO), and
# the error path skips kunmap_local(), leaving the kmap_local stack unbalanced when the ioctl
# returns: one WARN. The fixed behaviour is in snp_bug_f8_fixed.gms.

vm = create_vm type=SEV_SNP                                      => ok
sev_init2 vm                                                     => ok
g = create_guest_memfd vm size=2M                                => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g => ok
set_memory_attributes vm address=0 size=2M attributes=PRIVATE    => ok
sev = open_dev_sev                                               => ok
snp_launch_start vm                                              => ok

src = mmap -1 len=4K flags=PRIVATE|ANONYMOUS                     => ok
munmap src                                                       => ok
snp_launch_update vm gfn_start=0 len=4K uaddr=src                => EIO
warnings                                                         => ok 1   # the bug
# The page is still hypervisor-owned and launches from a readable source.
img = mmap -1 len=4K flags=PRIVATE|ANONYMOUS                     => ok
store img offset=0 bytes=6b65726e656c                            => ok
snp_launch_update vm gfn_start=0 len=4K uaddr=img                => ok gfn_start=1 len=0 uaddr=img+0x1000
snp_launch_finish vm                                             => ok
warnings                                                         => ok 1
check_invariants                                                 => ok
