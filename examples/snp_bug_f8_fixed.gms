# profile: v6.18+F8
# The calls of snp_bug_f8_unbalanced_kmap.gms on v6.18 with upstream fix F8 switched on: the
# copy failure is still EIO, but the error path unmaps what it mapped, so no WARN.

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
warnings                                                         => ok 0   # the fix
img = mmap -1 len=4K flags=PRIVATE|ANONYMOUS                     => ok
store img offset=0 bytes=6b65726e656c                            => ok
snp_launch_update vm gfn_start=0 len=4K uaddr=img                => ok gfn_start=1 len=0 uaddr=img+0x1000
snp_launch_finish vm                                             => ok
warnings                                                         => ok 0
check_invariants                                                 => ok
