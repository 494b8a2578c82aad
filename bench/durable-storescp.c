/*
 * durable-storescp.so: an LD_PRELOAD library that makes DCMTK's storescp do the
 * least work that Meridian's durability rule (issue 2, item 4) asks of any archive
 * before it acknowledges a C-STORE, so bench/ingest can show what that rule costs
 * on the machine at hand, apart from everything else Meridian does.
 *
 * storescp receives a data set into memory, writes it to a file with stdio, closes
 * it with fclose() and only then sends the C-STORE response. This library wraps
 * fclose(): for a file open for writing under $DURABLE_DIR it
 *   1. fsyncs the file (its data and inode),
 *   2. closes it, then fsyncs $DURABLE_DIR (the new directory entry),
 *   3. appends one 4 KiB record to $DURABLE_DIR.journal.<pid> and fdatasyncs it,
 *      standing in for the index commit that item 4 orders after the file.
 * Every other fclose() is passed through unchanged. No index is kept, nothing is
 * parsed beyond what storescp does itself, and there is no group commit: with
 * --fork each association's process syncs on its own.
 *
 * Build: cc -O2 -shared -fPIC -o durable-storescp.so durable-storescp.c -ldl
 * (bench/_common.py builds it on first use).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int (*real_fclose)(FILE *);
static char dir[PATH_MAX];
static size_t dir_len;
static int dir_fd = -1;
static int journal_fd = -1;

static void init(void)
{
    if (real_fclose)
        return;
    real_fclose = (int (*)(FILE *))dlsym(RTLD_NEXT, "fclose");
    const char *d = getenv("DURABLE_DIR");
    if (d && realpath(d, dir))
        dir_len = strlen(dir);
}

/* Is fd a file open for writing under DURABLE_DIR? */
static int is_received_file(int fd)
{
    if (!dir_len || fd < 0 || (fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDONLY)
        return 0;
    char link[64], path[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return 0;
    path[n] = 0;
    return strncmp(path, dir, dir_len) == 0 && path[dir_len] == '/';
}

int fclose(FILE *f)
{
    init();
    int fd = fileno(f);
    if (!is_received_file(fd))
        return real_fclose(f);
    int failed = fflush(f) != 0 || fsync(fd) != 0;
    failed |= real_fclose(f) != 0;
    if (dir_fd < 0)
        dir_fd = open(dir, O_RDONLY | O_DIRECTORY);
    failed |= fsync(dir_fd) != 0;
    if (journal_fd < 0) {
        char j[PATH_MAX + 32];
        snprintf(j, sizeof j, "%s.journal.%d", dir, (int)getpid());
        journal_fd = open(j, O_CREAT | O_WRONLY | O_APPEND, 0644);
    }
    static char record[4096];
    memset(record, 'j', sizeof record);
    failed |= write(journal_fd, record, sizeof record) != (ssize_t)sizeof record;
    failed |= fdatasync(journal_fd) != 0;
    return failed ? EOF : 0;
}
