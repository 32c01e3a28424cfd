# profile: v6.18
# host: intel
# TDG.VP.VMCALL<MapGPA>(gpa, size), a TD guest's request to convert a range between private
# and shared, as KVM handles it (tdx_map_gpa, __tdx_map_gpa and tdx_complete_vmcall_map_gpa in
# arch/x86/kvm/vmx/tdx.c of 6.18.44): every TDVMCALL status it answers with and R11, the guest
# finds in R10 and R11 (`ok status=STATUS r11=0xN`), in the kernel's order of checks; a large
# range forwarded to user space in 2 MiB chunks, one KVM_EXIT_HYPERCALL each (nr 12
# KVM_HC_MAP_GPA_RANGE; args gpa without the shared bit, pages, ENCRYPTED 0x10 or DECRYPTED 0);
# RETRY when an interrupt is pending between two chunks (the guest asks again from R11); and
# INVALID_OPERAND when the VMM fails a chunk. The VMM's conversion of each chunk (attributes and
# discards: tdx_conversion_round_trip_v6_18.gms) is left out; KVM does not check it. The TD's
# shared bit is gpa bit 47 (GPAW 48; `shared=1` adds it). On /dev/kvm here (no TDX) the TD is
# EINVAL and the host-side lines fail with EBADF, as under v6.18-pvm; the guest-side and
# simulator-only lines skip.

vm = create_vm type=TDX                                          => ok
tdx_init_vm vm                                                   => ok
g = create_guest_memfd vm size=8M                                => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=8M guest_memfd=g => ok
set_memory_attributes vm address=0 size=8M attributes=PRIVATE    => ok
v = create_vcpu vm                                               => ok
tdx_init_vcpu v                                                  => ok
tdx_init_mem_region v gpa=0 size=4K measure=1 bytes=6b65726e656c => ok source_addr=bytes+0x1000 gpa=0x1000 nr_pages=0
# The vCPU cannot run before FINALIZE: KVM_RUN is EINVAL (tdx_vcpu_pre_run).
tdx_map_gpa v gpa=0x100000 size=4K shared=1                      => EINVAL
tdx_finalize_vm vm                                               => ok

# Without the KVM_HC_MAP_GPA_RANGE exit (KVM_CAP_EXIT_HYPERCALL) no VMM could carry MapGPA out.
tdx_map_gpa v gpa=0x100000 size=4K shared=1                      => ok status=SUBFUNC_UNSUPPORTED r11=0x800000100000
enable_cap vm EXIT_HYPERCALL arg0=0x1000                         => ok

# INVALID_OPERAND, R11 = gpa: the range wraps (an empty range counts as wrapping), is above
# MAXPHYADDR (52 bits), or straddles the shared bit.
tdx_map_gpa v gpa=0x100000 size=0                                => ok status=INVALID_OPERAND r11=0x100000
tdx_map_gpa v gpa=-4096 size=8K                                  => ok status=INVALID_OPERAND r11=0xfffffffffffff000
tdx_map_gpa v gpa=0x10000000000000 size=4K                       => ok status=INVALID_OPERAND r11=0x10000000000000
tdx_map_gpa v gpa=0x7ffffffff000 size=8K                         => ok status=INVALID_OPERAND r11=0x7ffffffff000
# ALIGN_ERROR, R11 = gpa: gpa or size not page aligned, checked after the range.
tdx_map_gpa v gpa=0x100800 size=0                                => ok status=INVALID_OPERAND r11=0x100800
tdx_map_gpa v gpa=0x100800 size=4K                               => ok status=ALIGN_ERROR r11=0x100800
tdx_map_gpa v gpa=0x100000 size=0x800 shared=1                   => ok status=ALIGN_ERROR r11=0x800000100000
check_invariants                                                 => ok

# 5 MiB to shared from 1 MiB: three exits, 2M + 2M + 1M (512, 512 and 256 pages), each completed
# by the next KVM_RUN; after the last, SUCCESS with R11 the leaf (MapGPA, 0x10001).
tdx_map_gpa v gpa=0x100000 size=5M shared=1                      => exit HYPERCALL nr=12 args=0x100000,0x200,0x0 flags=0x1
# While the exit waits for user space the guest cannot make another TDVMCALL (a VMM that skips
# the completion: the simulator's EINVAL).
tdx_map_gpa v gpa=0x100000 size=4K shared=1                      => EINVAL
complete_hypercall v                                             => exit HYPERCALL nr=12 args=0x300000,0x200,0x0 flags=0x1
complete_hypercall v                                             => exit HYPERCALL nr=12 args=0x500000,0x100,0x0 flags=0x1
complete_hypercall v                                             => ok status=SUCCESS r11=0x10001
complete_hypercall v                                             => EINVAL   # nothing is pending
# Back to private: ENCRYPTED.
tdx_map_gpa v gpa=0x100000 size=8K                               => exit HYPERCALL nr=12 args=0x100000,0x2,0x10 flags=0x1
complete_hypercall v                                             => ok status=SUCCESS r11=0x10001

# RETRY: an interrupt for the vCPU arrives while user space handles the first chunk. KVM stops
# after that chunk and answers RETRY with R11 = the next gpa; the guest's next entry takes the
# interrupt, and it asks again from R11 for the rest.
tdx_map_gpa v gpa=0x100000 size=5M shared=1                      => exit HYPERCALL nr=12 args=0x100000,0x200,0x0 flags=0x1
queue_event v                                                    => ok
complete_hypercall v                                             => ok status=RETRY r11=0x800000300000
tdx_map_gpa v gpa=0x800000300000 size=3M                         => exit HYPERCALL nr=12 args=0x300000,0x200,0x0 flags=0x1
complete_hypercall v                                             => exit HYPERCALL nr=12 args=0x500000,0x100,0x0 flags=0x1
# An interrupt during the last chunk changes nothing: the range is done.
queue_event v                                                    => ok
complete_hypercall v                                             => ok status=SUCCESS r11=0x10001

# The VMM fails a chunk (hypercall.ret not 0): INVALID_OPERAND with R11 = that chunk's gpa.
tdx_map_gpa v gpa=0x100000 size=4M                               => exit HYPERCALL nr=12 args=0x100000,0x200,0x10 flags=0x1
complete_hypercall v                                             => exit HYPERCALL nr=12 args=0x300000,0x200,0x10 flags=0x1
complete_hypercall v ret=1                                       => ok status=INVALID_OPERAND r11=0x300000

# A TDCALL outside a TD is #UD, and a VM that is not a TD has no shared bit (`shared=1`: EINVAL).
other = create_vm type=SW_PROTECTED                              => ok
o = create_vcpu other                                            => ok
tdx_map_gpa o gpa=0x100000 size=4K                               => guest #UD gpa=0x0 reason=not-a-td
tdx_accept o gpa=0x100000                                        => guest #UD gpa=0x0 reason=not-a-td
tdx_map_gpa o gpa=0x100000 size=4K shared=1                      => EINVAL
close o                                                          => ok
close other                                                      => ok

tdx_state vm                                                     => ok state=RUNNABLE nr_premapped=0 hkid_assigned=1 leaked=0 bugged=0
check_invariants                                                 => ok
warnings                                                         => ok 0
