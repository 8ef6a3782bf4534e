/* lk: the lock test program run inside the Linux NFS client guests.
 * Built statically by tests/linux/build-guest. Every line it prints that
 * starts with PASS/FAIL/INFO is read by tests/linux/run.
 *
 *   lk basic FILE FLOCKFILE  scenario 1 on one client; ends holding a known
 *                            set of locks (see EXPECT below) until SIGTERM
 *   lk hold FILE w|r START LEN [wait]
 *                            take a lock (F_SETLKW with "wait"), print
 *                            "LOCKED <epoch ms> <waited ms>", hold until SIGTERM
 *                            (SIGUSR1: unlock, print UNLOCKED, keep running)
 *   lk try FILE w|r START LEN            F_SETLK once: "GOT" or "BUSY <errno>"
 *   lk test FILE w|r START LEN           F_GETLK: "FREE" or "HELD <type> <start> <len>"
 *   lk wait-alarm FILE w|r START LEN SECS  F_SETLKW interrupted by alarm(SECS)
 *   lk deadlock FILE w A B   hold [A,A+1), on SIGUSR1 F_SETLKW [B,B+1)
 *   lk now                   epoch ms
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}
static long long mono_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int fails;
static void check(int ok, const char *what) {
  printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  fflush(stdout);
  if (!ok) fails++;
}

static int lk(int fd, int cmd, short type, off_t start, off_t len) {
  struct flock f = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
  return fcntl(fd, cmd, &f);
}

/* F_GETLK: returns the conflicting type (F_UNLCK when free); *s,*l the range */
static short getlk(int fd, short type, off_t start, off_t len, off_t *s, off_t *l) {
  struct flock f = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
  if (fcntl(fd, F_GETLK, &f) < 0) return -1;
  if (s) *s = f.l_start;
  if (l) *l = f.l_len;
  return f.l_type;
}

