/* p11: mlock and munlock on guest_memfd mappings and anonymous memory: the VMA becomes
 * VM_LOCKED (the advice that would drop pages is EINVAL), the population's failures and holes. */
#include "common.h" /* reference/probes/common.h of the shared reference */
int main(void){
	kvmfd=open("/dev/kvm",O_RDWR); int vm=create_vm(0);
	int g3=gmem(vm,16*PS,3), g1=gmem(vm,16*PS,1);
	char *m=mmap(0,16*PS,3,MAP_SHARED,g3,0);
	SHOW("mlock gmem3 page1", mlock(m+PS,PS)); SHOW("dontneed page1", madvise(m+PS,PS,4)); SHOW("dontneed page2", madvise(m+2*PS,PS,4));
	SHOW("dontneed pages0-2", madvise(m,3*PS,4)); SHOW("munlock page1", munlock(m+PS,PS)); SHOW("dontneed page1 after munlock", madvise(m+PS,PS,4));
	SHOW("mlock unaligned start", mlock(m+PS+1,PS)); SHOW("dontneed page2 (locked by unaligned)", madvise(m+2*PS,PS,4)); munlock(m,16*PS);
	SHOW("mlock len 0", mlock(m,0)); SHOW("munlock len 0", munlock(m,0));
	SHOW("mlock len -1", syscall(SYS_mlock,m,(size_t)-1)); SHOW("munlock len -1", syscall(SYS_munlock,m,(size_t)-1));
	munmap(m,16*PS);
	m=mmap(0,32*PS,3,MAP_SHARED,g3,0); SHOW("mlock past EOF", mlock(m,32*PS)); SHOW("dontneed page0 after failed mlock", madvise(m,PS,4)); SHOW("dontneed page20", madvise(m+20*PS,PS,4)); munmap(m,32*PS);
	m=mmap(0,16*PS,3,MAP_SHARED,g1,0); SHOW("mlock gmem1", mlock(m,16*PS)); SHOW("dontneed after", madvise(m,PS,4)); munmap(m,16*PS);
	m=mmap(0,16*PS,0,MAP_SHARED,g3,0); SHOW("mlock PROT_NONE", mlock(m,16*PS)); SHOW("dontneed after", madvise(m,PS,4)); munmap(m,16*PS);
	m=mmap(0,16*PS,PROT_WRITE,MAP_SHARED,g3,0); SHOW("mlock WO", mlock(m,16*PS)); munmap(m,16*PS);
	m=mmap(0,16*PS,3,MAP_SHARED,g3,0); munmap(m+4*PS,4*PS);
	SHOW("mlock [map][hole][map]", mlock(m,16*PS)); SHOW("dontneed page0 after", madvise(m,PS,4)); SHOW("dontneed page8 after", madvise(m+8*PS,PS,4));
	SHOW("munlock [map][hole][map]", munlock(m,16*PS)); SHOW("dontneed page0 after munlock", madvise(m,PS,4));
	SHOW("mlock hole only", mlock(m+4*PS,4*PS)); SHOW("munlock hole only", munlock(m+4*PS,4*PS));
	SHOW("mlock [hole][map]", mlock(m+4*PS,8*PS)); SHOW("dontneed page8 after", madvise(m+8*PS,PS,4));
	munmap(m,16*PS);
	m=mmap(0,16*PS,3,MAP_SHARED|MAP_LOCKED,g3,0); SHOW("munlock MAP_LOCKED", munlock(m,16*PS)); SHOW("dontneed after", madvise(m,PS,4)); munmap(m,16*PS);
	SHOW("mlock unmapped 0x10000", mlock((void*)0x10000,PS)); SHOW("munlock unmapped", munlock((void*)0x10000,PS));
	SHOW("mlock kernel addr", mlock((void*)0xffff800000000000UL,PS));
	SHOW("mlock wrap", syscall(SYS_mlock,(void*)0x7ffffffff000UL,(size_t)0x2000));
	char *s=mmap(0,16*PS,3,MAP_SHARED|MAP_ANONYMOUS,-1,0); SHOW("mlock shmem", mlock(s,16*PS)); SHOW("dontneed", madvise(s,PS,4)); munmap(s,16*PS);
	char *p=mmap(0,16*PS,3,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); SHOW("mlock anon", mlock(p,16*PS)); p[0]=3; SHOW("dontneed", madvise(p,PS,4)); printf("data %d\n",p[0]); munmap(p,16*PS);
	return 0;}
