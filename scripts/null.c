/* The FUSE ceiling: libfuse's example/null.c (high-level API, one file of zeros mounted on a
 * regular file), kept here so the measurement is reproducible without the libfuse source tree.
 * Build: cc -O2 -o null null.c $(pkg-config fuse3 --cflags --libs)
 * Run:   touch /tmp/nullfile; ./null -f /tmp/nullfile &   */
#define FUSE_USE_VERSION 31
#include <fuse.h>
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int null_getattr(const char *path, struct stat *stbuf, struct fuse_file_info *fi) {
	(void)fi;
	if (strcmp(path, "/") != 0) return -ENOENT;
	stbuf->st_mode = S_IFREG | 0644;
	stbuf->st_nlink = 1;
	stbuf->st_uid = getuid();
	stbuf->st_gid = getgid();
	stbuf->st_size = (1ULL << 32); /* 4G */
	stbuf->st_blocks = 0;
	stbuf->st_atime = stbuf->st_mtime = stbuf->st_ctime = time(NULL);
	return 0;
}
static int null_open(const char *path, struct fuse_file_info *fi) {
	(void)fi;
	if (strcmp(path, "/") != 0) return -ENOENT;
	return 0;
}
static int null_read(const char *path, char *buf, size_t size, off_t offset, struct fuse_file_info *fi) {
	(void)buf; (void)fi;
	if (strcmp(path, "/") != 0) return -ENOENT;
	if (offset >= (1ULL << 32)) return 0;
	memset(buf, 0, size);
	return size;
}
static const struct fuse_operations null_oper = {
	.getattr = null_getattr,
	.open = null_open,
	.read = null_read,
};
int main(int argc, char *argv[]) { return fuse_main(argc, argv, &null_oper, NULL); }
