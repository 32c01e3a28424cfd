/* p10: MADV_COLLAPSE on shared and private anonymous memory, PMD-aligned or not, populated
 * or not (docs/FIDELITY.md, "The mm layer"). Build next to reference/probes/common.h. */
#include "common.h" /* reference/probes/common.h of the shared reference */
int main(void){
	char *r=mmap(0,8<<20,PROT_NONE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); char *a=(char*)(((uintptr_t)r+(2<<20)-1)&~((2UL<<20)-1)); munmap(r,8<<20);
	char *s=mmap(a,4<<20,3,MAP_SHARED|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE,-1,0); printf("shm at %p aligned %d\n",s,((uintptr_t)s&((2<<20)-1))==0);
	SHOW("shm aligned COLLAPSE empty 2M", madvise(s,2<<20,25));
	memset(s,1,4<<20); SHOW("shm aligned COLLAPSE full 2M", madvise(s,2<<20,25));
	SHOW("shm aligned COLLAPSE [4K,2M+4K)", madvise(s+4096,2<<20,25));
	SHOW("shm HUGEPAGE", madvise(s,4<<20,14)); SHOW("shm aligned COLLAPSE after HUGEPAGE", madvise(s,2<<20,25));
	munmap(s,4<<20);
	s=mmap(a+4096,4<<20,3,MAP_SHARED|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE,-1,0);
	SHOW("shm unaligned COLLAPSE all", madvise(s,4<<20,25)); SHOW("shm unaligned COLLAPSE 4K", madvise(s,4096,25));
	munmap(s,4<<20);
	char *p=mmap(a,4<<20,3,MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE,-1,0);
	SHOW("anon aligned COLLAPSE 2M no HUGEPAGE", madvise(p,2<<20,25)); SHOW("anon NOHUGEPAGE", madvise(p,4<<20,15)); SHOW("anon HUGEPAGE", madvise(p,4<<20,14));
	SHOW("anon COLLAPSE empty 2M", madvise(p,2<<20,25)); SHOW("anon COLLAPSE 4K", madvise(p,4096,25));
	munmap(p, 4<<20);
	p=mmap(a+4096,4<<20,3,MAP_PRIVATE|MAP_ANONYMOUS|MAP_FIXED_NOREPLACE,-1,0); madvise(p,4<<20,14);
	SHOW("anon unaligned HUGEPAGE COLLAPSE all", madvise(p,4<<20,25));
	SHOW("anon unaligned HUGEPAGE COLLAPSE 4K", madvise(p,4096,25));
	int g=ioctl(open("/dev/kvm",O_RDWR),KVM_CREATE_VM,0);
	return 0;}
