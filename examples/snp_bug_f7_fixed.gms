# profile: v6.18
# The calls of snp_bug_f7_prefault_before_finish.gms on v6.18, which has upstream fix F7:
# KVM_PRE_FAULT_MEMORY is EOPNOTSUPP until SNP_LAUNCH_FINISH allows it, so the page launches.

vm = create_vm type=SEV_SNP                                      => ok
sev_init2 vm                                                     => ok
g = create_guest_memfd vm size=2M                                => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g => ok
set_memory_attributes vm address=0 size=2M attributes=PRIVATE    => ok
vcpu = create_vcpu vm                                            => ok
sev = open_dev_sev                                               => ok
snp_launch_start vm                                              => ok

pre_fault_memory vcpu gpa=0 size=4K                              => EOPNOTSUPP   # the fix
snp_launch_update vm gfn_start=0 len=4K bytes=6b65726e656c      => ok gfn_start=1 len=0 uaddr=bytes+0x1000
snp_launch_finish vm                                             => ok
pre_fault_memory vcpu gpa=0x1000 size=4K                         => ok 0
guest_load vcpu gpa=0 len=6                                      => ok 6b65726e656c
warnings                                                         => ok 0
check_invariants                                                 => ok
