/*
 * store_open.c - where a store lives and how it is opened and closed (see
 * store.h; its format is described in store.c).
 *
 * Owns the store's directory and life cycle: the memory store's
 * unguessable name under its root, the sweep of stores that dead daemons
 * left behind, the identity of the daemon that owns a store, the lock
 * file that keeps a second router out, opening the LMDB environment and
 * its databases, the format check (and upgrade), and closing.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "iotd.h"
#include "log.h"
#include "store_int.h"

/* ---- location and life cycle ------------------------------------------- */

const char *store_memory_root(void)
{
	return access(STORE_MEMORY_ROOT, W_OK | X_OK) == 0 ? STORE_MEMORY_ROOT :
							    STORE_MEMORY_FALLBACK;
}

int store_memory_name(char *buf, size_t len, pid_t daemon)
{
	unsigned char rnd[STORE_NAME_RANDOM];
	char hex[2 * STORE_NAME_RANDOM + 1];
	size_t got = 0;
	int n;

	while (got < sizeof(rnd)) {
		ssize_t r = getrandom(rnd + got, sizeof(rnd) - got, 0);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -1;
		got += (size_t)r;
	}
	for (size_t i = 0; i < sizeof(rnd); i++)
		snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
	n = snprintf(buf, len, STORE_DIR_PREFIX "%d-%s", (int)daemon, hex);
	if (n < 0 || (size_t)n >= len) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

int store_memory_dir(char *buf, size_t len, const char *root, const char *name)
{
	int n = snprintf(buf, len, "%s/%s", root, name);

	return name[0] == '\0' || n < 0 || (size_t)n >= len ? -1 : 0;
}

int store_memory_create(const char *dir, char *err, size_t errlen)
{
	if (mkdir(dir, 0700) == 0)
		return 0;
	if (errno == EEXIST)
		snprintf(err, errlen, "store %s: something is already there under this daemon's "
			 "new store name: refusing it", dir);
	else
		snprintf(err, errlen, "store %s: cannot create the directory: %s", dir,
			 strerror(errno));
	return -1;
}

/*
 * Only the files a store holds, through a directory fd opened without
 * following a symlink: /dev/shm is world-writable, and a link planted
 * under a store's name must not make a router delete anything else.
 */
int store_remove(const char *dir)
{
	static const char *const files[] = { "data.mdb", "lock.mdb", STORE_LOCK_FILE };
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int rc = 0;

	if (dfd < 0)
		return errno == ENOENT ? 0 : -1;
	for (size_t i = 0; i < ARRAY_SIZE(files); i++)
		if (unlinkat(dfd, files[i], 0) < 0 && errno != ENOENT)
			rc = -1;
	close(dfd);
	if (rmdir(dir) < 0)
		rc = -1;
	return rc;
}

/* A directory we made (not a link, ours, private): the only kind a router touches in a shared root. */
static bool store_dir_private(const char *dir)
{
	struct stat sb;

	return lstat(dir, &sb) == 0 && S_ISDIR(sb.st_mode) && sb.st_uid == geteuid() &&
	       !(sb.st_mode & 077);
}

/* A leftover of a dead daemon, and no router of it left holding it? */
static bool store_dir_abandoned(const char *dir, pid_t pid)
{
	int dfd, fd;
	bool free_lock;

	if (kill(pid, 0) == 0 || errno != ESRCH || !store_dir_private(dir))
		return false;
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return false;
	fd = openat(dfd, STORE_LOCK_FILE, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
	close(dfd);
	if (fd < 0)
		return errno == ENOENT;
	free_lock = flock(fd, LOCK_EX | LOCK_NB) == 0;
	close(fd);
	return free_lock;
}

/* What follows the pid in a store's name: "-<32 hex digits>", or nothing (older versions). */
static bool store_name_tail(const char *s)
{
	if (*s == '\0')
		return true;
	if (*s++ != '-' || strlen(s) != 2 * STORE_NAME_RANDOM)
		return false;
	return strspn(s, "0123456789abcdef") == 2 * STORE_NAME_RANDOM;
}

int store_sweep(const char *root, pid_t self)
{
	char dir[512];
	struct dirent *e;
	DIR *d = opendir(root);
	int removed = 0;

	if (!d)
		return 0;
	while ((e = readdir(d))) {
		char *end;
		long pid;

		if (strncmp(e->d_name, STORE_DIR_PREFIX, strlen(STORE_DIR_PREFIX)))
			continue;
		errno = 0;
		pid = strtol(e->d_name + strlen(STORE_DIR_PREFIX), &end, 10);
		if (errno || !store_name_tail(end) || pid <= 0 || pid == self)
			continue;
		snprintf(dir, sizeof(dir), "%s/%s", root, e->d_name);
		if (!store_dir_abandoned(dir, (pid_t)pid))
			continue;
		if (store_remove(dir) < 0) {
			log_warn("store: cannot remove %s, left by a stopped iotd: %s", dir,
				 strerror(errno));
			continue;
		}
		log_info("store: removed %s, left by a stopped iotd (pid %ld)", dir, pid);
		removed++;
	}
	closedir(d);
	return removed;
}

static int read_line(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "re");
	bool ok;

	if (!f)
		return -1;
	ok = fgets(buf, (int)len, f) != NULL;
	fclose(f);
	if (!ok)
		return -1;
	buf[strcspn(buf, "\n")] = '\0';
	return 0;
}

int store_daemon_ident(pid_t daemon, char *buf, size_t len)
{
	/*
	 * Without a boot id (hidden by systemd's ProcSubset=pid) the pid and
	 * its start time, in clock ticks since boot, still tell daemons apart
	 * unless two boots start it at the same pid within the same tick.
	 * The wall clock would not do: NTP moves it.
	 */
	char boot[64] = "?", stat[1024], path[64];
	unsigned long long start = 0;
	const char *p;
	int n;

	read_line("/proc/sys/kernel/random/boot_id", boot, sizeof(boot));
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)daemon);
	if (read_line(path, stat, sizeof(stat)) == 0 && (p = strrchr(stat, ')'))) {
		/*
		 * Field 22 (starttime); the name in field 2 may hold spaces, hence
		 * from ')', which the blank before field 3 follows.
		 */
		p++;
		for (int field = 3; field < 22 && p; field++)
			p = strchr(p + 1, ' ');
		if (p)
			start = strtoull(p + 1, NULL, 10);
	}
	n = snprintf(buf, len, "%s/%d/%llu", boot, (int)daemon, start);
	return n < 0 || (size_t)n >= len ? -1 : 0;
}

