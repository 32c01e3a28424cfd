# profile: v6.18
# An SEV-SNP guest converts a page private -> shared -> private through the GHCB page-state
# change protocol, with the VMM's part done by the script between the guest's request and the
# completion (arch-and-mmu.md §1.6, §4): KVM forwards each range as KVM_EXIT_HYPERCALL
# (KVM_HC_MAP_GPA_RANGE, nr 12; args gpa, pages, ENCRYPTED 0x10 | 2M 0x1), the VMM changes the
# memory attributes and punches the private page out of guest_memfd (whose free_folio gives the
# frame back to the hypervisor in the RMP), and the next KVM_RUN completes the request. The
# guest rescinds validation before giving a page away and validates it after getting it back.
# On /dev/kvm here (no SEV) the SNP VM is EINVAL and the host-side lines fail with EBADF, as on
# the simulator under v6.18-pvm; the guest-side lines skip.

vm = create_vm type=SEV_SNP                                      => ok
sev_init2 vm                                                     => ok
g = create_guest_memfd vm size=2M                                => ok
shared = mmap -1 len=2M flags=PRIVATE|ANONYMOUS                  => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M uaddr=shared guest_memfd=g => ok
set_memory_attributes vm address=0 size=1M attributes=PRIVATE    => ok
vcpu = create_vcpu vm                                            => ok
sev = open_dev_sev                                               => ok
snp_launch_start vm                                              => ok
snp_launch_finish vm                                             => ok

# The GHCB is a shared page (1M + 4K). An SNP guest must register it first: a VMGEXIT with an
# unregistered GHCB fails KVM_RUN.
psc vcpu ghcb=0x101000 gpa=0x7000 npages=1 op=SHARED             => EINVAL
ghcb_register vcpu gpa=0x101000                                  => ok msr=0x101013
# Until the VMM asks for KVM_HC_MAP_GPA_RANGE exits, KVM answers page-state changes itself,
# with an error: VMGEXIT_PSC_ERROR_GENERIC for the buffer, the error response for the MSR.
psc vcpu ghcb=0x101000 gpa=0x7000 npages=1 op=SHARED             => ok status=0x10000000000
psc_msr vcpu gpa=0x7000 op=SHARED                                => ok msr=0xffffffff00000015
enable_cap vm EXIT_HYPERCALL arg0=0x1001                         => EINVAL   # only bit 12 is valid
enable_cap vm EXIT_HYPERCALL arg0=0x1000                         => ok

# A private page with the guest's data.
pvalidate vcpu gpa=0x7000                                        => ok 0
guest_store vcpu gpa=0x7000 bytes=70726976617465                 => ok
guest_load vcpu gpa=0x7000 len=7                                 => ok 70726976617465

# Private -> shared. The guest rescinds validation, then asks.
pvalidate vcpu gpa=0x7000 validate=0                             => ok 0
psc vcpu ghcb=0x101000 gpa=0x7000 npages=1 op=SHARED             => exit HYPERCALL nr=12 args=0x7000,0x1,0x0 flags=0x1
# The VMM: the attribute first, then the private page out of guest_memfd.
set_memory_attributes vm address=0x7000 size=4K attributes=0     => ok
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0x7000 len=4K      => ok
complete_hypercall vcpu                                          => ok status=0x0
# Nothing is pending any more.
complete_hypercall vcpu                                          => EINVAL
# The page is shared now: the guest's stores land in the VMM's memory.
guest_store vcpu gpa=0x7000 bytes=736861726564 private=0         => ok
load shared offset=0x7000 len=6                                  => ok 736861726564

# Shared -> private. The VMM sets the attribute (the shared backing may stay); the frame is made
# private again at the guest's next private access, unvalidated, so the guest validates it. The
# private contents did not survive the round trip.
psc vcpu ghcb=0x101000 gpa=0x7000 npages=1 op=PRIVATE            => exit HYPERCALL nr=12 args=0x7000,0x1,0x10 flags=0x1
set_memory_attributes vm address=0x7000 size=4K attributes=PRIVATE => ok
complete_hypercall vcpu                                          => ok status=0x0
guest_load vcpu gpa=0x7000 len=7                                 => guest #VC gpa=0x7000 reason=page-not-validated
pvalidate vcpu gpa=0x7000                                        => ok 0
guest_load vcpu gpa=0x7000 len=7                                 => ok 00000000000000

# Contiguous entries with the same operation are merged into one exit; a VMM that fails the
# conversion (hypercall.ret != 0) gets the guest VMGEXIT_PSC_ERROR_GENERIC.
psc vcpu ghcb=0x101000 gpa=0x8000 npages=3 op=SHARED             => exit HYPERCALL nr=12 args=0x8000,0x3,0x0 flags=0x1
complete_hypercall vcpu ret=1                                    => ok status=0x10000000000
# A 2M entry is forwarded as 512 pages with the 2M flag; a 2M entry whose gfn is not 2M
# aligned is an invalid entry.
psc vcpu ghcb=0x101000 gpa=0x200000 npages=1 op=SHARED size=2M   => exit HYPERCALL nr=12 args=0x200000,0x200,0x1 flags=0x1
complete_hypercall vcpu ret=1                                    => ok status=0x10000000000
psc vcpu ghcb=0x101000 gpa=0x1000 npages=1 op=SHARED size=2M     => ok status=0x100000002
# PSMASH and UNSMASH entries are done without an exit.
psc vcpu ghcb=0x101000 gpa=0xa000 npages=2 op=PSMASH             => ok status=0x0

# The GHCB MSR protocol: one page per request, completed the same way; an operation other than
# private or shared is refused at once.
pvalidate vcpu gpa=0x9000                                        => ok 0
pvalidate vcpu gpa=0x9000 validate=0                             => ok 0
psc_msr vcpu gpa=0x9000 op=SHARED                                => exit HYPERCALL nr=12 args=0x9000,0x1,0x0 flags=0x1
set_memory_attributes vm address=0x9000 size=4K attributes=0     => ok
fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0x9000 len=4K      => ok
complete_hypercall vcpu                                          => ok msr=0x15
psc_msr vcpu gpa=0x9000 op=5                                     => ok msr=0xffffffff00000015
guest_store vcpu gpa=0x9000 bytes=2a private=0                   => ok
load shared offset=0x9000 len=1                                  => ok 2a

close sev                                                        => ok
warnings                                                         => ok 0
check_invariants                                                 => ok
