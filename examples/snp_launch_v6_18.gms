# profile: v6.18
# A full SEV-SNP launch as a VMM performs it (QEMU's order: KVM_SEV_INIT2, guest_memfd and its
# memslot, PRIVATE attributes, the vCPU, /dev/sev, SNP_LAUNCH_START, SNP_LAUNCH_UPDATE of the
# image, SNP_LAUNCH_FINISH), with the checks each step makes and the errno it gives
# (arch-and-mmu.md §1.4, arch/x86/kvm/svm/sev.c), then the guest's first accesses: launched
# pages are validated, a page the launch did not touch is a #VC until the guest PVALIDATEs it.
# On /dev/kvm here (no SEV) the SNP VM is EINVAL at create_vm and everything after it fails
# on the invalid descriptor, as on the simulator under v6.18-pvm.

vm = create_vm type=SEV_SNP                                      => ok
snp_launch_digest vm                                             => EINVAL   # no guest context yet

# KVM_SEV_INIT2: flags must be 0, VMSA features those the host supports (DEBUG_SWAP 0x20 here),
# GHCB version at most 2. A second INIT2 is refused: once the VM is an SNP guest only SNP
# commands are allowed (EPERM).
sev_init2 vm flags=1                                             => EINVAL
sev_init2 vm vmsa_features=0x1                                   => EINVAL
sev_init2 vm ghcb_version=3                                      => EINVAL
sev_init2 vm                                                     => ok
sev_init2 vm                                                     => EPERM

# 2M of guest_memfd behind the memslot, the first 1M private; the shared half is backed by an
# anonymous mapping named `shared`.
g = create_guest_memfd vm size=2M                                => ok
shared = mmap -1 len=2M flags=PRIVATE|ANONYMOUS                  => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M uaddr=shared guest_memfd=g => ok
set_memory_attributes vm address=0 size=1M attributes=PRIVATE    => ok
vcpu = create_vcpu vm                                            => ok
sev = open_dev_sev                                               => ok

# Before LAUNCH_START there is no guest context to update.
snp_launch_update vm gfn_start=0 len=4K bytes=00                 => EINVAL

# SNP_LAUNCH_START: flags must be 0; the policy may only hold known bits and must hold the
# must-be-one bit 17 (RSVD_MBO); a descriptor that is not /dev/sev cannot create the context
# (ENOTTY). The default policy is QEMU's, SMT|RSVD_MBO. One context per VM.
snp_launch_start vm flags=1                                      => EINVAL
snp_launch_start vm policy=SMT                                   => EINVAL   # no RSVD_MBO
snp_launch_start vm policy=SMT|RSVD_MBO|0x40000                  => EINVAL   # bit 18 is not valid
snp_launch_start vm sev_fd=g                                     => ENOTTY
snp_launch_start vm                                              => ok
snp_launch_start vm                                              => EINVAL
snp_launch_digest vm                                             => ok 000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000

# Until LAUNCH_FINISH: no pre-fault (upstream fix F7's gate), and the vCPU cannot run (its
# VMSA is not launched: VMRUN fails, KVM_EXIT_FAIL_ENTRY).
pre_fault_memory vcpu gpa=0x10000 size=4K                        => EOPNOTSUPP
guest_load vcpu gpa=0 len=1                                      => exit FAIL_ENTRY hardware_entry_failure_reason=0xffffffffffffffff

# SNP_LAUNCH_UPDATE's own checks: a page-aligned length, flags 0, a type user space may give
# (VMSA, 2, is the firmware's own), a gfn in a guest_memfd memslot.
snp_launch_update vm gfn_start=0 len=0x800 bytes=00              => EINVAL
snp_launch_update vm gfn_start=0 len=4K flags=1 bytes=00         => EINVAL
snp_launch_update vm gfn_start=0 len=4K type=VMSA bytes=00       => EINVAL
snp_launch_update vm gfn_start=0 len=4K type=7 bytes=00          => EINVAL
snp_launch_update vm gfn_start=0x1000 len=4K bytes=00            => EINVAL   # gpa 16M: no memslot
# Every error of the populate itself is EIO: a shared gfn ...
snp_launch_update vm gfn_start=0x100 len=4K bytes=00             => EIO

# The image: two NORMAL pages from bytes staged for the call; the parameters come back advanced.
snp_launch_update vm gfn_start=0 len=8K bytes=6b65726e656c      => ok gfn_start=2 len=0 uaddr=bytes+0x2000
# ... and a page launched already (the populate's EEXIST).
snp_launch_update vm gfn_start=0 len=4K bytes=00                 => EIO
# A ZERO page takes no source; uaddr does not advance.
snp_launch_update vm gfn_start=2 len=4K type=ZERO                => ok gfn_start=3 len=0 uaddr=0x0
# From a mapping of the process, as a VMM loads its firmware image.
img = mmap -1 len=8K flags=PRIVATE|ANONYMOUS                     => ok
store img offset=0 bytes=696e6974726400                          => ok
store img offset=0x1000 bytes=62696f7300                         => ok
snp_launch_update vm gfn_start=4 len=8K uaddr=img                => ok gfn_start=6 len=0 uaddr=img+0x2000
# Partial success: gfn 0xff is private, 0x100 is not; the first page is done and the
# parameters say where to go on. Going on fails on the shared gfn.
snp_launch_update vm gfn_start=0xff len=8K uaddr=img             => ok gfn_start=256 len=4096 uaddr=img+0x1000
snp_launch_update vm gfn_start=0x100 len=4K uaddr=img            => EIO