/* run fn in a child process (another lock owner on this client) */
static int in_child(const char *path, int (*fn)(int fd, void *), void *arg) {
  pid_t p = fork();
  if (p == 0) {
    int fd = open(path, O_RDWR);
    _exit(fd < 0 ? 99 : fn(fd, arg));
  }
  int st;
  waitpid(p, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 98;
}
struct probe { short type; off_t start, len; short want; };
static int probe_fn(int fd, void *a) {
  struct probe *p = a;
  short t = getlk(fd, p->type, p->start, p->len, 0, 0);
  return t == p->want ? 0 : 1;
}
static int probe(const char *path, short type, off_t start, off_t len, short want) {
  struct probe p = {type, start, len, want};
  return in_child(path, probe_fn, &p) == 0;
}
static int trylock_fn(int fd, void *a) {
  struct probe *p = a;
  int r = lk(fd, F_SETLK, p->type, p->start, p->len);
  return r == 0 ? 0 : (errno == EAGAIN || errno == EACCES) ? 1 : 2;
}
static int flock_nb_fn(int fd, void *a) {
  (void)a;
  return flock(fd, LOCK_EX | LOCK_NB) == 0 ? 0 : errno == EWOULDBLOCK ? 1 : 2;
}

static volatile sig_atomic_t got_usr1, got_term, got_alrm;
static void on_sig(int s) {
  if (s == SIGUSR1) got_usr1 = 1;
  else if (s == SIGALRM) got_alrm = 1;
  else got_term = 1;
}
static void handlers(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sig; /* no SA_RESTART: F_SETLKW returns EINTR */
  sigaction(SIGUSR1, &sa, 0);
  sigaction(SIGTERM, &sa, 0);
  sigaction(SIGALRM, &sa, 0);
}

#define T64 ((off_t)1 << 40)
#define T62 ((off_t)1 << 62)

static int basic(const char *path, const char *fpath) {
  int fd = open(path, O_RDWR | O_CREAT, 0666);
  if (fd < 0) { perror("open"); return 2; }
  long long t0 = mono_ms();
  /* exclusive lock, seen by another owner */
  check(lk(fd, F_SETLK, F_WRLCK, 0, 100) == 0, "F_SETLK write 0-99");
  check(probe(path, F_RDLCK, 50, 1, F_WRLCK), "other owner F_GETLK sees write lock at 50");
  struct probe busy = {F_WRLCK, 10, 5, 0};
  check(in_child(path, trylock_fn, &busy) == 1, "other owner F_SETLK 10-14 EAGAIN");
  /* split: a read lock inside our write lock */
  check(lk(fd, F_SETLK, F_RDLCK, 20, 10) == 0, "downgrade 20-29 to read (split)");
  check(probe(path, F_RDLCK, 20, 10, F_UNLCK), "read lock 20-29 shareable");
  check(probe(path, F_WRLCK, 25, 1, F_RDLCK), "write at 25 blocked by read");
  check(probe(path, F_RDLCK, 19, 1, F_WRLCK), "19 still write");
  /* unlock in the middle */
  check(lk(fd, F_SETLK, F_UNLCK, 40, 10) == 0, "unlock 40-49 (split)");
  check(probe(path, F_WRLCK, 40, 10, F_UNLCK), "40-49 free");
  check(probe(path, F_WRLCK, 50, 1, F_WRLCK), "50 still write");
  /* merge back */
  check(lk(fd, F_SETLK, F_WRLCK, 40, 10) == 0, "relock 40-49 (merge)");
  check(lk(fd, F_SETLK, F_WRLCK, 100, 20) == 0, "adjacent 100-119 (merge)");
  /* upgrade */
  check(lk(fd, F_SETLK, F_RDLCK, 200, 100) == 0, "read 200-299");
  check(probe(path, F_RDLCK, 250, 1, F_UNLCK), "read 200-299 shareable");
  check(lk(fd, F_SETLKW, F_WRLCK, 200, 100) == 0, "upgrade 200-299 to write (F_SETLKW)");
  check(probe(path, F_RDLCK, 250, 1, F_WRLCK), "200-299 now write");
  /* length 0: to end of file, and 64-bit offsets */
  check(lk(fd, F_SETLK, F_WRLCK, 1000, 0) == 0, "write 1000-EOF (len 0)");
  check(probe(path, F_RDLCK, T64 + 5, 1, F_WRLCK), "2^40+5 held by len 0");
  check(lk(fd, F_SETLK, F_UNLCK, 1000, 0) == 0, "unlock 1000-EOF");
  check(probe(path, F_RDLCK, T64 + 5, 1, F_UNLCK), "2^40+5 free");
  check(lk(fd, F_SETLK, F_RDLCK, T64, 4096) == 0, "read [2^40, +4096)");
  check(lk(fd, F_SETLK, F_WRLCK, T62, 1) == 0, "write at 2^62");
  check(probe(path, F_WRLCK, T64 + 4095, 1, F_RDLCK), "2^40+4095 read");
  check(probe(path, F_RDLCK, T62, 1, F_WRLCK), "2^62 write");
  /* F_SETLKW waits for a local owner then proceeds */
  pid_t c = fork();
  if (c == 0) {
    int f2 = open(path, O_RDWR);
    long long a = mono_ms();
    int r = lk(f2, F_SETLKW, F_WRLCK, 5000, 1);
    printf("INFO local F_SETLKW waited %lld ms\n", mono_ms() - a);
    _exit(r == 0 ? 0 : 1);
  }
  lk(fd, F_SETLK, F_WRLCK, 5000, 1); /* may race the child; either way it ends granted */
  usleep(300000);
  lk(fd, F_SETLK, F_UNLCK, 5000, 1);
  int st;
  waitpid(c, &st, 0);
  check(WIFEXITED(st) && WEXITSTATUS(st) == 0, "local waiter F_SETLKW granted after unlock");
  /* flock: the Linux client sends it as a whole-file exclusive lock */
  int ff = open(fpath, O_RDWR | O_CREAT, 0666);
  check(flock(ff, LOCK_EX) == 0, "flock LOCK_EX");
  check(in_child(fpath, flock_nb_fn, 0) == 1, "other flock LOCK_NB EWOULDBLOCK");
  check(flock(ff, LOCK_SH) == 0, "flock convert to LOCK_SH");
  check(flock(ff, LOCK_UN) == 0, "flock LOCK_UN");
  check(in_child(fpath, flock_nb_fn, 0) == 0, "other flock after unlock");
  check(flock(ff, LOCK_EX) == 0, "flock LOCK_EX again (held)");
  printf("INFO basic %lld ms\n", mono_ms() - t0);
  /* EXPECT at the server now: FILE W 0-19, R 20-29, W 30-119, W 200-299,
   * R 2^40..+4095, W 2^62; FLOCKFILE W 0-EOF */
  printf("%s basic\nHOLDING\n", fails ? "FAIL" : "PASS");
  fflush(stdout);
  handlers();
  while (!got_term) pause();
  return fails ? 1 : 0;
}

static short ty(const char *s) { return s[0] == 'r' ? F_RDLCK : F_WRLCK; }

int main(int argc, char **argv) {
  setvbuf(stdout, 0, _IOLBF, 0);
  if (argc >= 4 && !strcmp(argv[1], "basic")) return basic(argv[2], argv[3]);
  if (argc >= 2 && !strcmp(argv[1], "now")) { printf("%lld\n", now_ms()); return 0; }
  if (argc < 6) { fprintf(stderr, "usage: see lk.c\n"); return 2; }
  const char *cmd = argv[1], *path = argv[2];
  short t = ty(argv[3]);
  off_t start = strtoll(argv[4], 0, 0), len = strtoll(argv[5], 0, 0);
  int fd = open(path, O_RDWR | O_CREAT, 0666);
  if (fd < 0) { perror("open"); return 2; }
  handlers();
  if (!strcmp(cmd, "hold")) {
    int wait = argc > 6 && !strcmp(argv[6], "wait");
    printf("WAITING %lld\n", now_ms());
    long long a = mono_ms();
    if (lk(fd, wait ? F_SETLKW : F_SETLK, t, start, len) < 0) {
      printf("ERROR %d %s %lld\n", errno, strerror(errno), mono_ms() - a);
      return 1;
    }
    printf("LOCKED %lld %lld\n", now_ms(), mono_ms() - a);
    for (;;) {
      pause();
      if (got_term) return 0;
      if (got_usr1) {
        got_usr1 = 0;
        long long b = now_ms();
        lk(fd, F_SETLK, F_UNLCK, start, len);
        printf("UNLOCKED %lld %lld\n", b, now_ms() - b);
      }
    }
  }
  if (!strcmp(cmd, "try")) {
    long long a = mono_ms();
    if (lk(fd, F_SETLK, t, start, len) == 0) { printf("GOT %lld\n", mono_ms() - a); return 0; }
    printf("BUSY %d %lld\n", errno, mono_ms() - a);
    return 1;
  }
  if (!strcmp(cmd, "test")) {
    off_t s, l;
    short r = getlk(fd, t, start, len, &s, &l);
    if (r < 0) { printf("ERROR %d\n", errno); return 2; }
    if (r == F_UNLCK) { printf("FREE\n"); return 0; }
    printf("HELD %c %lld %lld\n", r == F_RDLCK ? 'r' : 'w', (long long)s, (long long)l);
    return 1;
  }
  if (!strcmp(cmd, "wait-alarm") && argc >= 7) {
    alarm(atoi(argv[6]));
    long long a = mono_ms();
    int r = lk(fd, F_SETLKW, t, start, len);
    int e = errno;
    printf("%s %d %lld\n", r == 0 ? "LOCKED" : e == EINTR ? "EINTR" : "ERROR", r == 0 ? 0 : e,
           mono_ms() - a);
    return r == 0 ? 1 : e == EINTR ? 0 : 2;
  }
  if (!strcmp(cmd, "deadlock")) {
    /* argv[4]: the byte held, argv[5]: the byte waited for after SIGUSR1 */
    off_t a = strtoll(argv[4], 0, 0), b = strtoll(argv[5], 0, 0);
    if (lk(fd, F_SETLK, F_WRLCK, a, 1) < 0) { printf("ERROR first %d\n", errno); return 2; }
    printf("HOLDING %lld\n", (long long)a);
    while (!got_usr1 && !got_term) pause(); /* SIGUSR1: go */
    long long m = mono_ms();
    int r = lk(fd, F_SETLKW, F_WRLCK, b, 1);
    int e = errno;
    printf("%s %d %lld\n", r == 0 ? "LOCKED" : e == EDEADLK ? "EDEADLK" : "ERROR", r ? e : 0,
           mono_ms() - m);
    if (r == 0) { while (!got_term) pause(); }
    return 0;
  }
  fprintf(stderr, "unknown command\n");
  return 2;
}