static int store_lock(struct store *st, char *err, size_t errlen)
{
	char path[512];

	snprintf(path, sizeof(path), "%s/%s", st->dir, STORE_LOCK_FILE);
	st->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (st->lock_fd < 0) {
		snprintf(err, errlen, "store %s: cannot open %s: %s", st->dir, path, strerror(errno));
		return -1;
	}
	if (flock(st->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		snprintf(err, errlen, "store %s: %s", st->dir,
			 errno == EWOULDBLOCK ? "in use by another iotd router" : strerror(errno));
		return -1;
	}
	return 0;
}

/*
 * storage.path is the administrator's (a symlink is fine there); a memory
 * store lives in a world-writable directory, so it must be a directory
 * this user made for itself, not something planted under its name.
 */
static int store_mkdir(struct store *st, char *err, size_t errlen)
{
	struct stat sb;

	if (mkdir(st->dir, 0700) < 0 && errno != EEXIST) {
		snprintf(err, errlen, "store %s: cannot create the directory: %s", st->dir,
			 strerror(errno));
		return -1;
	}
	if (stat(st->dir, &sb) < 0 || !S_ISDIR(sb.st_mode)) {
		snprintf(err, errlen, "store %s: not a directory", st->dir);
		return -1;
	}
	if (st->kind == STORE_MEMORY && !store_dir_private(st->dir)) {
		snprintf(err, errlen, "store %s: not a private directory of this user (a symlink, "
			 "another owner, or open to others): refusing it", st->dir);
		return -1;
	}
	return 0;
}

static int store_env_open(struct store *st, size_t mapsize, char *err, size_t errlen)
{
	unsigned flags = MDB_NOLOCK | MDB_NOSYNC | MDB_NOMETASYNC | MDB_NOTLS;
	int rc;

	rc = mdb_env_create(&st->env);
	if (rc == 0)
		rc = mdb_env_set_maxdbs(st->env, STORE_MAX_DBS);
	if (rc == 0)
		rc = mdb_env_set_mapsize(st->env, mapsize);
	if (rc == 0)
		rc = mdb_env_open(st->env, st->dir, flags, 0600);
	if (rc == 0)
		return 0;
	if (rc == MDB_INVALID)
		snprintf(err, errlen, "store %s: not an iotd store (data.mdb is not an LMDB file)",
			 st->dir);
	else if (rc == MDB_VERSION_MISMATCH)
		snprintf(err, errlen, "store %s: written by an incompatible LMDB version", st->dir);
	else
		snprintf(err, errlen, "store %s: cannot open: %s", st->dir, mdb_strerror(rc));
	return -1;
}

/* Open every database of a store whose format was checked (or that is new). */
static int store_dbs_open(struct store *st, MDB_txn *txn)
{
	int rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &st->meta);

	if (rc == 0)
		rc = mdb_dbi_open(txn, "sessions", MDB_CREATE, &st->sessions);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "subs", MDB_CREATE, &st->subs);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "messages", MDB_CREATE, &st->queue);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "retained", MDB_CREATE, &st->retained);
	if (rc == 0)
		rc = mdb_dbi_open(txn, "outbox", MDB_CREATE, &st->outbox);
	return rc;
}

