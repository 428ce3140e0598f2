/* The demo's program: counts, printing one line every 200 ms to stdout (a file in the demo).
 * The count lives in a heap variable, so a restored process carries on from where it was. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  long *count = malloc(sizeof *count);
  *count = 0;
  struct timespec tick = {0, 200 * 1000 * 1000};
  for (;;) {
    printf("count %ld (pid %d)\n", ++*count, getpid());
    nanosleep(&tick, NULL);
  }
}