# A firmware error: EIO with the firmware's status in kvm_sev_cmd.error; the page goes back to
# the hypervisor.
inject snp_fw cmd=LAUNCH_UPDATE ret=INVALID_PARAM                => ok
snp_launch_update vm gfn_start=3 len=4K bytes=00                 => EIO fw_error=INVALID_PARAM
# A CPUID table the firmware rejects (entry 0's reserved field is not 0): the firmware's
# corrected table is copied back to the source.
cpuid = mmap -1 len=4K flags=PRIVATE|ANONYMOUS                   => ok
store cpuid offset=0 bytes=01000000                              => ok   # count = 1
store cpuid offset=56 bytes=ff                                   => ok   # entry 0, reserved
snp_launch_update vm gfn_start=6 len=4K type=CPUID uaddr=cpuid   => EIO fw_error=INVALID_PARAM
load cpuid offset=56 len=1                                       => ok 00
# The secrets page: its contents come from the firmware, not from the source.
snp_launch_update vm gfn_start=7 len=4K type=SECRETS bytes=00    => ok gfn_start=8 len=0 uaddr=bytes+0x1000
# The arch's populate verb on an SNP VM is a LAUNCH_UPDATE too (NORMAL pages from its bytes).
populate vm gpa=0x8000 npages=2 bytes=706f70                     => ok 2

# SNP_LAUNCH_FINISH: flags must be 0; it measures the vCPU's VMSA, then the firmware finishes.
# The digest is the SHA-384 chain over each launched page's PAGE_INFO (arch-and-mmu.md §1.5), in
# launch order: gfns 0, 1, 2 (ZERO), 4, 5, 0xff, 7 (SECRETS), 8, 9; then the VMSA at
# 0xfffffffff000 (zeros in the model). The values were also computed independently from that
# definition.
snp_launch_finish vm flags=1                                     => EINVAL
snp_launch_digest vm                                             => ok 3526b0c3aae4dce12e7867d51211a32f29a0825e1c2b93b2ab2795f341ddbd346c1955dba2bf8fdaa0ccf26e3cd59394
snp_launch_finish vm host_data=01020304                          => ok
snp_launch_digest vm                                             => ok 0e2802c44f445702651b8726f526dca41b4fd3006a364ba4816b093f6d33f03abd77f3315f7aa3a5401ac8174805fa31
# After the launch the firmware takes no more updates.
snp_launch_update vm gfn_start=0x30 len=4K bytes=00              => EIO fw_error=INVALID_GUEST_STATE

# From now on private pages are given to the guest at their first fault, and pre-fault works.
pre_fault_memory vcpu gpa=0x10000 size=4K                        => ok 0
# Launched pages are Guest-Valid: the guest reads what the launch put there.
guest_load vcpu gpa=0 len=6                                      => ok 6b65726e656c
guest_load vcpu gpa=0x4000 len=5                                 => ok 696e697472
guest_load vcpu gpa=0x5000 len=4                                 => ok 62696f73
guest_load vcpu gpa=0x2000 len=2                                 => ok 0000
guest_load vcpu gpa=0x8000 len=3                                 => ok 706f70
# A page the launch did not touch is assigned at its first fault but not validated: #VC.
guest_load vcpu gpa=0x20000 len=4                                => guest #VC gpa=0x20000 reason=page-not-validated
pvalidate vcpu gpa=0x20000                                       => ok 0
pvalidate vcpu gpa=0x20000                                       => ok 255   # already validated: no update
guest_store vcpu gpa=0x20000 bytes=01020304                      => ok
guest_load vcpu gpa=0x20000 len=4                                => ok 01020304
# The pre-faulted page is not validated either.
guest_load vcpu gpa=0x10000 len=1                                => guest #VC gpa=0x10000 reason=page-not-validated
# A 2M PVALIDATE over the launch's 4K RMP entries: size mismatch.
pvalidate vcpu gpa=0 size=2M                                     => ok 6
# A shared access to a private gfn asks user space to convert it.
guest_load vcpu gpa=0 len=4 private=0                            => exit MEMORY_FAULT gpa=0x0 size=0x1000 flags=0

# An ID block must carry the launch digest and the policy (a second VM without vCPUs or pages,
# whose digest is all zeros): the firmware checks both, and a failed check leaves the launch
# open for another try.
vm2 = create_vm type=SEV_SNP                                     => ok
sev_init2 vm2                                                    => ok
snp_launch_start vm2                                             => ok
snp_launch_finish vm2 id_block=11                                => EIO fw_error=BAD_MEASUREMENT
snp_launch_finish vm2 id_block=000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000010000000000 => EIO fw_error=POLICY_FAILURE
snp_launch_finish vm2 id_block=000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000030000000000 => ok

close sev                                                        => ok
warnings                                                         => ok 0
check_invariants                                                 => ok
