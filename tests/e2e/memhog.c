/*
 * memhog - allocate and touch anonymous memory, then hold it until killed.
 *
 * Runs inside the e2e test guests (built with `gcc -static` by prepare.sh).
 *
 *   memhog [-d] [-p PIDFILE] [-s STATUSFILE] [-r STEP_MIB] [-m MAX_MIB]
 *          [-i INTERVAL_MS] MIB
 *
 *   MIB          MiB to allocate and touch right away (may be 0).
 *   -r STEP_MIB  then grow by STEP_MIB every interval ...
 *   -m MAX_MIB   ... until MAX_MIB in total is held (default: MIB).
 *   -i MS        growth interval in milliseconds (default 1000).
 *   -d           daemonize once the first MIB are touched: the parent prints
 *                "pid N mib M" and exits 0, or exits 1 when the child died
 *                before that (e.g. killed by the guest's OOM killer).
 *   -p PIDFILE   write the holder's pid there.
 *   -s STATUS    rewrite this file with "MIB\n" (MiB held) after each step.
 *
 * Every page is written with a non-zero byte so that the memory is really
 * backed (no zero-page sharing). Exit 2 on usage errors, 3 when mmap fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024UL * 1024UL)

static const char *status_path;
static long held_mib;

static void usage(void)
{
    fprintf(stderr,
            "usage: memhog [-d] [-p PIDFILE] [-s STATUSFILE] [-r STEP_MIB] "
            "[-m MAX_MIB] [-i INTERVAL_MS] MIB\n");
    exit(2);
}

static long parse_num(const char *s)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < 0)
        usage();
    return v;
}

static void write_file_atomic(const char *path, const char *text)
{
    char tmp[4096];
    int fd;
    size_t len = strlen(text);

    if (!path)
        return;
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return;
    if (write(fd, text, len) != (ssize_t)len) {
        close(fd);
        return;
    }
    close(fd);
    rename(tmp, path);
}

static void report_status(void)
{
    char buf[64];

    snprintf(buf, sizeof buf, "%ld\n", held_mib);
    write_file_atomic(status_path, buf);
}

/*
 * Allocate and touch `mib` MiB more, one MiB mapping at a time: a single big
 * mmap could be refused up front by the kernel's overcommit heuristic, while
 * the point is to really consume memory (and meet the OOM killer if needed).
 */
static void grow(long mib)
{
    long page = sysconf(_SC_PAGESIZE);
    long i;

    for (i = 0; i < mib; i++) {
        unsigned char *p;
        size_t off;

        p = mmap(NULL, MIB, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            report_status();
            fprintf(stderr, "memhog: mmap after %ld MiB: %s\n", held_mib,
                    strerror(errno));
            exit(3);
        }
        for (off = 0; off < MIB; off += (size_t)page)
            p[off] = (unsigned char)(0x5a ^ (off >> 12) ^ i);
        held_mib++;
        if ((held_mib % 16) == 0)
            report_status();
    }
    report_status();
}

static void sleep_ms(long ms)
{
    struct timespec ts;

    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int main(int argc, char **argv)
{
    int opt;
    int daemonize = 0;
    const char *pid_path = NULL;
    long step = 0, max = -1, interval = 1000, initial;
    int ready_pipe[2] = {-1, -1};

    while ((opt = getopt(argc, argv, "dp:s:r:m:i:")) != -1) {
        switch (opt) {
        case 'd': daemonize = 1; break;
        case 'p': pid_path = optarg; break;
        case 's': status_path = optarg; break;
        case 'r': step = parse_num(optarg); break;
        case 'm': max = parse_num(optarg); break;
        case 'i': interval = parse_num(optarg); break;
        default: usage();
        }
    }
    if (optind != argc - 1)
        usage();
    initial = parse_num(argv[optind]);
    if (max < 0)
        max = initial;
    if (max < initial)
        max = initial;
    if (interval < 1)
        interval = 1;

    if (daemonize) {
        pid_t child;

        if (pipe(ready_pipe) != 0) {
            perror("memhog: pipe");
            return 3;
        }
        fflush(stdout);
        child = fork();
        if (child < 0) {
            perror("memhog: fork");
            return 3;
        }
        if (child > 0) {
            char c;
            ssize_t n;
            int st;

            close(ready_pipe[1]);
            do {
                n = read(ready_pipe[0], &c, 1);
            } while (n < 0 && errno == EINTR);
            if (n == 1) {
                printf("pid %d mib %ld\n", (int)child, initial);
                return 0;
            }
            if (waitpid(child, &st, 0) == child && WIFSIGNALED(st))
                printf("memhog died before holding %ld MiB: signal %d\n",
                       initial, WTERMSIG(st));
            else
                printf("memhog died before holding %ld MiB\n", initial);
            return 1;
        }
        close(ready_pipe[0]);
        setsid();
    }

    if (pid_path) {
        char buf[32];

        snprintf(buf, sizeof buf, "%d\n", (int)getpid());
        write_file_atomic(pid_path, buf);
    }
    report_status();
    grow(initial);

    if (daemonize) {
        int fd;

        if (write(ready_pipe[1], "R", 1) != 1) {
            /* parent gone: keep holding anyway */
        }
        close(ready_pipe[1]);
        fd = open("/dev/null", O_RDWR);
        if (fd >= 0) {
            dup2(fd, 0);
            dup2(fd, 1);
            dup2(fd, 2);
            if (fd > 2)
                close(fd);
        }
    } else {
        printf("holding %ld MiB\n", held_mib);
        fflush(stdout);
    }

    while (step > 0 && held_mib < max) {
        long n = step;

        sleep_ms(interval);
        if (held_mib + n > max)
            n = max - held_mib;
        grow(n);
    }
    for (;;)
        pause();
    return 0;
}
