# profile: v6.18+F11
# The calls of snp_bug_f11_guest_vmsa_punched.gms on v6.18 with upstream fix F11 switched on:
# the invalidation also makes a vCPU whose guest VMSA lies in the range let go of it (it
# reloads the VMSA at its next entry), so the frame goes back to the hypervisor. Also the AP
# creation requests KVM refuses (GHCB_ERR_INVALID_INPUT, 0x200000005 in SW_EXITINFO2).

vm = create_vm type=SEV_SNP                                      => ok
sev_init2 vm                                                     => ok
g = create_guest_memfd vm size=2M                                => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g => ok
set_memory_attributes vm address=0 size=2M attributes=PRIVATE    => ok
bsp = create_vcpu vm id=0                                        => ok
ap = create_vcpu vm id=1                                         => ok
sev = open_dev_sev                                               => ok
snp_launch_start vm                                              => ok
snp_launch_update vm gfn_start=0 len=4K bytes=6b65726e656c      => ok gfn_start=1 len=0 uaddr=bytes+0x1000
snp_launch_finish vm                                             => ok

pvalidate bsp gpa=0x3000                                         => ok 0
rmpadjust bsp gpa=0x3000 vmsa=1                                  => ok 0
# Refused: SEV features other than the VM's (SNP_ACTIVE only here), a VMSA that is not
# page-aligned or is 2M-aligned (the SNP erratum), an APIC ID without a vCPU, an unknown request.
ap_create bsp apic_id=1 gpa=0x3000 sev_features=0                => ok status=0x200000005
ap_create bsp apic_id=1 gpa=0x3008                               => ok status=0x200000005
ap_create bsp apic_id=1 gpa=0x200000                             => ok status=0x200000005
ap_create bsp apic_id=7 gpa=0x3000                               => ok status=0x200000005
ap_create bsp apic_id=1 gpa=0x3000 request=9                     => ok status=0x200000005
ap_create bsp apic_id=1 gpa=0x3000                               => ok status=0x0
guest_load ap gpa=0 len=6                                        => ok 6b65726e656c

fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0x3000 len=4K      => ok
warnings                                                         => ok 0   # the fix
check_invariants                                                 => ok
