/* text-trace.so: LD_PRELOAD into a process to learn which 4 KiB pages of its executable's code
 * it runs. The text is made PROT_NONE; each first execution of a page traps (SIGSEGV), the page
 * is made executable again and noted. At exit the page offsets (from the start of the text
 * mapping) are written to $TEXT_TRACE_OUT, one hex number a line. Used by
 * plugin-code-order.sh; never part of twill itself. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static unsigned long text_start, text_end;
static unsigned char *ran;

static void on_fault(int sig, siginfo_t *si, void *ctx) {
  unsigned long at = (unsigned long)si->si_addr;
  (void)ctx;
  if (at >= text_start && at < text_end) {
    unsigned long page = at & ~4095UL;
    mprotect((void *)page, 4096, PROT_READ | PROT_EXEC);
    ran[(page - text_start) / 4096] = 1;
    return;
  }
  signal(sig, SIG_DFL); /* a real crash: let it happen */
}

__attribute__((constructor)) static void start(void) {
  char line[512], exe[256] = "";
  FILE *maps;
  struct sigaction sa;
  if (!getenv("TEXT_TRACE_OUT") || !(maps = fopen("/proc/self/maps", "r"))) return;
  while (fgets(line, sizeof line, maps)) {
    unsigned long a, b;
    char perm[8], path[256] = "";
    if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %255s", &a, &b, perm, path) < 3) continue;
    if (!exe[0]) strcpy(exe, path); /* the first mapping is the executable's */
    if (!strcmp(path, exe) && perm[2] == 'x') text_start = a, text_end = b;
  }
  fclose(maps);
  if (!text_end || !(ran = calloc((text_end - text_start) / 4096, 1))) return;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_fault;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigaction(SIGSEGV, &sa, 0);
  mprotect((void *)text_start, text_end - text_start, PROT_NONE);
}

__attribute__((destructor)) static void finish(void) {
  const char *out = getenv("TEXT_TRACE_OUT");
  FILE *f;
  if (!out || !ran || !(f = fopen(out, "w"))) return;
  for (unsigned long i = 0; i < (text_end - text_start) / 4096; i++)
    if (ran[i]) fprintf(f, "%lx\n", i * 4096);
  fclose(f);
}
