# profile: v6.18-F6
# Reproduces upstream-fixes.md F6 ("KVM: guest_memfd: delay kvm_gmem_prepare_folio() until the
# memory is passed to the guest", v6.11) by switching the fix off in v6.18: its smallest
# scenario. Without the fix, fallocate() prepares every folio it allocates for the VMs bound to
# it, which for an SNP guest makes the page private in the RMP; SNP_LAUNCH_UPDATE then finds it
# already prepared and fails (EIO, the populate's EEXIST). A page fallocate did not touch
# launches. The fixed behaviour is in snp_bug_f6_fixed.gms.

vm = create_vm type=SEV_SNP                                      => ok
sev_init2 vm                                                     => ok
g = create_guest_memfd vm size=2M                                => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g => ok
set_memory_attributes vm address=0 size=2M attributes=PRIVATE    => ok
vcpu = create_vcpu vm                                            => ok
sev = open_dev_sev                                               => ok
snp_launch_start vm                                              => ok

fallocate g mode=KEEP_SIZE offset=0 len=4K                       => ok
snp_launch_update vm gfn_start=0 len=4K bytes=6b65726e656c      => EIO   # the bug
snp_launch_update vm gfn_start=1 len=4K bytes=6b65726e656c      => ok gfn_start=2 len=0 uaddr=bytes+0x1000
snp_launch_finish vm                                             => ok

# The page fallocate prepared is private but was never launched: the guest gets a #VC on it.
guest_load vcpu gpa=0 len=1                                      => guest #VC gpa=0x0 reason=page-not-validated
guest_load vcpu gpa=0x1000 len=6                                 => ok 6b65726e656c
warnings                                                         => ok 1   # S8: fallocate prepared a page before LAUNCH_FINISH
check_invariants                                                 => ok
