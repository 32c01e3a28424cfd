# profile: v6.18-pvm
# host: intel
# TDX on this project's machines (Linux 6.18.44 with kvm_pvm on an Intel CPU): the host has no
# TDX, so there is no TDX VM type, and KVM_MEMORY_ENCRYPT_OP is ENOTTY on every VM and on every
# vCPU, before the command or its parameters are read. Measured on /dev/kvm with the kvm backend;
# the simulator under v6.18-pvm gives the same answers:
#   gmem-sim script examples/tdx_on_this_host_v6_18_pvm.gms --backend kvm --check
#   gmem-sim script examples/tdx_on_this_host_v6_18_pvm.gms --backend sim --kernel v6.18-pvm --check

# No TDX VM type (nor SW_PROTECTED); a name bound by the failed create holds -1.
check_extension VM_TYPES                                         => ok 1
create_vm type=SW_PROTECTED                                      => EINVAL
td = create_vm type=TDX                                          => EINVAL
tdx_capabilities td                                              => EBADF
tdx_init_vm td                                                   => EBADF
tdx_init_vcpu td                                                 => EBADF
tdx_finalize_vm td                                               => EBADF

# Every TDX command on a VM is ENOTTY, whatever its parameters.
vm = create_vm                                                   => ok
tdx_capabilities vm                                              => ENOTTY
tdx_capabilities vm nent=0 flags=1                               => ENOTTY
tdx_init_vm vm                                                   => ENOTTY
tdx_init_vm vm attributes=DEBUG gpaw=52 cpuid=7.0:0:0x800 flags=1 => ENOTTY
tdx_init_vm vm xfam=0x20000 gpaw=0                               => ENOTTY
tdx_capabilities vm nent=0x100000000                             => ENOTTY
tdx_finalize_vm vm                                               => ENOTTY
tdx_finalize_vm vm flags=1                                       => ENOTTY
# The vCPU commands sent to the VM.
tdx_init_vcpu vm                                                 => ENOTTY
tdx_init_mem_region vm gpa=0 size=4K                             => ENOTTY

# And on every vCPU (KVM_CREATE_VCPU is real on both backends).
v = create_vcpu vm                                               => ok
create_vcpu vm                                                   => EEXIST
tdx_init_vcpu v                                                  => ENOTTY
tdx_init_vcpu v rcx=0x1000 flags=1                               => ENOTTY
tdx_init_mem_region v gpa=0 size=4K measure=1 bytes=6b65726e656c => ENOTTY
tdx_init_mem_region v gpa=0x800 nr_pages=0 source=0x1001 flags=2 => ENOTTY
tdx_init_mem_region v gpa=0 nr_pages=-1 source=0                 => ENOTTY
v1 = create_vcpu vm id=1                                         => ok
tdx_init_vcpu v1                                                 => ENOTTY
tdx_init_mem_region v1 gpa=0 size=4K                             => ENOTTY
# The VM commands sent to the vCPU.
tdx_capabilities v                                               => ENOTTY
tdx_finalize_vm v                                                => ENOTTY

# Memory set up as for a TD changes nothing (and there are no memory attributes here).
g = create_guest_memfd vm size=2M                                => ok
set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M guest_memfd=g => ok
set_memory_attributes vm address=0 size=1M attributes=PRIVATE    => ENOTTY
img = mmap -1 len=8K flags=PRIVATE|ANONYMOUS                     => ok
store img offset=0 bytes=6b65726e656c                            => ok
tdx_init_mem_region v gpa=0 size=8K measure=1 source=img         => ENOTTY
load img offset=0 len=6                                          => ok 6b65726e656c

# The descriptor is checked first: a file that is neither a VM nor a vCPU has no such ioctl
# (ENOTTY), a descriptor that is not open is EBADF.
tdx_capabilities g                                               => ENOTTY
tdx_init_vcpu g                                                  => ENOTTY
tdx_init_vm 0                                                    => ENOTTY
tdx_init_mem_region 2 gpa=0 size=4K                              => ENOTTY
tdx_capabilities 99                                              => EBADF
tdx_init_vcpu 99                                                 => EBADF
munmap img                                                       => ok
close g                                                          => ok
# A vCPU's file holds its VM: with the VM's descriptor closed the vCPU still answers.
close vm                                                         => ok
tdx_finalize_vm vm                                               => EBADF
tdx_init_vcpu v                                                  => ENOTTY
tdx_init_mem_region v1 gpa=0 size=4K                             => ENOTTY
close v                                                          => ok
tdx_init_vcpu v                                                  => EBADF
tdx_init_mem_region v gpa=0 size=4K                              => EBADF
close v1                                                         => ok
tdx_init_vcpu v1                                                 => EBADF
