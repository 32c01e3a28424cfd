/* p9: the mm layer around guest_memfd mappings on this kernel: every madvise advice on a
 * guest_memfd mapping (MMAP|INIT_SHARED and MMAP only), on private and shared anonymous memory,
 * on locked mappings and over holes; MAP_LOCKED, MAP_POPULATE, MAP_SHARED|MAP_ANONYMOUS,
 * MAP_SHARED_VALIDATE's check order, the mmap offset limit per file type; guard regions. */
#include "common.h" /* reference/probes/common.h of the shared reference */
#include <sys/wait.h>
#include <sys/resource.h>
static sigjmp_buf jb; static volatile int sig;
static void h(int s){ sig=s; siglongjmp(jb,1);}
static const char *ld(volatile char *p){ sig=0; if(!sigsetjmp(jb,1)){ volatile char c=*p; (void)c; return "ok";} return sig==SIGBUS?"SIGBUS":"SIGSEGV";}
static const char *st(volatile char *p, char v){ sig=0; if(!sigsetjmp(jb,1)){ *p=v; return "ok";} return sig==SIGBUS?"SIGBUS":"SIGSEGV";}
static int ldv(volatile char*p){ if(!sigsetjmp(jb,1)) return (unsigned char)*p; return -1;}
struct adv { int a; const char *n; } advs[] = {
 {0,"NORMAL"},{1,"RANDOM"},{2,"SEQUENTIAL"},{3,"WILLNEED"},{4,"DONTNEED"},{8,"FREE"},{9,"REMOVE"},
 {10,"DONTFORK"},{11,"DOFORK"},{12,"MERGEABLE"},{13,"UNMERGEABLE"},{14,"HUGEPAGE"},{15,"NOHUGEPAGE"},
 {16,"DONTDUMP"},{17,"DODUMP"},{18,"WIPEONFORK"},{19,"KEEPONFORK"},{20,"COLD"},{21,"PAGEOUT"},
 {22,"POPULATE_READ"},{23,"POPULATE_WRITE"},{24,"DONTNEED_LOCKED"},{25,"COLLAPSE"},{26,"26"},
 {100,"HWPOISON"},{101,"SOFT_OFFLINE"},{102,"GUARD_INSTALL"},{103,"GUARD_REMOVE"},{104,"104"},{5,"5"},{7,"7"}};
