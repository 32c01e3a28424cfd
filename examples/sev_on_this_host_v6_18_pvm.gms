# profile: v6.18-pvm
# SEV on this project's machines (Linux 6.18.44, kvm_pvm): the host has no SEV, so there is no
# /dev/sev (ENOENT), no SEV VM type, and KVM_MEMORY_ENCRYPT_OP is ENOTTY on every VM, before
# the command or its parameters are read. Measured on /dev/kvm with the kvm backend; the
# simulator under v6.18-pvm gives the same answers. Also KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL)
# and the anonymous mappings the SNP examples use as launch sources.

# No SEV VM types; the capability exists on every x86 kernel.
check_extension VM_TYPES                                         => ok 1
create_vm type=SEV                                               => EINVAL
create_vm type=SEV_ES                                            => EINVAL
create_vm type=SEV_SNP                                           => EINVAL
check_extension EXIT_HYPERCALL                                   => ok 4096

# No /dev/sev. A failed open takes no descriptor, and the name holds -1.
sev = open_dev_sev                                               => ENOENT
open_dev_sev                                                     => ENOENT
close sev                                                        => EBADF
vm = create_vm                                                   => ok
check_extension vm EXIT_HYPERCALL                                => ok 4096

# Every SEV command on a VM is ENOTTY, whatever the command's parameters.
sev_init2 vm                                                     => ENOTTY
sev_init2 vm flags=1                                             => ENOTTY
sev_init2 vm vmsa_features=0x20 ghcb_version=2                   => ENOTTY
sev_init2 vm ghcb_version=3                                      => ENOTTY
snp_launch_start vm                                              => ENOTTY
snp_launch_start vm policy=0 flags=1                             => ENOTTY
snp_launch_start vm sev_fd=vm                                    => ENOTTY
snp_launch_start vm sev_fd=99                                    => ENOTTY
snp_launch_update vm gfn_start=0 len=4K bytes=00                 => ENOTTY
snp_launch_update vm gfn_start=0 len=0x800 type=VMSA             => ENOTTY
snp_launch_update vm gfn_start=0 len=4K type=ZERO flags=1        => ENOTTY
snp_launch_update vm gfn_start=0 len=4K type=CPUID bytes=01      => ENOTTY
snp_launch_finish vm                                             => ENOTTY
snp_launch_finish vm flags=1                                     => ENOTTY
snp_launch_finish vm host_data=01 id_block=02                    => ENOTTY

# The descriptor is checked first: a file that is not a VM has no such ioctl (ENOTTY), a
# descriptor that is not open is EBADF.
g = create_guest_memfd vm size=4K                                => ok
sev_init2 g                                                      => ENOTTY
snp_launch_start g                                               => ENOTTY
snp_launch_update g gfn_start=0 len=4K bytes=00                  => ENOTTY
snp_launch_finish g                                              => ENOTTY
sev_init2 0                                                      => ENOTTY
snp_launch_finish 2                                              => ENOTTY
sev_init2 99                                                     => EBADF
snp_launch_start 99                                              => EBADF
snp_launch_update 99 gfn_start=0 len=4K bytes=00                 => EBADF
snp_launch_finish 99                                             => EBADF
sev_init2 -1                                                     => EBADF
snp_launch_start sev                                             => EBADF

# KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL): args[0] may only hold KVM_HC_MAP_GPA_RANGE's bit (12),
# flags must be 0.
enable_cap vm EXIT_HYPERCALL arg0=0x1000                         => ok
enable_cap vm EXIT_HYPERCALL                                     => ok
enable_cap vm EXIT_HYPERCALL arg0=0x1001                         => EINVAL
enable_cap vm EXIT_HYPERCALL arg0=1                              => EINVAL
enable_cap vm EXIT_HYPERCALL flags=1 arg0=0x1000                 => EINVAL
enable_cap g EXIT_HYPERCALL arg0=0x1000                          => ENOTTY
enable_cap 99 EXIT_HYPERCALL                                     => EBADF

# Anonymous memory, as the SNP examples map their launch sources.
m = mmap -1 len=8K flags=PRIVATE|ANONYMOUS                       => ok
load m offset=0 len=2                                            => ok 0000
store m offset=0x1000 bytes=2a2b                                 => ok
load m offset=0x1000 len=2                                       => ok 2a2b
snp_launch_update vm gfn_start=0 len=8K uaddr=m                  => ENOTTY
munmap m                                                         => ok
load m offset=0x1000 len=1                                       => SIGSEGV
s = mmap -1 len=4K flags=SHARED|ANONYMOUS                        => ok
store s offset=0 bytes=01                                        => ok
load s offset=0 len=1                                            => ok 01
mmap -1 len=4K flags=SHARED_VALIDATE|ANONYMOUS                   => EINVAL
mmap -1 len=0 flags=PRIVATE|ANONYMOUS                            => EINVAL
close g                                                          => ok
close vm                                                         => ok
sev_init2 vm                                                     => EBADF
