# profile: v6.18
# Reproduces upstream-fixes.md F11 ("KVM: SEV: Forcefully invalidate SNP VMSA if its backing
# gmem page is zapped", linux-next 2026), which Linux 6.18 lacks: its smallest scenario. The
# guest hands a vCPU a VMSA in one of its private pages (AP creation); KVM points the vCPU's
# VMCB at that frame. User space then punches the page out of guest_memfd: the invalidation
# zaps the nested page tables but leaves the vCPU on the VMSA, so when the folio is freed the
# RMPUPDATE back to shared fails (the VMSA is in use) and the frame goes back to the host still
# assigned to the guest: one WARN. The fixed behaviour is in snp_bug_f11_fixed.gms.

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

# The BSP validates a page, makes it a VMSA (RMPADJUST) and asks KVM to start the AP on it.
pvalidate bsp gpa=0x3000                                         => ok 0
rmpadjust bsp gpa=0x3000 vmsa=1                                  => ok 0
ap_create bsp apic_id=1 gpa=0x3000                               => ok status=0x0
# The AP's next KVM_RUN installs the guest's VMSA and runs on it.
guest_load ap gpa=0 len=6                                        => ok 6b65726e656c

fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0x3000 len=4K      => ok
warnings                                                         => ok 1   # the bug
