# profile: v6.18-pvm
# vCPU ioctls on this project's machines (Linux 6.18.44 with kvm_pvm). First KVM_PRE_FAULT_MEMORY:
# a vCPU ioctl that runs no guest code, so it runs on /dev/kvm like the other host ioctls. This host
# pages its guests with the shadow MMU (tdp_enabled off, KVM_CAP_PRE_FAULT_MEMORY 0), so no
# range is ever mapped, but the checks before that still run, in the kernel's order:
#   kvm_vcpu_pre_fault_memory: flags, then gpa/size page-aligned and not wrapping (EINVAL);
#   kvm_arch_vcpu_pre_fault_memory: pre_fault_allowed (a DEFAULT VM has it), then
#   kvm_mmu_reload: a shadow root needs the MMU page budget, which is 0 until the first memslot
#   is created or deleted (make_mmu_pages_available: ENOSPC), then
#   kvm_tdp_map_page: not a TDP MMU (EOPNOTSUPP).
# Measured on /dev/kvm with the kvm backend; the simulator under v6.18-pvm gives the same answers:
#   gmem-sim script examples/vcpu_ioctls_on_this_host_v6_18_pvm.gms --backend kvm --check
#   gmem-sim script examples/vcpu_ioctls_on_this_host_v6_18_pvm.gms --kernel v6.18-pvm --check

vm = create_vm                                                   => ok
# This kernel has no MAXSMP: KVM_MAX_VCPUS 1024, vCPU ids below KVM_MAX_VCPU_IDS (4096).
check_extension 66                                               => ok 1024
check_extension vm 128                                           => ok 4096
big = create_vcpu vm id=4096                                     => EINVAL
last = create_vcpu vm id=4095                                    => ok
c = create_vcpu vm id=0                                          => ok

# The generic checks come first.
pre_fault_memory c gpa=1 size=4K                                 => EINVAL
pre_fault_memory c gpa=0 size=0                                  => EINVAL
pre_fault_memory c gpa=0xfffffffffffff000 size=8K                => EINVAL
# It is a vCPU ioctl: the VM does not know it.
pre_fault_memory vm gpa=0 size=4K                                => ENOTTY

# No memslot was ever created: the shadow MMU has no page budget for a root.
pre_fault_memory c gpa=0 size=4K                                 => ENOSPC
# A failed delete (no such slot) does not size it either.
set_user_memory_region2 vm slot=0 gpa=0 size=0 uaddr=0           => EINVAL
pre_fault_memory c gpa=0 size=4K                                 => ENOSPC

# The first memslot sizes it; the root loads, and the shadow MMU cannot map by GPA.
set_user_memory_region2 vm slot=0 gpa=0 size=2M uaddr=auto       => ok
pre_fault_memory c gpa=0 size=4K                                 => EOPNOTSUPP
pre_fault_memory c gpa=1G size=4K                                => EOPNOTSUPP
# Deleting the slot keeps the budget (at least KVM_MIN_ALLOC_MMU_PAGES).
set_user_memory_region2 vm slot=0 gpa=0 size=0 uaddr=0           => ok
pre_fault_memory c gpa=0 size=4K                                 => EOPNOTSUPP

# A second vCPU of the same VM: the budget is the VM's.
c1 = create_vcpu vm id=1                                         => ok
pre_fault_memory c1 gpa=0 size=4K                                => EOPNOTSUPP

# A vCPU descriptor is a vCPU's file: a VM ioctl on it reaches kvm_vcpu_ioctl, whose x86 default
# is EINVAL (not the ENOTTY of a file without ioctls), and lseek is noop_llseek.
c2 = create_vcpu c1 id=2                                         => EINVAL
check_extension c1 66                                            => EINVAL
set_user_memory_region2 c1 slot=1 gpa=0 size=4K uaddr=auto       => EINVAL
g = create_guest_memfd c1 size=4K                                => EINVAL
lseek c1 offset=5 whence=SET                                     => ok 0
# A vCPU ioctl on a guest_memfd: its file has no ioctls.
g2 = create_guest_memfd vm size=4K                               => ok
pre_fault_memory g2 gpa=0 size=4K                                => ENOTTY
# KVM_MEMORY_ENCRYPT_OP is a vCPU ioctl too (kvm_arch_vcpu_ioctl): without the vendor's vCPU
# hook (no SEV or TDX here) it is ENOTTY, not the EINVAL of a VM ioctl on a vCPU.
sev_init2 c1                                                     => ENOTTY
snp_launch_start c1 sev_fd=0                                     => ENOTTY