/*
 * An empty environment becomes a new store; one with iotd's meta must be
 * of a format we know; anything else is somebody else's data.
 */
static int store_check_format(struct store *st, MDB_txn *txn, uint64_t *found, char *err,
			      size_t errlen)
{
	MDB_dbi main_db, meta;
	MDB_stat ms;
	MDB_val k = mval("format", 6), v;
	uint64_t format = STORE_FORMAT;
	int rc = mdb_dbi_open(txn, "meta", 0, &meta);

	if (rc == MDB_NOTFOUND) {
		rc = mdb_dbi_open(txn, NULL, 0, &main_db);
		if (rc == 0)
			rc = mdb_stat(txn, main_db, &ms);
		if (rc)
			goto lmdb;
		if (ms.ms_entries)
			goto foreign;
		rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &meta);
		v = mval(&format, sizeof(format));
		if (rc == 0)
			rc = mdb_put(txn, meta, &k, &v, 0);
		if (rc)
			goto lmdb;
		return 0;
	}
	if (rc == MDB_INCOMPATIBLE)
		goto foreign;
	if (rc)
		goto lmdb;
	rc = mdb_get(txn, meta, &k, &v);
	if (rc == MDB_NOTFOUND || (rc == 0 && v.mv_size != sizeof(format)))
		goto foreign;
	if (rc)
		goto lmdb;
	memcpy(&format, v.mv_data, sizeof(format));
	*found = format;
	if (format == STORE_FORMAT)
		return 0;
	if (format >= STORE_FORMAT_OLDEST && format < STORE_FORMAT) {
		/*
		 * Every older format's values are a subset of this one's (its
		 * queue's keys are moved by store_prepare): mark it so that an
		 * older iotd refuses it.
		 */
		format = STORE_FORMAT;
		v = mval(&format, sizeof(format));
		rc = mdb_put(txn, meta, &k, &v, 0);
		if (rc)
			goto lmdb;
		return 0;
	}
	if (format > STORE_FORMAT)
		snprintf(err, errlen, "store %s: format %llu is newer than this iotd understands (%d): "
			 "use a newer iotd or another storage.path", st->dir,
			 (unsigned long long)format, STORE_FORMAT);
	else
		snprintf(err, errlen, "store %s: not an iotd store (format %llu)", st->dir,
			 (unsigned long long)format);
	return -1;
foreign:
	snprintf(err, errlen, "store %s: not an iotd store (an LMDB environment without iotd's meta)",
		 st->dir);
	return -1;
lmdb:
	snprintf(err, errlen, "store %s: reading the format: %s", st->dir, mdb_strerror(rc));
	return -1;
}

static int store_prepare(struct store *st, char *err, size_t errlen)
{
	MDB_txn *txn;
	uint64_t found = STORE_FORMAT;
	int rc = mdb_txn_begin(st->env, NULL, 0, &txn);

	if (rc)
		goto lmdb;
	if (store_check_format(st, txn, &found, err, errlen) < 0) {
		mdb_txn_abort(txn);
		return -1;
	}
	rc = store_dbs_open(st, txn);
	if (rc == 0 && found < 8)
		rc = store_queue_upgrade(st, txn);
	if (rc) {
		mdb_txn_abort(txn);
		goto lmdb;
	}
	rc = mdb_txn_commit(txn);
	if (rc == 0)
		return 0;
lmdb:
	snprintf(err, errlen, "store %s: cannot prepare: %s", st->dir, mdb_strerror(rc));
	return -1;
}

struct store *store_open(const char *dir, enum store_kind kind, size_t mapsize,
			 char *err, size_t errlen)
{
	struct store *st = calloc(1, sizeof(*st));

	if (!st) {
		snprintf(err, errlen, "store %s: out of memory", dir);
		return NULL;
	}
	st->kind = kind;
	st->lock_fd = -1;
	recw_init(&st->val);
	if (snprintf(st->dir, sizeof(st->dir), "%s", dir) >= (int)sizeof(st->dir)) {
		snprintf(err, errlen, "store %s: path too long", dir);
		goto fail;
	}
	if (store_mkdir(st, err, errlen) < 0 || store_lock(st, err, errlen) < 0 ||
	    store_env_open(st, mapsize, err, errlen) < 0 || store_prepare(st, err, errlen) < 0)
		goto fail;
	return st;
fail:
	store_close(&st);
	return NULL;
}

void store_close(struct store **stp)
{
	struct store *st = stp ? *stp : NULL;

	if (!st)
		return;
	store_abort(st);
	if (st->env)
		mdb_env_close(st->env);
	if (st->lock_fd >= 0)
		close(st->lock_fd);
	recw_free(&st->val);
	free(st->kbuf);
	free(st->qdel);
	free(st);
	*stp = NULL;
}