#define NADV (sizeof advs/sizeof advs[0])
static char *fresh(int vm, uint64_t gflags, int prot, int mflags, size_t len, int *g) {
	*g = gmem(vm, 16*PS, gflags);
	char *m = mmap(NULL, len, prot, mflags, *g, 0);
	return m;
}
int main(void){
	struct sigaction sa={.sa_handler=h}; sigaction(SIGBUS,&sa,0); sigaction(SIGSEGV,&sa,0);
	kvmfd=open("/dev/kvm",O_RDWR); int vm=create_vm(0); char l[128]; int g;
	struct rlimit rl; getrlimit(RLIMIT_MEMLOCK,&rl); printf("RLIMIT_MEMLOCK cur=%lu max=%lu euid=%d\n",(unsigned long)rl.rlim_cur,(unsigned long)rl.rlim_max,geteuid());
	const char *kinds[] = {"gmem3 RW","gmem1 RW","gmem3 RO","gmem3 NONE","anonpriv RW","anonshared RW","gmem3 LOCKED","anonpriv LOCKED","anonshared LOCKED","gmem3 WO","anonpriv NONE"};
	for (int k=0;k<11;k++) for (unsigned i=0;i<NADV;i++) {
		char *m; size_t len=4*PS; g=-1;
		switch(k){
		case 0: m=fresh(vm,3,PROT_READ|PROT_WRITE,MAP_SHARED,len,&g); break;
		case 1: m=fresh(vm,1,PROT_READ|PROT_WRITE,MAP_SHARED,len,&g); break;
		case 2: m=fresh(vm,3,PROT_READ,MAP_SHARED,len,&g); break;
		case 3: m=fresh(vm,3,PROT_NONE,MAP_SHARED,len,&g); break;
		case 4: m=mmap(0,len,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); break;
		case 5: m=mmap(0,len,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_ANONYMOUS,-1,0); break;
		case 6: m=fresh(vm,3,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_LOCKED,len,&g); break;
		case 7: m=mmap(0,len,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_LOCKED,-1,0); break;
		case 8: m=mmap(0,len,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_ANONYMOUS|MAP_LOCKED,-1,0); break;
		case 9: m=fresh(vm,3,PROT_WRITE,MAP_SHARED,len,&g); break;
		default: m=mmap(0,len,PROT_NONE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); break;
		}
		if (m==MAP_FAILED){ printf("%s: mmap failed %s\n",kinds[k],en(errno)); continue;}
		if (k!=3 && k!=1 && k!=10 && k!=2) { st(m+PS,0x5a); }
		if (advs[i].a==100||advs[i].a==101) { snprintf(l,sizeof l,"%s %s",kinds[k],advs[i].n); SHOW(l, madvise(m+PS,PS,advs[i].a)); }
		else { snprintf(l,sizeof l,"%s %s",kinds[k],advs[i].n); SHOW(l, madvise(m+PS,PS,advs[i].a)); }
		int v=ldv(m+PS); const char *a=ld(m+PS); printf("    after: load page1 %s val=%d\n", a, v);
		munmap(m,len); if(g>=0) close(g);
	}
	/* holes: advice over [map][hole] and [hole][map] and fully unmapped */
	for (unsigned i=0;i<NADV;i++){
		if (advs[i].a==100||advs[i].a==101) continue;
		char *m=fresh(vm,3,PROT_READ|PROT_WRITE,MAP_SHARED,4*PS,&g); munmap(m+2*PS,2*PS);
		snprintf(l,sizeof l,"[gmem][hole] %s",advs[i].n); SHOW(l, madvise(m,4*PS,advs[i].a));
		snprintf(l,sizeof l,"[hole] %s",advs[i].n); SHOW(l, madvise(m+2*PS,2*PS,advs[i].a));
		munmap(m,2*PS);
		m=fresh(vm,3,PROT_READ|PROT_WRITE,MAP_SHARED,4*PS,&g); munmap(m,2*PS);
		snprintf(l,sizeof l,"[hole][gmem] %s",advs[i].n); SHOW(l, madvise(m,4*PS,advs[i].a));
		munmap(m+2*PS,2*PS); close(g);
	}
	/* len 0, unaligned */
	{ char *m=fresh(vm,3,PROT_READ|PROT_WRITE,MAP_SHARED,4*PS,&g);
	  SHOW("len0 COLLAPSE", madvise(m,0,25)); SHOW("len0 bad 26", madvise(m,0,26)); SHOW("unaligned DONTNEED", madvise(m+1,PS,4));
	  SHOW("unaligned bad", madvise(m+1,PS,26)); SHOW("len -1 DONTNEED", syscall(SYS_madvise,m,(size_t)-1,4));
	  SHOW("len 0 at unmapped 0x1000", madvise((void*)0x1000,0,4));
	  munmap(m,4*PS); close(g);}
	/* guard regions on gmem */
	{ char *m=fresh(vm,3,PROT_READ|PROT_WRITE,MAP_SHARED,4*PS,&g);
	  st(m+PS,0x11); SHOW("guard install", madvise(m+PS,PS,102)); printf("  load guarded %s store %s\n", ld(m+PS), st(m+PS,1));
	  SHOW("dontneed guarded", madvise(m+PS,PS,4)); printf("  load %s\n", ld(m+PS));
	  SHOW("remove guarded", madvise(m+PS,PS,9)); printf("  load %s\n", ld(m+PS));
	  SHOW("punch guarded", fallocate(g,3,PS,PS)); printf("  load %s\n", ld(m+PS));
	  SHOW("populate_read guarded", madvise(m,4*PS,22));
	  SHOW("populate_write guarded", madvise(m,4*PS,23));
	  SHOW("guard install again", madvise(m+PS,PS,102));
	  SHOW("guard remove", madvise(m+PS,PS,103)); printf("  load %s val=%d\n", ld(m+PS), ldv(m+PS));
	  st(m+2*PS,0x22); SHOW("guard install p2", madvise(m+2*PS,PS,102)); SHOW("guard remove p2", madvise(m+2*PS,PS,103)); printf("  p2 val=%d (data kept)\n", ldv(m+2*PS));
	  char *m2=mmap(0,4*PS,PROT_READ,MAP_SHARED,g,0); printf("  other mapping p1 %s\n", ld(m2+PS)); munmap(m2,4*PS);
	  SHOW("guard install p3", madvise(m+3*PS,PS,102)); munmap(m,4*PS); m=mmap(0,4*PS,PROT_READ|PROT_WRITE,MAP_SHARED,g,0); printf("  after remap p3 %s\n", ld(m+3*PS));
	  munmap(m,4*PS); close(g);}
	/* guard gmem1, PROT_NONE */
	{ char *m=fresh(vm,1,PROT_READ|PROT_WRITE,MAP_SHARED,4*PS,&g); SHOW("gmem1 guard install", madvise(m,PS,102)); printf("  load %s\n", ld(m)); SHOW("gmem1 populate_read", madvise(m+PS,PS,22)); SHOW("gmem1 populate_write", madvise(m+PS,PS,23)); munmap(m,4*PS); close(g); }
	/* populate beyond EOF */
	{ char *m=mmap(0,32*PS,PROT_READ|PROT_WRITE,MAP_SHARED,(g=gmem(vm,16*PS,3)),0); SHOW("populate_read past EOF", madvise(m+15*PS,2*PS,22)); SHOW("populate_write past EOF", madvise(m+15*PS,2*PS,23)); SHOW("populate [ok][hole]", (munmap(m+20*PS,12*PS), madvise(m,32*PS,22)));
	  munmap(m,20*PS); close(g);}
	/* collapse on 2M aligned gmem */
	{ g=gmem(vm,4<<20,3); char *r=mmap(0,6<<20,PROT_NONE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); char *a=(char*)(((uintptr_t)r+(2<<20)-1)&~((2UL<<20)-1)); munmap(r,6<<20);
	  char *m=mmap(a,2<<20,PROT_READ|PROT_WRITE,MAP_SHARED|MAP_FIXED_NOREPLACE,g,0); printf("gmem 2M at aligned %p\n",(void*)m);
	  for(size_t o=0;o<(2<<20);o+=PS) ld(m+o); SHOW("gmem COLLAPSE 2M", madvise(m,2<<20,25)); SHOW("gmem HUGEPAGE 2M", madvise(m,2<<20,14)); SHOW("gmem COLLAPSE 2M after HUGEPAGE", madvise(m,2<<20,25)); munmap(m,2<<20); close(g);
	  char *p=mmap(0,4<<20,PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); SHOW("anon COLLAPSE 4K", madvise(p,PS,25)); SHOW("anon COLLAPSE 4M empty", madvise(p,4<<20,25)); p[0]=1; SHOW("anon COLLAPSE 4M one page", madvise(p,4<<20,25)); munmap(p,4<<20); }
	/* mmap flags */
	g=gmem(vm,16*PS,3); int g1=gmem(vm,16*PS,1);
	SHOW("gmem3 MAP_LOCKED", (long)mmap(0,4*PS,3,MAP_SHARED|MAP_LOCKED,g,0));
	SHOW("gmem1 MAP_LOCKED", (long)mmap(0,4*PS,3,MAP_SHARED|MAP_LOCKED,g1,0));
	SHOW("gmem1 MAP_POPULATE", (long)mmap(0,4*PS,3,MAP_SHARED|MAP_POPULATE,g1,0));
	SHOW("gmem3 MAP_POPULATE 32 pages (past EOF)", (long)mmap(0,32*PS,3,MAP_SHARED|MAP_POPULATE,g,0));
	SHOW("gmem3 MAP_POPULATE|LOCKED 32 pages", (long)mmap(0,32*PS,3,MAP_SHARED|MAP_POPULATE|MAP_LOCKED,g,0));
	SHOW("gmem3 SHARED_VALIDATE|LOCKED", (long)mmap(0,4*PS,3,MAP_SHARED_VALIDATE|MAP_LOCKED,g,0));
	SHOW("gmem3 SHARED_VALIDATE|POPULATE", (long)mmap(0,4*PS,3,MAP_SHARED_VALIDATE|MAP_POPULATE,g,0));
	SHOW("gmem3 SHARED_VALIDATE|0x40 (MAP_32BIT?)", (long)mmap(0,4*PS,3,MAP_SHARED_VALIDATE|0x40,g,0));
	SHOW("gmem3 SHARED_VALIDATE|0x80000 MAP_SYNC", (long)mmap(0,4*PS,3,MAP_SHARED_VALIDATE|0x80000,g,0));
	SHOW("gmem3 SHARED_VALIDATE|0x80000 PROT_EXEC", (long)mmap(0,4*PS,7,MAP_SHARED_VALIDATE|0x80000,g,0));
	SHOW("gmem0 SHARED_VALIDATE|0x80000", (long)mmap(0,4*PS,3,MAP_SHARED_VALIDATE|0x80000,gmem(vm,16*PS,0),0));
	SHOW("gmem3 SHARED|0x80000", (long)mmap(0,4*PS,3,MAP_SHARED|0x80000,g,0));
	SHOW("gmem3 SHARED_VALIDATE|GROWSDOWN", (long)mmap(0,4*PS,3,MAP_SHARED_VALIDATE|MAP_GROWSDOWN,g,0));
	SHOW("gmem3 SHARED|GROWSDOWN", (long)mmap(0,4*PS,3,MAP_SHARED|MAP_GROWSDOWN,g,0));
	SHOW("gmem3 SHARED|HUGETLB", (long)mmap(0,4*PS,3,MAP_SHARED|MAP_HUGETLB,g,0));
	SHOW("gmem3 PRIVATE|LOCKED", (long)mmap(0,4*PS,3,MAP_PRIVATE|MAP_LOCKED,g,0));
	SHOW("gmem3 type 0", (long)mmap(0,4*PS,3,0,g,0));
	SHOW("gmem3 type 4", (long)mmap(0,4*PS,3,4,g,0));
	SHOW("gmem3 type 0xf", (long)mmap(0,4*PS,3,0xf,g,0));
	SHOW("gmem3 MAP_STACK", (long)mmap(0,4*PS,3,MAP_SHARED|MAP_STACK,g,0));
	SHOW("anon SHARED_VALIDATE", (long)mmap(0,4*PS,3,MAP_SHARED_VALIDATE|MAP_ANONYMOUS,-1,0));
	SHOW("anon type 0", (long)mmap(0,4*PS,3,MAP_ANONYMOUS,-1,0));
	SHOW("anon type 0xf", (long)mmap(0,4*PS,3,0xf|MAP_ANONYMOUS,-1,0));
	SHOW("anon shared offset 1", (long)mmap(0,4*PS,3,MAP_SHARED|MAP_ANONYMOUS,-1,1));
	SHOW("anon shared offset -4096", (long)mmap(0,4*PS,3,MAP_SHARED|MAP_ANONYMOUS,-1,-4096));
	SHOW("anon private offset -4096", (long)mmap(0,4*PS,3,MAP_PRIVATE|MAP_ANONYMOUS,-1,-4096));
	SHOW("anon shared offset 1<<62", (long)mmap(0,4*PS,3,MAP_SHARED|MAP_ANONYMOUS,-1,1UL<<62));
	SHOW("anon shared len 0", (long)mmap(0,0,3,MAP_SHARED|MAP_ANONYMOUS,-1,0));
	SHOW("anon shared GROWSDOWN", (long)mmap(0,4*PS,3,MAP_SHARED|MAP_ANONYMOUS|MAP_GROWSDOWN,-1,0));
	SHOW("anon private GROWSDOWN", (long)mmap(0,4*PS,3,MAP_PRIVATE|MAP_ANONYMOUS|MAP_GROWSDOWN,-1,0));
	SHOW("anon shared fd 12345", (long)mmap(0,4*PS,3,MAP_SHARED|MAP_ANONYMOUS,12345,0));
	SHOW("anon shared EXEC", (long)mmap(0,4*PS,7,MAP_SHARED|MAP_ANONYMOUS,-1,0));
	SHOW("anon shared huge len 1<<47", (long)mmap(0,1UL<<47,3,MAP_SHARED|MAP_ANONYMOUS|MAP_NORESERVE,-1,0));
	SHOW("anon shared huge len -4096", (long)mmap(0,-4096UL,3,MAP_SHARED|MAP_ANONYMOUS,-1,0));
	SHOW("anon shared huge len 1<<46", (long)mmap(0,1UL<<46,3,MAP_SHARED|MAP_ANONYMOUS,-1,0));
	SHOW("anon private huge len 1<<46", (long)mmap(0,1UL<<46,3,MAP_PRIVATE|MAP_ANONYMOUS,-1,0));
	/* offset limit per file type */
	SHOW("vm fd offset 0x7ffffffffffff000", (long)mmap(0,4*PS,3,MAP_SHARED,vm,0x7ffffffffffff000L));
	SHOW("vm fd offset 0", (long)mmap(0,4*PS,3,MAP_SHARED,vm,0));
	SHOW("gmem offset 0x7ffffffffffff000", (long)mmap(0,4*PS,3,MAP_SHARED,g,0x7ffffffffffff000L));
	SHOW("gmem offset 0x7fffffffffffc000", (long)mmap(0,4*PS,3,MAP_SHARED,g,0x7fffffffffffc000L));
	SHOW("gmem offset 0x7fffffffffffb000", (long)mmap(0,4*PS,3,MAP_SHARED,g,0x7fffffffffffb000L));
	SHOW("gmem offset 1<<63", (long)mmap(0,4*PS,3,MAP_SHARED,g,1UL<<63));
	SHOW("vm fd offset 1<<63", (long)mmap(0,4*PS,3,MAP_SHARED,vm,1UL<<63));
	SHOW("vm fd offset -8192", (long)mmap(0,4*PS,3,MAP_SHARED,vm,-8192L));
	SHOW("kvm fd offset 1<<63", (long)mmap(0,4*PS,3,MAP_SHARED,kvmfd,1UL<<63));
	int nul=open("/dev/null",O_RDWR); SHOW("/dev/null offset 1<<63", (long)mmap(0,4*PS,3,MAP_SHARED,nul,1UL<<63)); SHOW("/dev/null offset 0", (long)mmap(0,4*PS,3,MAP_SHARED,nul,0));
	struct stat s; fstat(vm,&s); printf("vm st_mode %o\n", s.st_mode);
	/* shared anon: prot, DONTNEED keeps, REMOVE zeroes, PROT_READ store SIGSEGV */
	{ char *m=mmap(0,4*PS,PROT_READ,MAP_SHARED|MAP_ANONYMOUS,-1,0); printf("anon shared RO load %s store %s\n", ld(m), st(m,1)); munmap(m,4*PS);
	  m=mmap(0,4*PS,PROT_NONE,MAP_SHARED|MAP_ANONYMOUS,-1,0); printf("anon shared NONE load %s\n", ld(m)); munmap(m,4*PS);
	  m=mmap(0,4*PS,PROT_WRITE,MAP_SHARED|MAP_ANONYMOUS,-1,0); printf("anon shared WO load %s store %s\n", ld(m), st(m,1)); munmap(m,4*PS);
	  m=mmap(0,4*PS,PROT_READ,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); printf("anon private RO load %s store %s\n", ld(m), st(m,1)); munmap(m,4*PS);
	  m=mmap(0,4*PS,3,MAP_SHARED|MAP_ANONYMOUS,-1,0); m[0]=7; madvise(m,PS,4); printf("anon shared after DONTNEED %d\n", m[0]); madvise(m,PS,9); printf("anon shared after REMOVE %d\n", m[0]);
	  m[PS]=9; madvise(m+PS,PS,8); printf("anon shared after FREE %d\n", m[PS]);
	  SHOW("anon shared load past end", (long)(ld(m+4*PS)[0]=='S'?-1:0)); munmap(m,4*PS);
	  m=mmap(0,4*PS,3,MAP_PRIVATE|MAP_ANONYMOUS,-1,0); m[0]=7; madvise(m,PS,8); printf("anon private after FREE %d\n", m[0]); m[0]=7; madvise(m,PS,21); printf("anon private after PAGEOUT %d\n", m[0]); madvise(m,PS,20); printf("anon private after COLD %d\n", m[0]);
	  m[PS]=3; madvise(m+PS,PS,102); printf("anon priv guard load %s\n", ld(m+PS)); madvise(m+PS,PS,103); printf("anon priv after guard remove %d\n", ldv(m+PS));
	  munmap(m,4*PS);}
	/* KSM, THP config */
	system("ls /sys/kernel/mm/ksm >/dev/null 2>&1 && echo KSM yes || echo KSM no; ls /proc/sys/vm/memory_failure_recovery 2>/dev/null || echo no memory_failure sysctl; zcat /proc/config.gz | grep -E 'CONFIG_(KSM|MEMORY_FAILURE|TRANSPARENT_HUGEPAGE|SWAP|USERFAULTFD|ANON_VMA_NAME)[ =]' ");
	return 0;
}
