/* The demo's program: counts, printing one line every 200 ms to stdout (a file in the demo).
 * The count lives in a heap variable, so a restored process carries on from where it was. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
  /* Descriptors a shell may leak into its jobs (a job runner's pipes): not ours to keep. */
  syscall(SYS_close_range, 3, ~0U, 0);
  setvbuf(stdout, NULL, _IONBF, 0);
  long *count = malloc(sizeof *count);
  *count = 0;
  struct timespec tick = {0, 200 * 1000 * 1000};
  for (;;) {
    printf("count %ld (pid %d)\n", ++*count, getpid());
    nanosleep(&tick, NULL);
  }
}
