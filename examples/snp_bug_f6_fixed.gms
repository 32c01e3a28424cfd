# profile: v6.18
# The calls of snp_bug_f6_fallocate_before_launch_update.gms (upstream-fixes.md F6, smallest
# scenario) on v6.18, which has the fix: fallocate() only allocates, preparation waits for the
# guest's first use, so SNP_LAUNCH_UPDATE of the fallocated page succeeds and the guest reads
# the launched data.

vm = create_vm type=SEV_SNP                                      => ok
sev_init2 vm                                                     => ok
g = create_guest_memfd vm size=2M                                => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g => ok
set_memory_attributes vm address=0 size=2M attributes=PRIVATE    => ok
vcpu = create_vcpu vm                                            => ok
sev = open_dev_sev                                               => ok
snp_launch_start vm                                              => ok

fallocate g mode=KEEP_SIZE offset=0 len=4K                       => ok
snp_launch_update vm gfn_start=0 len=4K bytes=6b65726e656c      => ok gfn_start=1 len=0 uaddr=bytes+0x1000   # the fix
snp_launch_update vm gfn_start=1 len=4K bytes=6b65726e656c      => ok gfn_start=2 len=0 uaddr=bytes+0x1000
snp_launch_finish vm                                             => ok

guest_load vcpu gpa=0 len=6                                      => ok 6b65726e656c
guest_load vcpu gpa=0x1000 len=6                                 => ok 6b65726e656c
warnings                                                         => ok 0
check_invariants                                                 => ok
