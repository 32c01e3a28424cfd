# profile: v6.18-F7
# Upstream-fixes.md F7 ("KVM: x86: disallow pre-fault for SNP VMs before initialization",
# v6.11) switched off in v6.18: KVM_PRE_FAULT_MEMORY is not refused before SNP_LAUNCH_FINISH.
# The race the fix closes (a pre-fault making a page private while SNP_LAUNCH_UPDATE copies
# into it, so the host writes a private page) needs two threads; what a single thread sees is
# the gate missing: the pre-fault succeeds and prepares the page, so launching it afterwards
# fails. The fixed behaviour is in snp_bug_f7_fixed.gms.

vm = create_vm type=SEV_SNP                                      => ok
sev_init2 vm                                                     => ok
g = create_guest_memfd vm size=2M                                => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g => ok
set_memory_attributes vm address=0 size=2M attributes=PRIVATE    => ok
vcpu = create_vcpu vm                                            => ok
sev = open_dev_sev                                               => ok
snp_launch_start vm                                              => ok

pre_fault_memory vcpu gpa=0 size=4K                              => ok 0   # the missing gate
snp_launch_update vm gfn_start=0 len=4K bytes=6b65726e656c      => EIO
snp_launch_finish vm                                             => ok
pre_fault_memory vcpu gpa=0x1000 size=4K                         => ok 0
warnings                                                         => ok 1   # S8: the pre-fault prepared a page before LAUNCH_FINISH
check_invariants                                                 => ok
